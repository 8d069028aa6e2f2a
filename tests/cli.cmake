# spesd's command-line contract, end to end (tests/cli/test_spesd.py).
if(TARGET spesd)
  add_test(NAME cli_spesd COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/cli/test_spesd.py ${CMAKE_BINARY_DIR})
  set_tests_properties(cli_spesd PROPERTIES TIMEOUT 900)
endif()
