# SPES runs of real daemons on loopback (tests/cluster/test_cluster.py).
if(TARGET spesd AND TARGET spesctl)
  # preloaded into daemons by the scenarios that need a slow fsync or a stepped wall clock
  add_library(faults MODULE cluster/faults.c)
  set_target_properties(faults PROPERTIES PREFIX "" LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  target_link_libraries(faults PRIVATE ${CMAKE_DL_LIBS})
  if(SPES_SANITIZE)
    target_compile_options(faults PRIVATE -fno-sanitize=all)
    target_link_options(faults PRIVATE -fno-sanitize=all)
  endif()
  add_test(NAME cluster_spes COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/cluster/test_cluster.py ${CMAKE_BINARY_DIR})
  set_tests_properties(cluster_spes PROPERTIES TIMEOUT 1500 LABELS "integration;slow" RUN_SERIAL TRUE)
endif()
