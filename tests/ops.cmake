# Operator tooling: test_ops drives the built spesctl against a daemon test double
# (tests/test_ops.c); ops_systemd_verify runs `systemd-analyze verify` on
# deploy/spesd.service; ops_sysusers checks deploy/sysusers.d/spes.conf;
# ops_local_cluster_dry checks `deploy/local-cluster up --dry-run` (PKI, configs,
# `spesd run -n` on every node config) without starting daemons.
target_link_libraries(test_ops PRIVATE spes_proto spes_net spes_pki PkgConfig::JANSSON Threads::Threads)
if(TARGET spesctl)
  add_dependencies(test_ops spesctl)
  target_compile_definitions(test_ops PRIVATE SPESCTL_PATH="$<TARGET_FILE:spesctl>")
endif()
set_tests_properties(test_ops PROPERTIES TIMEOUT 300)
# Shell drivers (tests/ops/*.sh); they need the spesd and spesctl binaries.
if(TARGET spesd AND TARGET spesctl)
  set(_ops_env "SPES_SOURCE_DIR=${CMAKE_SOURCE_DIR};SPES_BUILD_DIR=${CMAKE_BINARY_DIR}")
  # systemd-analyze verify needs ExecStart's binary to exist: the script verifies a
  # copy of the unit whose ExecStart points at the built spesd (nothing else changed).
  add_test(NAME ops_systemd_verify
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/ops/systemd_verify.sh ${CMAKE_SOURCE_DIR} $<TARGET_FILE:spesd>)
  add_test(NAME ops_example_config
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/ops/example_config.sh ${CMAKE_SOURCE_DIR}
                   $<TARGET_FILE:spesd> $<TARGET_FILE:spesctl>)
  add_test(NAME ops_local_cluster_dry
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/ops/local_cluster_dry.sh ${CMAKE_SOURCE_DIR}
                   $<TARGET_FILE:spesd> $<TARGET_FILE:spesctl>)
  # Real daemons on loopback: up (2 nodes), spesctl via socket and TLS, restart-node, down.
  add_test(NAME ops_local_cluster
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/ops/local_cluster_up.sh ${CMAKE_SOURCE_DIR}
                   $<TARGET_FILE:spesd> $<TARGET_FILE:spesctl>)
  set_tests_properties(ops_systemd_verify ops_example_config ops_local_cluster_dry PROPERTIES
                       ENVIRONMENT "${_ops_env}" TIMEOUT 120)
  set_tests_properties(ops_local_cluster PROPERTIES ENVIRONMENT "${_ops_env}" TIMEOUT 600
                       LABELS integration)
endif()
