# xcheck.cmake: cross-checks of the C model and trainer against the independent
# PyTorch reference in tests/ref/ (Debian's python3-torch at /usr/bin/python3).
#   xcheck_ref_selftest  the reference against a naive implementation and finite differences
#   xcheck_grads         tests/xcheck/xcheck_dump (C model) vs the reference: losses, logits, every gradient
#   xcheck_train         `spesd train` 20 steps vs the reference's AdamW training; 1 step via `spesd export`; `spesd eval`
set(SPES_TORCH_PYTHON /usr/bin/python3 CACHE FILEPATH "Python with torch and numpy for the cross-check tests")
set(_xenv "SPES_SOURCE_DIR=${CMAKE_SOURCE_DIR};SPES_BUILD_DIR=${CMAKE_BINARY_DIR};PYTHONDONTWRITEBYTECODE=1")

add_test(NAME xcheck_ref_selftest COMMAND ${SPES_TORCH_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/ref/ref_selftest.py)
set_tests_properties(xcheck_ref_selftest PROPERTIES ENVIRONMENT "${_xenv}" TIMEOUT 300)

if(TARGET spes_model)
  add_executable(xcheck_dump ${CMAKE_CURRENT_SOURCE_DIR}/xcheck/xcheck_dump.c)
  target_link_libraries(xcheck_dump PRIVATE spes_model spes_core)
  add_test(NAME xcheck_grads COMMAND ${SPES_TORCH_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/ref/xcheck_grads.py
           --driver $<TARGET_FILE:xcheck_dump>)
  add_test(NAME xcheck_train COMMAND ${SPES_TORCH_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/ref/train_xcheck.py
           --driver $<TARGET_FILE:xcheck_dump> --spesd ${CMAKE_BINARY_DIR}/daemon/spesd)
  set_tests_properties(xcheck_grads xcheck_train PROPERTIES ENVIRONMENT "${_xenv}" TIMEOUT 600)
else()
  message(WARNING "tests/xcheck.cmake: no spes_model target yet; xcheck_grads and xcheck_train are not registered")
endif()
