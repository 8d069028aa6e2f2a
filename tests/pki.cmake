# test_pki also drives the spesctl binary (PKI verbs end to end) when the client is built.
if(TARGET spesctl)
  add_dependencies(test_pki spesctl)
  target_compile_definitions(test_pki PRIVATE SPESCTL_PATH="$<TARGET_FILE:spesctl>")
endif()
