/* test_core.c: core utilities: errors, atomic files, SHA-256, RNG, worker pool. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "core/fileio.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "core/sha256.h"

static char tmpdir[] = "/tmp/spes-core-XXXXXX";

static void setup(void)
{
    strcpy(tmpdir, "/tmp/spes-core-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(test_atomic_write_replaces_whole)
{
    char *p = spes_path_join(tmpdir, "f.bin");
    ck_assert_int_eq(spes_write_file_atomic(p, "old", 3), 0);
    spes_atomic_file af;
    ck_assert_int_eq(spes_atomic_open(&af, p), 0);
    ck_assert_int_eq(spes_atomic_write(&af, "new-contents", 12), 0);
    /* before commit the old file is intact */
    char *buf;
    size_t n;
    ck_assert_int_eq(spes_read_file(p, 100, &buf, &n), 0);
    ck_assert_str_eq(buf, "old");
    free(buf);
    spes_atomic_abort(&af);
    ck_assert_int_eq(spes_read_file(p, 100, &buf, &n), 0);
    ck_assert_str_eq(buf, "old");
    free(buf);
    ck_assert_int_eq(spes_write_file_atomic(p, "new-contents", 12), 0);
    ck_assert_int_eq(spes_read_file(p, 100, &buf, &n), 0);
    ck_assert_uint_eq(n, 12);
    ck_assert_str_eq(buf, "new-contents");
    free(buf);
    ck_assert_int_eq(spes_read_file(p, 5, &buf, &n), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "f.bin"));
    free(p);
}
END_TEST

START_TEST(test_read_missing_names_file)
{
    char *buf;
    size_t n;
    ck_assert_int_eq(spes_read_file("/nonexistent/zz", 10, &buf, &n), SPES_ENOENT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "/nonexistent/zz"));
}
END_TEST

START_TEST(test_mkdir_p)
{
    char *p = spes_path_join(tmpdir, "a/b/c");
    ck_assert_int_eq(spes_mkdir_p(p, 0), 0);
    struct stat st;
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    free(p);
}
END_TEST

START_TEST(test_sha256_vectors)
{
    uint8_t d[32];
    char hex[65];
    ck_assert_int_eq(spes_sha256("abc", 3, d), 0);
    spes_hex_encode(d, 32, hex);
    ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    ck_assert_int_eq(spes_sha256("", 0, d), 0);
    spes_hex_encode(d, 32, hex);
    ck_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    uint8_t back[32];
    ck_assert_int_eq(spes_hex_decode(hex, back, 32), 0);
    ck_assert_mem_eq(back, d, 32);
    ck_assert_int_eq(spes_hex_decode("zz", back, 1), SPES_EFORMAT);
}
END_TEST

START_TEST(test_rng_deterministic_and_normal)
{
    spes_rng a, b;
    spes_rng_seed(&a, 42);
    spes_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++)
        ck_assert_uint_eq(spes_rng_u64(&a), spes_rng_u64(&b));
    double s = 0, s2 = 0;
    int n = 200000;
    for (int i = 0; i < n; i++) {
        double x = spes_rng_normal(&a);
        s += x;
        s2 += x * x;
    }
    ck_assert_double_eq_tol(s / n, 0.0, 0.01);
    ck_assert_double_eq_tol(s2 / n, 1.0, 0.01);
}
END_TEST

typedef struct {
    int *hits;
    int *tids;
} pool_ctx;

static void mark(void *ctx, size_t b, size_t e, int tid)
{
    pool_ctx *c = ctx;
    for (size_t i = b; i < e; i++) {
        c->hits[i]++;
        c->tids[i] = tid;
    }
}

START_TEST(test_pool_covers_range_once)
{
    spes_pool *p;
    ck_assert_int_eq(spes_pool_alloc(&p, 3), 0);
    for (size_t n = 1; n < 50; n += 7) {
        int hits[64] = {0}, tids[64] = {0};
        pool_ctx c = {hits, tids};
        spes_parallel_for(p, n, mark, &c);
        for (size_t i = 0; i < n; i++)
            ck_assert_int_eq(hits[i], 1);
        /* contiguous chunks in thread order */
        for (size_t i = 1; i < n; i++)
            ck_assert_int_ge(tids[i], tids[i - 1]);
    }
    spes_pool_free(p);
}
END_TEST

Suite *core_suite(void)
{
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_atomic_write_replaces_whole);
    tcase_add_test(tc, test_read_missing_names_file);
    tcase_add_test(tc, test_mkdir_p);
    tcase_add_test(tc, test_sha256_vectors);
    tcase_add_test(tc, test_rng_deterministic_and_normal);
    tcase_add_test(tc, test_pool_covers_range_once);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(core_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
