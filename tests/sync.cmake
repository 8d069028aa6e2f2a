# tests/sync.cmake: the outer optimizer, the robust aggregations, the codecs and the shards against independent numpy recomputations, bit for bit.
add_test(NAME test_sync_outer_numpy
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/sync_outer_numpy.py $<TARGET_FILE:test_sync>)
set_tests_properties(test_sync_outer_numpy PROPERTIES TIMEOUT 120)
# The trimmed and clipped means against numpy, bit for bit.
add_test(NAME test_sync_robust_numpy
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/sync_robust_numpy.py $<TARGET_FILE:test_sync>)
set_tests_properties(test_sync_robust_numpy PROPERTIES TIMEOUT 120)
# The q8ef and topk codecs (their bytes and the error-feedback residual) against numpy, bit for bit.
add_test(NAME test_sync_codecs_numpy
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/sync_codecs_numpy.py $<TARGET_FILE:test_sync>)
set_tests_properties(test_sync_codecs_numpy PROPERTIES TIMEOUT 120)
# The shard plan and a shard's round (contributions, their mean, the aggregate's q8ef blob) against numpy, bit for bit.
add_test(NAME test_sync_shard_numpy
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/sync_shard_numpy.py $<TARGET_FILE:test_sync>)
set_tests_properties(test_sync_shard_numpy PROPERTIES TIMEOUT 60)
