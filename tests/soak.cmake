# chaos_soak: the short chaos soak (tests/soak/soak.py): kill -9 of nodes and the coordinator,
# disk stalls, wall clock steps, a hostile member's transport attacks and a poisoning member for
# 120 s, with the run's invariants checked throughout. chaos_soak_wan: the same in the WAN lab on
# the home profile, with link cuts and loss instead of the transport attacks (root, network
# namespaces; else skipped). The long soak is the same program run by hand.
if(TARGET spesd AND TARGET spesctl)
  add_test(NAME chaos_soak COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/soak/soak.py ${CMAKE_BINARY_DIR}
                                   --seconds 120)
  set_tests_properties(chaos_soak PROPERTIES TIMEOUT 900 LABELS "integration;slow" RUN_SERIAL TRUE)
  # soak.py finds the relay at BUILD/tests/wan/spes-wanrelay (tests/wan.cmake builds it)
  add_test(NAME chaos_soak_wan COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/soak/soak.py ${CMAKE_BINARY_DIR}
                                       --seconds 120 --wan ${CMAKE_SOURCE_DIR}/deploy/wan/home.json)
  set_tests_properties(chaos_soak_wan PROPERTIES TIMEOUT 900 SKIP_RETURN_CODE 77 LABELS "wan;integration;slow"
                       RUN_SERIAL TRUE)
endif()
