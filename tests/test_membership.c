/* test_membership.c: column dealing invariants and minimal movement. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "membership/columns.h"

static int cols_of(const uint8_t *own, int E, int k, char *buf)
{
    int n = 0;
    for (int e = 0; e < E; e++)
        if (own[k * E + e])
            buf[n++] = (char)('0' + e);
    buf[n] = 0;
    return n;
}

START_TEST(test_fresh_deal)
{
    uint8_t own[4 * 8] = {0};
    spes_columns_rebalance(own, 4, 8);
    ck_assert_int_eq(spes_columns_check(own, 4, 8), 0);
    char b[16];
    for (int k = 0; k < 4; k++)
        ck_assert_int_eq(cols_of(own, 8, k, b), 2);
    /* 3 nodes, 8 columns: loads 3,3,2 */
    uint8_t o3[3 * 8] = {0};
    spes_columns_rebalance(o3, 3, 8);
    ck_assert_int_eq(spes_columns_check(o3, 3, 8), 0);
    /* 10 nodes, 4 columns: every node one column, every column >= 2 owners */
    uint8_t o10[10 * 4] = {0};
    spes_columns_rebalance(o10, 10, 4);
    ck_assert_int_eq(spes_columns_check(o10, 10, 4), 0);
}
END_TEST

START_TEST(test_leave_gives_orphans_to_least_loaded)
{
    uint8_t own[4 * 8] = {0};
    spes_columns_rebalance(own, 4, 8);
    char before[3][16];
    /* node 1 leaves: rows 0,2,3 remain */
    uint8_t left[3 * 8];
    memcpy(left, own, 8);
    memcpy(left + 8, own + 16, 16);
    for (int k = 0; k < 3; k++)
        cols_of(left, 8, k, before[k]);
    spes_columns_rebalance(left, 3, 8);
    ck_assert_int_eq(spes_columns_check(left, 3, 8), 0);
    /* nobody lost a column it had */
    for (int k = 0; k < 3; k++)
        for (const char *c = before[k]; *c; c++)
            ck_assert_int_eq(left[k * 8 + (*c - '0')], 1);
}
END_TEST

START_TEST(test_join_takes_from_heaviest)
{
    uint8_t own[4 * 8] = {0};
    spes_columns_rebalance(own, 3, 8); /* loads 3,3,2 */
    memset(own + 24, 0, 8);            /* node 3 joins */
    uint8_t before[24];
    memcpy(before, own, 24);
    spes_columns_rebalance(own, 4, 8);
    ck_assert_int_eq(spes_columns_check(own, 4, 8), 0);
    int moved = 0;
    for (int i = 0; i < 24; i++)
        moved += before[i] != own[i];
    ck_assert_int_eq(moved, 2); /* exactly two columns changed hands, to the new node */
}
END_TEST

START_TEST(test_random_churn_keeps_invariants)
{
    spes_rng r;
    spes_rng_seed(&r, 9);
    enum { MAXN = 20, E = 6 };
    uint8_t own[MAXN * E] = {0};
    int n = 1;
    spes_columns_rebalance(own, n, E);
    for (int it = 0; it < 2000; it++) {
        if (n > 1 && (spes_rng_u64(&r) & 1)) {
            int k = (int)(spes_rng_u64(&r) % (uint64_t)n);
            memmove(own + k * E, own + (k + 1) * E, (size_t)(n - k - 1) * E);
            n--;
        } else if (n < MAXN) {
            memset(own + n * E, 0, E);
            n++;
        }
        spes_columns_rebalance(own, n, E);
        ck_assert_int_eq(spes_columns_check(own, n, E), 0);
    }
}
END_TEST

Suite *membership_suite(void)
{
    Suite *s = suite_create("membership");
    TCase *tc = tcase_create("columns");
    tcase_add_test(tc, test_fresh_deal);
    tcase_add_test(tc, test_leave_gives_orphans_to_least_loaded);
    tcase_add_test(tc, test_join_takes_from_heaviest);
    tcase_add_test(tc, test_random_churn_keeps_invariants);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(membership_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
