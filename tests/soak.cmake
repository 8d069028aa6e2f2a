# chaos_soak: the short chaos soak (tests/soak/soak.py): kill -9 of nodes and the coordinator,
# disk stalls, wall clock steps and a hostile member's transport attacks for 120 s, with the
# run's invariants checked throughout. The long soak is the same program run by hand.
if(TARGET spesd AND TARGET spesctl)
  add_test(NAME chaos_soak COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/soak/soak.py ${CMAKE_BINARY_DIR}
                                   --seconds 120)
  set_tests_properties(chaos_soak PROPERTIES TIMEOUT 900 LABELS "integration;slow" RUN_SERIAL TRUE)
endif()
