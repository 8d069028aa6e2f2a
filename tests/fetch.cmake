# tests/fetch.cmake: test_fetch runs tests/fetch/server.py with /usr/bin/python3 on loopback.
target_compile_definitions(test_fetch PRIVATE
  SPES_FETCH_SERVER="${CMAKE_SOURCE_DIR}/tests/fetch/server.py")
