# SPES runs of real daemons on loopback (tests/cluster/test_cluster.py).
if(TARGET spesd AND TARGET spesctl)
  add_test(NAME cluster_spes COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/cluster/test_cluster.py ${CMAKE_BINARY_DIR})
  set_tests_properties(cluster_spes PROPERTIES TIMEOUT 1500 LABELS "integration;slow" RUN_SERIAL TRUE)
endif()
