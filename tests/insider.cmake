# hostile_insider: the control socket speaks operator verbs only, a remote export stays
# under the state directory, a node refuses a coordinator whose certificate name is not
# the one its config pins, pushed blobs that lie are refused (tests/hostile/test_insider.py,
# real daemons on loopback).
if(TARGET spesd AND TARGET spesctl)
  add_test(NAME hostile_insider COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/hostile/test_insider.py ${CMAKE_BINARY_DIR})
  set_tests_properties(hostile_insider PROPERTIES TIMEOUT 300 LABELS "integration;slow" RUN_SERIAL TRUE)
endif()
