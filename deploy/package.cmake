# deploy/package.cmake: `cpack` (from the build directory) makes
# spesd_<version>_amd64.deb: spesd and spesctl in /usr/bin, the systemd unit
# (ExecStart=/usr/bin/spesd), sysusers.d and tmpfiles.d snippets, man pages,
# and the example daemon config, Prometheus config and Grafana dashboard under
# /usr/share/doc/spesd/examples. The maintainer scripts in deploy/debian create
# the user and directories on install and remove the state on purge.
set(_deploy ${CMAKE_SOURCE_DIR}/deploy)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${_deploy}/spesd.service)
file(READ ${_deploy}/spesd.service _unit)
string(REPLACE "/usr/local/bin/spesd" "/usr/bin/spesd" _unit "${_unit}")
file(WRITE ${CMAKE_BINARY_DIR}/deploy/spesd.service "${_unit}")

find_program(GZIP gzip REQUIRED)
set(_man_gz "")
foreach(page spesd.1 spesctl.1)
  add_custom_command(OUTPUT ${CMAKE_BINARY_DIR}/deploy/man/${page}.gz
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/deploy/man
    COMMAND ${GZIP} -9 -n -c ${_deploy}/man/${page} > ${CMAKE_BINARY_DIR}/deploy/man/${page}.gz
    DEPENDS ${_deploy}/man/${page} VERBATIM)
  list(APPEND _man_gz ${CMAKE_BINARY_DIR}/deploy/man/${page}.gz)
endforeach()
add_custom_target(man_pages ALL DEPENDS ${_man_gz})

install(FILES ${CMAKE_BINARY_DIR}/deploy/spesd.service DESTINATION lib/systemd/system)
install(FILES ${_deploy}/sysusers.d/spes.conf DESTINATION lib/sysusers.d)
install(FILES ${_deploy}/tmpfiles.d/spes.conf DESTINATION lib/tmpfiles.d)
install(FILES ${_man_gz} DESTINATION share/man/man1)
install(FILES ${_deploy}/spesd.example.json ${_deploy}/prometheus.yml ${_deploy}/grafana-dashboard.json
        DESTINATION share/doc/spesd/examples)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME spesd)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR "spes")
set(CPACK_PACKAGE_CONTACT "spes operators <root@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "peer-to-peer SPES pretraining of a mixture-of-experts model (spesd, spesctl)")
set(CPACK_PACKAGE_DESCRIPTION "spesd is the daemon volunteers run to pretrain one mixture-of-experts language
model together over mutual TLS; spesctl is the operator's client (PKI, status, members, checkpoints, top).")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "passwd")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "systemd, prometheus")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${_deploy}/debian/postinst ${_deploy}/debian/prerm ${_deploy}/debian/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
set(CPACK_STRIP_FILES TRUE)
include(CPack)
