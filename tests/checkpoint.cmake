# tests/checkpoint.cmake: the independent Python reader of spes's Hugging Face export.
# test_checkpoint --export-sample DIR writes an export; checkpoint_hf_check.py parses it with
# numpy only (no safetensors package) and compares every tensor with the raw parameters.
if(EXISTS /usr/bin/python3)
  add_test(NAME checkpoint_hf_python
    COMMAND sh -c "d=$(mktemp -d) && \"$0\" --export-sample \"$d\" && /usr/bin/python3 \"$1\" \"$d\"; rc=$?; rm -rf \"$d\"; exit $rc"
      $<TARGET_FILE:test_checkpoint> ${CMAKE_CURRENT_LIST_DIR}/checkpoint_hf_check.py)
endif()
