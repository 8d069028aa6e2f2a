# tests/data.cmake: the cross-language check that NumPy and spes agree on token files.
add_test(NAME test_data_numpy
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/data_numpy.py $<TARGET_FILE:test_data>)
set_tests_properties(test_data_numpy PROPERTIES TIMEOUT 300)
