# The WAN lab (docs/wan-lab.md): spes-wanrelay, the link emulator that
# deploy/local-cluster --wan and bench/wan start, and its tests.
add_executable(spes-wanrelay wan/wanrelay.c wan/wanprofile.c)
target_link_libraries(spes-wanrelay PRIVATE spes_core PkgConfig::JANSSON)
set_target_properties(spes-wanrelay PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests/wan)
