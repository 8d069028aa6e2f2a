# The operator's view on real daemons: tests/ops/metrics_cluster.py starts 3
# daemons with metrics listeners, runs promtool on every /metrics, compares the
# values with `spesctl status --json`, and loads the dashboard in headless
# Chromium (screenshot: build/tests/dashboard.png). Skipped (77) without
# promtool or chromium.
if(TARGET spesd AND TARGET spesctl)
  add_test(NAME ops_metrics_cluster
           COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/ops/metrics_cluster.py ${CMAKE_BINARY_DIR}
                   ${CMAKE_BINARY_DIR}/tests/dashboard.png)
  set_tests_properties(ops_metrics_cluster PROPERTIES TIMEOUT 600 LABELS "integration;slow" SKIP_RETURN_CODE 77)
endif()
