# hostile_daemon: issue 14's transport attacks (slow reader, 256 MiB requests, idle
# and half-open connections) against a 2-node run of real daemons on loopback.
if(TARGET spesd AND TARGET spesctl)
  add_test(NAME hostile_daemon COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/hostile/test_hostile.py ${CMAKE_BINARY_DIR})
  set_tests_properties(hostile_daemon PROPERTIES TIMEOUT 600 LABELS "integration;slow" RUN_SERIAL TRUE)
endif()
