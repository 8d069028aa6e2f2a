# test_counters tests daemon/counters.c (part of spesd, not a library) on its own.
target_sources(test_counters PRIVATE ${CMAKE_SOURCE_DIR}/daemon/counters.c)
target_link_libraries(test_counters PRIVATE spes_net spes_proto)
