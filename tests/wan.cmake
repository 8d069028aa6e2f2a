# The WAN lab (docs/wan-lab.md): spes-wanrelay, the link emulator that
# deploy/local-cluster --wan and bench/wan start, and its tests.
add_executable(spes-wanrelay wan/wanrelay.c wan/wanprofile.c)
target_link_libraries(spes-wanrelay PRIVATE spes_core PkgConfig::JANSSON)
set_target_properties(spes-wanrelay PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests/wan)
# The relay measured in namespaces of its own (root, /dev/net/tun, ip netns; else skipped).
add_test(NAME wan_relay COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/wan/test_wanrelay.py
                                $<TARGET_FILE:spes-wanrelay>)
set_tests_properties(wan_relay PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77 LABELS "wan;slow" RUN_SERIAL TRUE)
# The shipped profiles load; a profile's mistakes are refused by name (file and field).
add_test(NAME wan_profiles COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/wan/profiles.sh ${CMAKE_SOURCE_DIR}
                                   $<TARGET_FILE:spes-wanrelay>)
set_tests_properties(wan_profiles PROPERTIES TIMEOUT 60 LABELS wan)
# SPES runs in the lab: 4 nodes on home and on lossy (a node killed), and `down` after a killed `up`.
if(TARGET spesd AND TARGET spesctl)
  add_test(NAME wan_cluster COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/wan/cluster_wan.sh ${CMAKE_SOURCE_DIR}
                                    $<TARGET_FILE:spesd> $<TARGET_FILE:spesctl> $<TARGET_FILE:spes-wanrelay>)
  set_tests_properties(wan_cluster PROPERTIES TIMEOUT 900 SKIP_RETURN_CODE 77 LABELS "wan;integration;slow"
                       RUN_SERIAL TRUE)
endif()
# local-cluster up --dry-run --wan: configs with advertise, env with SPES_NETNS, nothing created (no root needed).
if(TARGET spesd AND TARGET spesctl)
  add_test(NAME wan_local_cluster_dry COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/wan/dry.sh ${CMAKE_SOURCE_DIR}
                                              $<TARGET_FILE:spesd> $<TARGET_FILE:spesctl> $<TARGET_FILE:spes-wanrelay>)
  set_tests_properties(wan_local_cluster_dry PROPERTIES TIMEOUT 300 LABELS wan)
endif()
