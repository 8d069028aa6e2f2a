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
# The Debian package: cpack, dpkg -i, /usr/bin/spesd --version, dpkg -r/--purge
# (tests/ops/deb_package.sh). Installs on this machine: root only, skipped (77)
# otherwise or when spesd is installed already.
if(TARGET spesd AND TARGET spesctl)
  add_test(NAME ops_deb_package COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/ops/deb_package.sh ${CMAKE_BINARY_DIR})
  set_tests_properties(ops_deb_package PROPERTIES TIMEOUT 600 LABELS "integration;slow" SKIP_RETURN_CODE 77
                       RUN_SERIAL TRUE)
endif()
# The dashboard's page shows names from /api/status as text, never as HTML
# (tests/ops/dashboard_escape.py: a crafted status, headless Chromium).
add_test(NAME ops_dashboard_escape
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/ops/dashboard_escape.py ${CMAKE_SOURCE_DIR})
set_tests_properties(ops_dashboard_escape PROPERTIES TIMEOUT 180 SKIP_RETURN_CODE 77)
