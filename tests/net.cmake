# test_net uses OpenSSL directly for a raw TLS client that presents no certificate.
target_link_libraries(test_net PRIVATE PkgConfig::OPENSSL Threads::Threads)
set_tests_properties(test_net PROPERTIES TIMEOUT 300)
