# bench_blob: blob fetch throughput vs a raw nng tls+tcp pair, and peak memory
# (include from bench/CMakeLists.txt: include(${CMAKE_CURRENT_SOURCE_DIR}/blob.cmake)).
if(TARGET spes_blob)
  add_executable(bench_blob bench_blob.c)
  target_link_libraries(bench_blob PRIVATE spes_blob spes_net spes_pki spes_core nng::nng Threads::Threads)
endif()
