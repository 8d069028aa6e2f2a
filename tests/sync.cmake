# tests/sync.cmake: the outer optimizer against an independent numpy recomputation, bit for bit.
add_test(NAME test_sync_outer_numpy
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/sync_outer_numpy.py $<TARGET_FILE:test_sync>)
set_tests_properties(test_sync_outer_numpy PROPERTIES TIMEOUT 120)
