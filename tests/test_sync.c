/* test_sync.c: contribution codec, aggregation and digest. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/sha256.h"
#include "sync/outer.h"
#include "sync/overlap.h"
#include "sync/resid.h"
#include "sync/robust.h"
#include "sync/sync.h"

#include <stdio.h>

/* A fake layout is enough here: sync only uses shared_numel and column_numel. */
static spes_layout lay(size_t shared, size_t col, int E)
{
    spes_layout lo = {0};
    lo.shared_numel = shared;
    lo.column_numel = col;
    lo.total_numel = shared + (size_t)E * col;
    return lo;
}

static void fill(float *p, size_t n, float base)
{
    for (size_t i = 0; i < n; i++)
        p[i] = base + 0.001f * (float)i;
}

START_TEST(test_contrib_check_author)
{
    enum { S = 4, C = 3, E = 4 };
    spes_layout lo = lay(S, C, E);
    float cur[S + E * C];
    fill(cur, lo.total_numel, 1.0f);
    uint8_t owned[E] = {0, 1, 0, 1};
    spes_contrib c;
    ck_assert_int_eq(spes_contrib_make(&c, &lo, E, owned, cur, 7, 3, 1, 1.0f), 0);
    ck_assert_int_eq(spes_contrib_check_author(&c, 7, 3, owned, E, "node-b"), 0);
    /* another node's id */
    ck_assert_int_eq(spes_contrib_check_author(&c, 7, 2, owned, E, "node-b"), SPES_EAUTH);
    ck_assert_str_eq(spes_errmsg(), "node-b: the contribution names node 3, its announcer is node 2");
    /* another round */
    ck_assert_int_eq(spes_contrib_check_author(&c, 8, 3, owned, E, "node-b"), SPES_ESTATE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "of round 7, not of round 8"));
    /* a column its announcer does not own, and one it owns but left out */
    uint8_t fewer[E] = {0, 1, 0, 0}, more[E] = {1, 1, 0, 1};
    ck_assert_int_eq(spes_contrib_check_author(&c, 7, 3, fewer, E, "node-b"), SPES_EAUTH);
    ck_assert_str_eq(
        spes_errmsg(),
        "node-b: the contribution carries column 3, which its announcer does not own this round");
    ck_assert_int_eq(spes_contrib_check_author(&c, 7, 3, more, E, "node-b"), SPES_EAUTH);
    ck_assert_str_eq(spes_errmsg(),
                     "node-b: the contribution lacks column 0, which its announcer owns this round");
    spes_contrib_fini(&c);
    /* no columns at all (more nodes than experts): only the shared block */
    uint8_t none[E] = {0};
    ck_assert_int_eq(spes_contrib_make(&c, &lo, E, none, cur, 7, 3, 1, 1.0f), 0);
    ck_assert_int_eq(spes_contrib_check_author(&c, 7, 3, none, E, "node-b"), 0);
    ck_assert_int_eq(spes_contrib_check_author(&c, 7, 3, owned, E, "node-b"), SPES_EAUTH);
    spes_contrib_fini(&c);
}
END_TEST

START_TEST(test_contrib_round_trip)
{
    enum { S = 10, C = 6, E = 4 };
    spes_layout lo = lay(S, C, E);
    float base[S + E * C], cur[S + E * C];
    fill(base, lo.total_numel, 1.0f);
    fill(cur, lo.total_numel, 1.5f);
    uint8_t owned[E] = {0, 1, 0, 1};
    spes_contrib c, d;
    ck_assert_int_eq(spes_contrib_make(&c, &lo, E, owned, cur, 7, 3, 1000, 2.5f), 0);
    ck_assert_int_eq(c.ncols, 2);
    ck_assert_int_eq(c.cols[1], 3);
    ck_assert_float_eq(c.val[S + C], cur[S + 3 * C]); /* column 3's first value */
    uint8_t *buf;
    size_t len;
    ck_assert_int_eq(spes_contrib_encode(&c, SPES_CODEC_FP32, base, NULL, &buf, &len), 0);
    ck_assert_int_eq(spes_contrib_decode(&d, buf, len, &lo, E, base, 1e3f, "peer"), 0);
    ck_assert_int_eq(d.round, 7);
    ck_assert_int_eq(d.node, 3);
    ck_assert_mem_eq(d.val, c.val, (S + 2 * C) * sizeof(float));
    spes_contrib_fini(&d);
    /* truncation anywhere is refused */
    for (size_t cut = 0; cut < len; cut += 7)
        ck_assert_int_ne(spes_contrib_decode(&d, buf, cut, &lo, E, base, 1e3f, "peer"), 0);
    /* NaN is refused, naming the peer */
    float nan = NAN;
    memcpy(buf + len - 4, &nan, 4);
    ck_assert_int_eq(spes_contrib_decode(&d, buf, len, &lo, E, base, 1e3f, "node-2"), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "node-2"));
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "NaN"));
    free(buf);
    /* bf16 carries deltas: values come back within bf16 rounding of the delta (0.5) */
    ck_assert_int_eq(spes_contrib_encode(&c, SPES_CODEC_BF16, base, NULL, &buf, &len), 0);
    ck_assert_int_eq(spes_contrib_decode(&d, buf, len, &lo, E, base, 1e3f, "peer"), 0);
    for (int i = 0; i < S + 2 * C; i++)
        ck_assert_float_eq_tol(d.val[i], c.val[i], 0.5f / 256.0f + 1e-6f);
    spes_contrib_fini(&d);
    /* values moved beyond the bound are refused */
    ck_assert_int_eq(spes_contrib_decode(&d, buf, len, &lo, E, base, 0.1f, "peer"), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "bound"));
    /* wrong model size */
    spes_layout other = lay(S + 1, C, E);
    ck_assert_int_eq(spes_contrib_decode(&d, buf, len, &other, E, base, 1e3f, "peer"), SPES_EFORMAT);
    free(buf);
    spes_contrib_fini(&c);
}
END_TEST

START_TEST(test_bf16_rounding)
{
    ck_assert_uint_eq(spes_bf16_from_f32(1.0f), 0x3f80);
    /* 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties to even (1.0) */
    ck_assert_uint_eq(spes_bf16_from_f32(1.00390625f), 0x3f80);
    /* 1 + 3*2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6 (even): rounds up */
    ck_assert_uint_eq(spes_bf16_from_f32(1.01171875f), 0x3f82);
    ck_assert(isnan(spes_f32_from_bf16(spes_bf16_from_f32(NAN))));
}
END_TEST

START_TEST(test_aggregate)
{
    enum { S = 3, C = 2, E = 3 };
    spes_layout lo = lay(S, C, E);
    float p[S + E * C] = {1, 1, 1, 10, 10, 20, 20, 30, 30};
    /* node 0 owns {0,1}, node 1 owns {1}, node 4 owns {}; values = base + delta
     * with deltas 0: {1,2,3 | 0.5,0.5 | 1,1}, 1: {3,2,1 | 3,3}, 4: {2,2,2} */
    int32_t c0[] = {0, 1}, c1[] = {1};
    float d0[] = {2, 3, 4, 10.5f, 10.5f, 21, 21};
    float d1[] = {4, 3, 2, 23, 23};
    float d4[] = {3, 3, 3};
    spes_contrib a = {.node = 0, .ncols = 2, .cols = c0, .shared_numel = S, .column_numel = C, .val = d0};
    spes_contrib b = {.node = 1, .ncols = 1, .cols = c1, .shared_numel = S, .column_numel = C, .val = d1};
    spes_contrib z = {.node = 4, .ncols = 0, .cols = NULL, .shared_numel = S, .column_numel = C, .val = d4};
    const spes_contrib *cs[] = {&a, &b, &z};
    ck_assert_int_eq(spes_aggregate(p, &lo, E, cs, 3), 0);
    /* shared: 1 + mean(1,3,2)=3 ...; column 0: only node 0 -> its values exactly; column 1: 20 + mean(1,3) */
    float want[] = {3, 3, 3, 10.5f, 10.5f, 22, 22, 30, 30};
    for (int i = 0; i < S + E * C; i++)
        ck_assert_float_eq_tol(p[i], want[i], 1e-6);
    /* a single contributor's values arrive bit for bit, whatever the base */
    float q[S + E * C] = {1e-30f, 7, 1, 1, 1, 1, 1, 1, 1};
    float v[S] = {1e30f, 1e-30f, 3};
    spes_contrib one = {.node = 2, .ncols = 0, .shared_numel = S, .column_numel = C, .val = v};
    const spes_contrib *o1[] = {&one};
    ck_assert_int_eq(spes_aggregate(q, &lo, E, o1, 1), 0);
    ck_assert_mem_eq(q, v, sizeof v);
    const spes_contrib *bad[] = {&b, &a};
    ck_assert_int_eq(spes_aggregate(p, &lo, E, bad, 2), SPES_EINVAL);
}
END_TEST

START_TEST(test_digest)
{
    float p[16];
    fill(p, 16, 0);
    uint8_t d1[32], d2[32], d3[32];
    ck_assert_int_eq(spes_state_digest(p, 16, 1, d1), 0);
    ck_assert_int_eq(spes_state_digest(p, 16, 1, d2), 0);
    ck_assert_mem_eq(d1, d2, 32);
    ck_assert_int_eq(spes_state_digest(p, 16, 2, d3), 0);
    ck_assert_mem_ne(d1, d3, 32);
    uint32_t u;
    memcpy(&u, &p[5], 4);
    u ^= 1;
    memcpy(&p[5], &u, 4);
    ck_assert_int_eq(spes_state_digest(p, 16, 1, d3), 0);
    ck_assert_mem_ne(d1, d3, 32);
}
END_TEST

/* fixture for the outer optimizer: 3 nodes, column 2 owned by nobody */
enum { OS = 5, OC = 3, OE = 3 };
static float o_v0[OS + 2 * OC], o_v1[OS + OC], o_v2[OS];
static int32_t o_c0[] = {0, 1}, o_c1[] = {1};

static void outer_fixture(float *base, const spes_contrib **cs, spes_contrib *st)
{
    spes_layout lo = lay(OS, OC, OE);
    fill(base, lo.total_numel, 0.25f);
    for (int i = 0; i < OS + 2 * OC; i++)
        o_v0[i] = base[i] + 0.01f * (float)(i % 5) - 0.013f;
    for (int i = 0; i < OS; i++) {
        o_v1[i] = base[i] - 0.02f * (float)i;
        o_v2[i] = base[i] + 0.003f;
    }
    for (int i = 0; i < OC; i++)
        o_v1[OS + i] = base[OS + OC + i] + 0.07f;
    st[0] = (spes_contrib){
        .node = 1, .ncols = 2, .cols = o_c0, .shared_numel = OS, .column_numel = OC, .val = o_v0};
    st[1] = (spes_contrib){
        .node = 2, .ncols = 1, .cols = o_c1, .shared_numel = OS, .column_numel = OC, .val = o_v1};
    st[2] = (spes_contrib){.node = 5, .ncols = 0, .shared_numel = OS, .column_numel = OC, .val = o_v2};
    for (int k = 0; k < 3; k++)
        cs[k] = &st[k];
}

START_TEST(test_outer_plain_is_aggregate)
{
    spes_layout lo = lay(OS, OC, OE);
    float a[OS + OE * OC], b[OS + OE * OC];
    const spes_contrib *cs[3];
    spes_contrib st[3];
    outer_fixture(a, cs, st);
    memcpy(b, a, sizeof a);
    spes_outer o = {.lr = 1.0f, .mu = 0.0f};
    ck_assert(spes_outer_plain(&o));
    ck_assert(spes_outer_plain(NULL));
    ck_assert(!spes_outer_has_state(&o));
    ck_assert_int_eq(spes_aggregate(a, &lo, OE, cs, 3), 0);
    ck_assert_int_eq(spes_aggregate_outer(b, &lo, OE, cs, 3, &o), 0);
    ck_assert_mem_eq(a, b, sizeof a);
    /* lr 1 with momentum is not plain: it needs a buffer */
    spes_outer m = {.lr = 1.0f, .mu = 0.9f};
    ck_assert(!spes_outer_plain(&m));
    ck_assert_int_eq(spes_aggregate_outer(b, &lo, OE, cs, 3, &m), SPES_EINVAL);
}
END_TEST

START_TEST(test_outer_nesterov)
{
    spes_layout lo = lay(OS, OC, OE);
    float p[OS + OE * OC], base[OS + OE * OC], mom[OS + OE * OC], agg[OS + OE * OC];
    const spes_contrib *cs[3];
    spes_contrib st[3];
    outer_fixture(p, cs, st);
    memcpy(base, p, sizeof p);
    memcpy(agg, p, sizeof p);
    ck_assert_int_eq(spes_aggregate(agg, &lo, OE, cs, 3), 0);
    for (size_t i = 0; i < lo.total_numel; i++)
        mom[i] = 0.001f * (float)i - 0.004f;
    float mom0[OS + OE * OC];
    memcpy(mom0, mom, sizeof mom);
    spes_outer o = {.lr = 0.7f, .mu = 0.9f, .mom = mom};
    ck_assert_int_eq(spes_aggregate_outer(p, &lo, OE, cs, 3, &o), 0);
    for (size_t i = 0; i < OS + 2 * OC; i++) {
        double d = (double)agg[i] - (double)base[i];
        double m = 0.9 * (double)mom0[i] + d;
        ck_assert_float_eq_tol(mom[i], m, 1e-6);
        ck_assert_float_eq_tol(p[i], base[i] + 0.7 * (d + 0.9 * m), 1e-6);
    }
    /* column 2 had no contributing owner: parameters and momentum stay as they were */
    ck_assert_mem_eq(p + OS + 2 * OC, base + OS + 2 * OC, OC * sizeof(float));
    ck_assert_mem_eq(mom + OS + 2 * OC, mom0 + OS + 2 * OC, OC * sizeof(float));
    /* no contributors: nothing moves */
    memcpy(p, base, sizeof p);
    memcpy(mom, mom0, sizeof mom);
    ck_assert_int_eq(spes_aggregate_outer(p, &lo, OE, cs, 0, &o), 0);
    ck_assert_mem_eq(p, base, sizeof p);
    ck_assert_mem_eq(mom, mom0, sizeof mom);
    /* lr without momentum: S + lr * d, no buffer needed */
    spes_outer h = {.lr = 0.5f, .mu = 0.0f};
    ck_assert_int_eq(spes_aggregate_outer(p, &lo, OE, cs, 3, &h), 0);
    for (size_t i = 0; i < OS; i++)
        ck_assert_float_eq_tol(p[i], base[i] + 0.5 * ((double)agg[i] - base[i]), 1e-6);
    const spes_contrib *bad[] = {cs[1], cs[0]};
    ck_assert_int_eq(spes_aggregate_outer(p, &lo, OE, bad, 2, &o), SPES_EINVAL);
}
END_TEST

START_TEST(test_digest2)
{
    float p[16], m[16];
    fill(p, 16, 0);
    memset(m, 0, sizeof m);
    uint8_t d1[32], d2[32], d3[32];
    ck_assert_int_eq(spes_state_digest(p, 16, 3, d1), 0);
    ck_assert_int_eq(spes_state_digest2(p, NULL, 16, 3, d2), 0);
    ck_assert_mem_eq(d1, d2, 32);
    ck_assert_int_eq(spes_state_digest2(p, m, 16, 3, d2), 0);
    ck_assert_mem_ne(d1, d2, 32); /* zero momentum still makes a different (SPESSTATE2) digest */
    m[7] = 1e-20f;
    ck_assert_int_eq(spes_state_digest2(p, m, 16, 3, d3), 0);
    ck_assert_mem_ne(d2, d3, 32);
}
END_TEST

START_TEST(test_norm_bound_check)
{
    int32_t c0[] = {0}, c1[] = {1, 5}, c2[] = {2}, c3[] = {3};
    double n0[] = {2.0}, n1[] = {2.5, 40.0}, n2[] = {1.5}, n3[] = {2.2};
    spes_delta_norms nm[] = {
        {.shared = 1.0, .ncols = 1, .cols = c0, .col = n0},
        {.shared = 1.2, .ncols = 2, .cols = c1, .col = n1},
        {.shared = 0.9, .ncols = 1, .cols = c2, .col = n2},
        {.shared = 50.0, .ncols = 1, .cols = c3, .col = n3},
    };
    const char *names[] = {"node-a", "node-b", "node-c", "node-d"};
    char why[4][256];
    memset(why, 0, sizeof why);
    int ok[4] = {1, 1, 1, 1};
    /* shared median (0.9, 1.0, 1.2, 50) = 1.1, bound 11; columns median (1.5 2 2.2 2.5 40) = 2.2, bound 22 */
    ck_assert_int_eq(spes_norm_bound_check(nm, 4, 10.0, NULL, 0, NULL, names, ok, &why[0][0], sizeof why[0]),
                     0);
    ck_assert_int_eq(ok[0], 1);
    ck_assert_int_eq(ok[1], 0);
    ck_assert_int_eq(ok[2], 1);
    ck_assert_int_eq(ok[3], 0);
    ck_assert_str_eq(why[0], "");
    ck_assert_ptr_nonnull(strstr(why[3], "node-d"));
    ck_assert_ptr_nonnull(strstr(why[3], "shared block"));
    ck_assert_ptr_nonnull(strstr(why[3], "50"));
    ck_assert_ptr_nonnull(strstr(why[3], "bound 11"));
    ck_assert_ptr_nonnull(strstr(why[1], "node-b"));
    ck_assert_ptr_nonnull(strstr(why[1], "column 5"));
    ck_assert_ptr_nonnull(strstr(why[1], "40"));
    ck_assert_ptr_nonnull(strstr(why[1], "bound 22"));
    /* a contribution refused before is out of every median and stays refused: with node-a out the
     * shared median is 1.2 (bound 12) and node-d is still refused; nobody else is */
    int ok2[4] = {0, 1, 1, 1};
    nm[1].col[1] = 3.0;
    ck_assert_int_eq(spes_norm_bound_check(nm, 4, 10.0, NULL, 0, NULL, NULL, ok2, &why[0][0], sizeof why[0]),
                     0);
    ck_assert(!ok2[0] && ok2[1] && ok2[2] && !ok2[3]);
    ck_assert_ptr_eq(strstr(why[3], "the shared block"), why[3]); /* no names: no prefix */
    ck_assert_ptr_nonnull(strstr(why[3], "bound 12"));
    /* a bound of 2: shared bound 2.2, column bound 2 x median(1.5, 2, 2.2, 2.5, 3) = 4.4: only node-d is out */
    int ok3[4] = {1, 1, 1, 1};
    ck_assert_int_eq(spes_norm_bound_check(nm, 4, 2.0, NULL, 0, NULL, names, ok3, &why[0][0], sizeof why[0]),
                     0);
    ck_assert(ok3[0] && ok3[1] && ok3[2] && !ok3[3]);
    /* fewer than 3 counted, or the bound off: no relative bound */
    int ok4[4] = {1, 0, 0, 1};
    ck_assert_int_eq(spes_norm_bound_check(nm, 4, 10.0, NULL, 0, NULL, names, ok4, &why[0][0], sizeof why[0]),
                     0);
    ck_assert(ok4[0] && !ok4[1] && !ok4[2] && ok4[3]);
    int ok5[4] = {1, 1, 1, 1};
    ck_assert_int_eq(spes_norm_bound_check(nm, 4, 0.0, NULL, 0, NULL, names, ok5, &why[0][0], sizeof why[0]),
                     0);
    ck_assert(ok5[0] && ok5[1] && ok5[2] && ok5[3]);
}
END_TEST

/* the norm bound's memory: a round of fewer than 3 is bounded by recent rounds' medians, a member by
 * its own recent norms, entries too old stop counting, and a round validated again replaces its entry */
START_TEST(test_norm_history)
{
    spes_norm_history *h = calloc(1, sizeof *h);
    ck_assert_ptr_nonnull(h);
    int32_t c1[] = {1}, c2[] = {2}, c3[] = {3}, c4[] = {4};
    double n1[] = {2.0}, n2[] = {2.4}, n3[] = {2.2}, n4[] = {2.2};
    spes_delta_norms nm[] = {
        {.shared = 1.0, .ncols = 1, .cols = c1, .col = n1},
        {.shared = 1.2, .ncols = 1, .cols = c2, .col = n2},
        {.shared = 5.0, .ncols = 1, .cols = c3, .col = n3},
        {.shared = 5.0, .ncols = 1, .cols = c4, .col = n4},
    };
    uint32_t ids[] = {1, 2, 3, 4};
    const char *names[] = {"node-1", "node-2", "node-3", "node-4"};
    char why[4][256];
    /* an empty history bounds nothing: two contributions pass whatever their norms */
    nm[1].shared = 1e6;
    int ok[4] = {1, 1, 0, 0};
    ck_assert_int_eq(spes_norm_bound_check(nm, 2, 10.0, h, 0, ids, names, ok, &why[0][0], sizeof why[0]), 0);
    ck_assert(ok[0] && ok[1]);
    nm[1].shared = 1.2;
    for (uint64_t r = 0; r < 3; r++) { /* rounds 0-2 of two honest members: medians 1.1 and 2.2 */
        int a[4] = {1, 1, 0, 0};
        ck_assert_int_eq(spes_norm_bound_check(nm, 2, 10.0, h, r, ids, names, a, &why[0][0], sizeof why[0]),
                         0);
        ck_assert(a[0] && a[1]);
        ck_assert_int_eq(spes_norm_history_add(h, r, nm, ids, a, 2), 0);
        ck_assert_int_eq(spes_norm_history_add(h, r, nm, ids, a, 2), 0); /* validated again: one entry */
    }
    ck_assert_int_eq(h->n, 3);
    /* round 3 with two: the shared bound is 10 x 1.1, the column bound 10 x 2.2 */
    memset(why, 0, sizeof why);
    nm[1].shared = 50.0;
    int b[4] = {1, 1, 0, 0};
    ck_assert_int_eq(spes_norm_bound_check(nm, 2, 10.0, h, 3, ids, names, b, &why[0][0], sizeof why[0]), 0);
    ck_assert(b[0] && !b[1]);
    ck_assert_ptr_nonnull(
        strstr(why[1], "node-2: the shared block's delta norm 50 exceeds the norm bound 11"));
    ck_assert_ptr_nonnull(strstr(why[1], "recent rounds' medians"));
    nm[1].shared = 1.2;
    n1[0] = 30.0;
    int c[4] = {1, 1, 0, 0};
    ck_assert_int_eq(spes_norm_bound_check(nm, 2, 10.0, h, 3, ids, names, c, &why[0][0], sizeof why[0]), 0);
    ck_assert(!c[0] && c[1]);
    ck_assert_ptr_nonnull(strstr(why[0], "column 1's delta norm 30 exceeds the norm bound 22"));
    n1[0] = 2.0;
    /* round 3 with four: the round's shared median is 5 (bound 50), but node-1's own median is 1 (bound 10) */
    nm[0].shared = 12.0;
    int d[4] = {1, 1, 1, 1};
    ck_assert_int_eq(spes_norm_bound_check(nm, 4, 10.0, h, 3, ids, names, d, &why[0][0], sizeof why[0]), 0);
    ck_assert(!d[0] && d[1] && d[2] && d[3]);
    ck_assert_ptr_nonnull(
        strstr(why[0], "node-1: the shared block's delta norm 12 exceeds the norm bound 10"));
    ck_assert_ptr_nonnull(strstr(why[0], "its own recent shared-block norms"));
    /* without a history (or ids) the same round passes: only the round's median bounds it */
    int e[4] = {1, 1, 1, 1};
    ck_assert_int_eq(spes_norm_bound_check(nm, 4, 10.0, NULL, 3, NULL, names, e, &why[0][0], sizeof why[0]),
                     0);
    ck_assert(e[0] && e[1] && e[2] && e[3]);
    /* 40 rounds on, rounds 0-2 are too old to count: two contributions are unbounded again */
    nm[1].shared = 50.0;
    int f[4] = {1, 1, 0, 0};
    ck_assert_int_eq(spes_norm_bound_check(nm, 2, 10.0, h, 40, ids, names, f, &why[0][0], sizeof why[0]), 0);
    ck_assert(f[0] && f[1]);
    /* the refused stay out of the history: node-1's entry of round 3 is not added */
    int g[4] = {0, 1, 1, 1};
    nm[1].shared = 1.2;
    ck_assert_int_eq(spes_norm_history_add(h, 3, nm, ids, g, 4), 0);
    ck_assert_int_eq(h->n, 4);
    for (int i = 0; i < SPES_NORM_HISTORY_MEMBERS; i++)
        if (h->mem[i].used && h->mem[i].id == 1)
            ck_assert_int_eq(h->mem[i].n, 3);
    free(h);
}
END_TEST

START_TEST(test_median_and_norm)
{
    double x[] = {5, 1, 3}, y[] = {4, 1, 3, 2};
    ck_assert(spes_median(x, 3) == 3.0);
    ck_assert(spes_median(y, 4) == 2.5);
    ck_assert(spes_median(y, 0) == 0.0);
    float v[] = {4, 6, 1}, b[] = {1, 2, 1};
    ck_assert(spes_delta_norm(v, b, 3) == 5.0);
    spes_agg g;
    ck_assert_int_eq(spes_agg_from_name(&g, "clipped_mean", 0.1, 3.0), 0);
    ck_assert_int_eq(g.mode, SPES_AGG_CLIPPED);
    ck_assert(g.clip == 3.0);
    ck_assert_int_eq(spes_agg_from_name(&g, "median", 0.1, 3.0), SPES_EINVAL);
}
END_TEST

/* robust fixture: a shared block of 4, columns of 2, 3 experts; nodes 1, 2 and 7 own columns 0, 1
 * and 2; each contribution's values are the base plus the given deltas (shared, then its column) */
enum { RS = 4, RC = 2, RE = 3 };
static float r_base[RS + RE * RC] = {1, 2, 3, 4, 10, 10, 20, 20, 30, 30};
static float r_v[3][RS + RC];
static int32_t r_cols[3][1] = {{0}, {1}, {2}};

static void robust_fixture(const float (*delta)[RS + RC], spes_contrib *st, const spes_contrib **cs)
{
    static const int32_t nodes[3] = {1, 2, 7};
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < RS; i++)
            r_v[k][i] = r_base[i] + delta[k][i];
        for (int i = 0; i < RC; i++)
            r_v[k][RS + i] = r_base[RS + k * RC + i] + delta[k][RS + i];
        st[k] = (spes_contrib){.node = nodes[k],
                               .ncols = 1,
                               .cols = r_cols[k],
                               .shared_numel = RS,
                               .column_numel = RC,
                               .val = r_v[k]};
        cs[k] = &st[k];
    }
}

START_TEST(test_trimmed_mean)
{
    spes_layout lo = lay(RS, RC, RE);
    /* per shared coordinate the deltas are {1, 2, 100}, {-5, 0.5, 0.25}, {3, 3, -1}, {0, -0, 0} */
    static const float d[3][RS + RC] = {
        {1, -5, 3, 0, 0.5f, 0.5f}, {2, 0.5f, 3, -0.0f, 1, 1}, {100, 0.25f, -1, 0, 4, 4}};
    spes_contrib st[3];
    const spes_contrib *cs[3];
    robust_fixture(d, st, cs);
    float p[RS + RE * RC];
    memcpy(p, r_base, sizeof p);
    spes_agg g = {.mode = SPES_AGG_TRIMMED, .trim = 0.34};
    ck_assert_int_eq(spes_aggregate_robust(p, &lo, RE, cs, 3, &g, NULL), 0);
    /* t = floor(0.34 * 3) = 1: each shared coordinate moves by its median delta; a column has one
     * owner (t = floor(0.34) = 0): its values exactly */
    float want[RS + RE * RC] = {1 + 2, 2 + 0.25f, 3 + 3, 4, 10.5f, 10.5f, 21, 21, 34, 34};
    ck_assert_mem_eq(p, want, sizeof want);
    /* trim 0.25 of 3 drops nothing: the mean, bit for bit */
    float q[RS + RE * RC], m[RS + RE * RC];
    memcpy(q, r_base, sizeof q);
    memcpy(m, r_base, sizeof m);
    g.trim = 0.25;
    ck_assert_int_eq(spes_aggregate_robust(q, &lo, RE, cs, 3, &g, NULL), 0);
    ck_assert_int_eq(spes_aggregate(m, &lo, RE, cs, 3), 0);
    ck_assert_mem_eq(q, m, sizeof q);
    /* and the mean mode is spes_aggregate exactly */
    memcpy(q, r_base, sizeof q);
    spes_agg mean = {.mode = SPES_AGG_MEAN};
    ck_assert_int_eq(spes_aggregate_robust(q, &lo, RE, cs, 3, &mean, NULL), 0);
    ck_assert_mem_eq(q, m, sizeof q);
    /* through the outer step: lr 0.5 on the median delta */
    memcpy(q, r_base, sizeof q);
    spes_outer o = {.lr = 0.5f, .mu = 0.0f};
    g.trim = 0.34;
    ck_assert_int_eq(spes_aggregate_robust(q, &lo, RE, cs, 3, &g, &o), 0);
    ck_assert(q[0] == 2.0f && q[1] == 2.125f && q[2] == 4.5f);
    const spes_contrib *bad[] = {cs[1], cs[0], cs[2]};
    ck_assert_int_eq(spes_aggregate_robust(q, &lo, RE, bad, 3, &g, NULL), SPES_EINVAL);
}
END_TEST

START_TEST(test_clipped_mean)
{
    spes_layout lo = lay(RS, RC, RE);
    /* shared delta norms 5, 1, 1 (median 1); column norms 1, 5, 1 (median 1) */
    static const float d[3][RS + RC] = {{3, 4, 0, 0, 0.6f, 0.8f}, {0, 1, 0, 0, 3, 4}, {1, 0, 0, 0, 0, 1}};
    spes_contrib st[3];
    const spes_contrib *cs[3];
    robust_fixture(d, st, cs);
    float p[RS + RE * RC];
    memcpy(p, r_base, sizeof p);
    spes_agg g = {.mode = SPES_AGG_CLIPPED, .clip = 2.0};
    ck_assert_int_eq(spes_aggregate_robust(p, &lo, RE, cs, 3, &g, NULL), 0);
    /* tau = 2: node 1's shared delta is scaled by 0.4 to (1.2, 1.6), then the mean of the three;
     * node 2's column 1 delta (3, 4) by 0.4 to (1.2, 1.6); the other columns are within the bound */
    float s = 0.4f;
    float sh0 = (3 * s + 0 + 1) / 3, sh1 = (4 * s + 1 + 0) / 3;
    ck_assert_float_eq_tol(p[0], 1 + sh0, 1e-6);
    ck_assert_float_eq_tol(p[1], 2 + sh1, 1e-6);
    ck_assert(p[2] == 3 && p[3] == 4);
    ck_assert_float_eq_tol(p[4], 10.6f, 1e-5);
    ck_assert_float_eq_tol(p[5], 10.8f, 1e-5);
    ck_assert_float_eq_tol(p[6], 21.2f, 1e-5);
    ck_assert_float_eq_tol(p[7], 21.6f, 1e-5);
    ck_assert(p[8] == 30 && p[9] == 31);
    /* a clip no delta reaches: the mean, bit for bit */
    float q[RS + RE * RC], m[RS + RE * RC];
    memcpy(q, r_base, sizeof q);
    memcpy(m, r_base, sizeof m);
    g.clip = 5.0;
    ck_assert_int_eq(spes_aggregate_robust(q, &lo, RE, cs, 3, &g, NULL), 0);
    ck_assert_int_eq(spes_aggregate(m, &lo, RE, cs, 3), 0);
    ck_assert_mem_eq(q, m, sizeof q);
    /* no contributors: nothing moves */
    memcpy(q, r_base, sizeof q);
    ck_assert_int_eq(spes_aggregate_robust(q, &lo, RE, cs, 0, &g, NULL), 0);
    ck_assert_mem_eq(q, r_base, sizeof q);
}
END_TEST

/* --outer IN OUT: the C side of tests/sync_outer_numpy.py. IN holds, little-endian:
 * i32 S, C, E, n; f32 lr, mu; f32 base[S+E*C], mom[S+E*C]; then per contribution
 * i32 node, ncols, cols[ncols], f32 values. OUT gets S_{r+1} then the momentum. */
static int outer_io(const char *in, const char *out, const spes_agg *g)
{
    FILE *f = fopen(in, "rb");
    if (!f)
        return 2;
    int32_t h[4];
    float lm[2];
    int rc = 1;
    if (fread(h, 4, 4, f) != 4 || fread(lm, 4, 2, f) != 2 || h[0] < 1 || h[1] < 1 || h[2] < 1 || h[3] < 0 ||
        h[3] > 64 || h[2] > 64) {
        fclose(f);
        return 2;
    }
    spes_layout lo = lay((size_t)h[0], (size_t)h[1], h[2]);
    float *p = malloc(lo.total_numel * 4), *m = malloc(lo.total_numel * 4);
    spes_contrib st[64];
    const spes_contrib *cs[64];
    memset(st, 0, sizeof st);
    if (!p || !m || fread(p, 4, lo.total_numel, f) != lo.total_numel ||
        fread(m, 4, lo.total_numel, f) != lo.total_numel)
        goto done;
    for (int k = 0; k < h[3]; k++) {
        int32_t nn[2];
        if (fread(nn, 4, 2, f) != 2 || nn[1] < 0 || nn[1] > h[2])
            goto done;
        size_t nv = lo.shared_numel + (size_t)nn[1] * lo.column_numel;
        st[k] = (spes_contrib){
            .node = nn[0], .ncols = nn[1], .shared_numel = lo.shared_numel, .column_numel = lo.column_numel};
        st[k].cols = malloc(((size_t)nn[1] + 1) * 4);
        st[k].val = malloc(nv * 4);
        cs[k] = &st[k];
        if (!st[k].cols || !st[k].val || fread(st[k].cols, 4, (size_t)nn[1], f) != (size_t)nn[1] ||
            fread(st[k].val, 4, nv, f) != nv)
            goto done;
    }
    spes_outer o = {.lr = lm[0], .mu = lm[1], .mom = m};
    if (spes_aggregate_robust(p, &lo, h[2], cs, h[3], g, &o) == 0) {
        FILE *g = fopen(out, "wb");
        if (g && fwrite(p, 4, lo.total_numel, g) == lo.total_numel &&
            fwrite(m, 4, lo.total_numel, g) == lo.total_numel)
            rc = 0;
        if (g && fclose(g))
            rc = 1;
    }
done:
    fclose(f);
    for (int k = 0; k < 64; k++) {
        free(st[k].cols);
        free(st[k].val);
    }
    free(p);
    free(m);
    return rc;
}

START_TEST(test_state_blob)
{
    float p[9], m[9], q[9], w[9];
    fill(p, 9, 2.0f);
    fill(m, 9, -1.0f);
    uint8_t *b1, *b2, d1[32], d2[32], h[32];
    size_t l1, l2;
    ck_assert_int_eq(spes_state_blob_make(p, NULL, 9, 5, &b1, &l1), 0);
    ck_assert_int_eq(spes_state_blob_make(p, m, 9, 5, &b2, &l2), 0);
    ck_assert_uint_eq(l1, 26 + 36);
    ck_assert_uint_eq(l2, 26 + 72);
    /* the blob is the digest's serialisation: its content address is the state digest */
    ck_assert_int_eq(spes_state_digest2(p, NULL, 9, 5, d1), 0);
    ck_assert_int_eq(spes_state_digest2(p, m, 9, 5, d2), 0);
    spes_sha256_ctx c;
    ck_assert_int_eq(spes_sha256_init(&c), 0);
    spes_sha256_update(&c, b1, l1);
    spes_sha256_final(&c, h);
    ck_assert_mem_eq(h, d1, 32);
    ck_assert_int_eq(spes_sha256_init(&c), 0);
    spes_sha256_update(&c, b2, l2);
    spes_sha256_final(&c, h);
    ck_assert_mem_eq(h, d2, 32);
    ck_assert_int_eq(spes_state_blob_parse(b2, l2, 9, 5, q, w, "t"), 0);
    ck_assert_mem_eq(q, p, sizeof p);
    ck_assert_mem_eq(w, m, sizeof m);
    ck_assert_int_eq(spes_state_blob_parse(b1, l1, 9, 5, q, NULL, "t"), 0);
    ck_assert_mem_eq(q, p, sizeof p);
    ck_assert_int_eq(spes_state_blob_parse(b1, l1, 9, 5, q, w, "t"),
                     SPES_EFORMAT); /* plain where momentum is due */
    ck_assert_int_eq(spes_state_blob_parse(b2, l2, 9, 5, q, NULL, "t"), SPES_EFORMAT); /* and the other way */
    ck_assert_int_eq(spes_state_blob_parse(b2, l2, 9, 6, q, w, "t"), SPES_EFORMAT);    /* round */
    ck_assert_int_eq(spes_state_blob_parse(b2, l2, 8, 5, q, w, "t"), SPES_EFORMAT);    /* size */
    ck_assert_int_eq(spes_state_blob_parse(b2, l2 - 1, 9, 5, q, w, "t"), SPES_EFORMAT);
    ck_assert_int_eq(spes_state_blob_parse(b2, 5, 9, 5, q, w, "t"), SPES_EFORMAT);
    free(b1);
    free(b2);
}
END_TEST

START_TEST(test_contrib_max_size)
{
    /* the bound a fetch of a contribution passes is the size of the largest
     * one the model allows (every column, fp32), and no smaller */
    enum { S = 10, C = 6, E = 4 };
    spes_layout lo = lay(S, C, E);
    float base[S + E * C];
    fill(base, lo.total_numel, 1.0f);
    uint8_t all[E] = {1, 1, 1, 1}, two[E] = {0, 1, 0, 1};
    spes_contrib c;
    uint8_t *buf;
    size_t len;
    ck_assert_int_eq(spes_contrib_make(&c, &lo, E, all, base, 1, 0, 1, 1.0f), 0);
    ck_assert_int_eq(spes_contrib_encode(&c, SPES_CODEC_FP32, base, NULL, &buf, &len), 0);
    ck_assert_uint_eq(len, spes_contrib_max_size(&lo, E));
    free(buf);
    ck_assert_int_eq(spes_contrib_encode(&c, SPES_CODEC_BF16, base, NULL, &buf, &len), 0);
    ck_assert_uint_lt(len, spes_contrib_max_size(&lo, E));
    free(buf);
    spes_contrib_fini(&c);
    ck_assert_int_eq(spes_contrib_make(&c, &lo, E, two, base, 1, 0, 1, 1.0f), 0);
    ck_assert_int_eq(spes_contrib_encode(&c, SPES_CODEC_FP32, base, NULL, &buf, &len), 0);
    ck_assert_uint_lt(len, spes_contrib_max_size(&lo, E));
    free(buf);
    spes_contrib_fini(&c);
}
END_TEST

/* q8_decoded is the decoder's delta of value i of a q8ef group (scale * q), from the encoded bytes. */
static float q8_decoded(const uint8_t *g, size_t i)
{
    const uint8_t *b = g + (i / SPES_Q8_BLOCK) * (4 + SPES_Q8_BLOCK);
    float sc;
    memcpy(&sc, b, 4);
    return (float)((const int8_t *)(b + 4))[i % SPES_Q8_BLOCK] * sc;
}

START_TEST(test_q8ef_codec)
{
    enum { S = 300, C = 130, E = 3 }; /* groups of 3 blocks (the last of 44) and of 2 (the last of 2) */
    spes_layout lo = lay(S, C, E);
    float base[S + E * C], cur[S + E * C], ef[S + C], ef0[S + C]; /* the residual: shared, column 1 */
    for (size_t i = 0; i < lo.total_numel; i++) {
        base[i] = 0.5f + 0.001f * (float)(i % 97);
        cur[i] = base[i] + 0.01f * sinf((float)i * 0.37f);
    }
    for (size_t i = 0; i < S + C; i++)
        ef[i] = ef0[i] = 0.0005f * cosf((float)i);
    for (size_t i = 128; i < 256; i++)
        cur[i] = base[i], ef[i] = ef0[i] = 0.0f; /* an all-zero block: scale 0 */
    uint8_t owned[E] = {0, 1, 0};
    spes_contrib c, d;
    ck_assert_int_eq(spes_contrib_make(&c, &lo, E, owned, cur, 4, 1, 10, 1.0f), 0);
    uint8_t *buf;
    size_t len;
    ck_assert_int_eq(spes_contrib_encode(&c, SPES_CODEC_Q8EF, base, ef, &buf, &len), 0);
    size_t vals = 64 + 4, want = vals + (3 * 4 + S) + (2 * 4 + C);
    ck_assert_uint_eq(spes_q8_size(S), 3 * 4 + S);
    ck_assert_uint_eq(len, want);
    ck_assert_uint_le(len, spes_contrib_max_size(&lo, E));
    ck_assert_int_eq(spes_contrib_decode(&d, buf, len, &lo, E, base, 1e3f, "peer"), 0);
    ck_assert_uint_eq(d.codec, SPES_CODEC_Q8EF);
    /* decoded = base + scale * q; the residual is u - scale * q, exactly; |residual| <= scale / 2 */
    const uint8_t *g = buf + vals;
    for (size_t i = 0; i < S; i++) {
        float u = (cur[i] - base[i]) + ef0[i], dq = q8_decoded(g, i);
        ck_assert(d.val[i] == base[i] + dq);
        ck_assert(ef[i] == u - dq);
        ck_assert_float_le(fabsf(ef[i]), 0.02f / 127.0f);
    }
    for (size_t i = 128; i < 256; i++)
        ck_assert(d.val[i] == base[i] && ef[i] == 0.0f);
    g += spes_q8_size(S);
    for (size_t i = 0; i < C; i++) {
        size_t at = S + C + i; /* column 1 */
        float u = (cur[at] - base[at]) + ef0[S + i], dq = q8_decoded(g, i);
        ck_assert(d.val[S + i] == base[at] + dq);
        ck_assert(ef[S + i] == u - dq);
    }
    spes_contrib_fini(&d);
    /* -128, a negative, NaN or infinite scale, and truncation are refused, naming the peer */
    uint8_t *bad = malloc(len);
    memcpy(bad, buf, len);
    bad[vals + 4] = 0x80;
    ck_assert_int_eq(spes_contrib_decode(&d, bad, len, &lo, E, base, 1e3f, "node-7"), SPES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "node-7"));
    float sv[3] = {-1.0f, NAN, INFINITY};
    for (int k = 0; k < 3; k++) {
        memcpy(bad, buf, len);
        memcpy(bad + vals + 4 + 128, &sv[k], 4);
        ck_assert_int_eq(spes_contrib_decode(&d, bad, len, &lo, E, base, 1e3f, "node-7"), SPES_ERANGE);
        ck_assert_ptr_nonnull(strstr(spes_errmsg(), "scale of the block at value 128"));
    }
    for (size_t cut = 0; cut < len; cut += 13)
        ck_assert_int_ne(spes_contrib_decode(&d, buf, cut, &lo, E, base, 1e3f, "peer"), 0);
    /* a large scale x 127 beyond the per-value bound is refused */
    ck_assert_int_eq(spes_contrib_decode(&d, buf, len, &lo, E, base, 1e-3f, "peer"), SPES_ERANGE);
    free(bad);
    free(buf);
    /* a non-finite value is refused at the source, and the residual is left as it was */
    memcpy(ef0, ef, sizeof ef);
    c.val[S + 5] = NAN;
    ck_assert_int_eq(spes_contrib_encode(&c, SPES_CODEC_Q8EF, base, ef, &buf, &len), SPES_ERANGE);
    ck_assert_mem_eq(ef, ef0, sizeof ef);
    spes_contrib_fini(&c);
}
END_TEST

START_TEST(test_topk_codec)
{
    enum { S = 4096 + 100, C = 40, E = 2 }; /* a full chunk and one of 100; a column of 40 keeps all */
    spes_layout lo = lay(S, C, E);
    static float base[S + E * C], cur[S + E * C], ef[S + C]; /* the residual: shared, column 1 */
    for (size_t i = 0; i < lo.total_numel; i++) {
        base[i] = 1.0f;
        cur[i] = base[i] + 0.001f * sinf((float)i * 0.91f);
    }
    memset(ef, 0, sizeof ef);
    cur[17] = base[17] + 5.0f; /* the largest of the first chunk */
    uint8_t owned[E] = {0, 1};
    spes_contrib c, d;
    ck_assert_int_eq(spes_contrib_make(&c, &lo, E, owned, cur, 2, 0, 1, 1.0f), 0);
    uint8_t *buf;
    size_t len;
    ck_assert_int_eq(spes_contrib_encode(&c, SPES_CODEC_TOPK, base, ef, &buf, &len), 0);
    /* 128 bytes per full chunk (16 levels, 96 index, 16 code), 16 + 96 + 16 for the 100-value chunk
     * (64 kept), 16 + 60 + 10 for the 40-value column (all kept) */
    ck_assert_uint_eq(spes_topk_size(S), 128 + 128);
    ck_assert_uint_eq(spes_topk_size(C), 16 + 60 + 10);
    ck_assert_uint_eq(len, 64 + 4 + 256 + 86);
    ck_assert_uint_le(len, spes_contrib_max_size(&lo, E));
    ck_assert_int_eq(spes_contrib_decode(&d, buf, len, &lo, E, base, 1e3f, "peer"), 0);
    ck_assert_uint_eq(d.codec, SPES_CODEC_TOPK);
    /* per chunk: 64 values moved (the rest are the base exactly); decoded + residual = u */
    int moved = 0;
    for (size_t i = 0; i < 4096; i++) {
        moved += d.val[i] != base[i];
        ck_assert_float_eq_tol((d.val[i] - base[i]) + ef[i], cur[i] - base[i], 1e-6f);
    }
    ck_assert_int_le(moved, 64);
    ck_assert(d.val[17] != base[17]); /* the largest is kept */
    /* a column of 40 keeps every value, on 4 levels */
    for (size_t i = 0; i < C; i++)
        ck_assert_float_eq_tol((d.val[S + i] - base[S + C + i]) + ef[S + i], cur[S + C + i] - base[S + C + i],
                               1e-6f);
    spes_contrib_fini(&d);
    /* an index out of order, a non-finite level and truncation are refused */
    uint8_t *bad = malloc(len);
    memcpy(bad, buf, len);
    memset(bad + 68 + 16, 0xff, 3); /* indices 0 and 1 both 4095 */
    ck_assert_int_eq(spes_contrib_decode(&d, bad, len, &lo, E, base, 1e3f, "node-4"), SPES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "out of order or range"));
    memcpy(bad, buf, len);
    float inf = INFINITY;
    memcpy(bad + 68 + 4, &inf, 4);
    ck_assert_int_eq(spes_contrib_decode(&d, bad, len, &lo, E, base, 1e3f, "node-4"), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "level 1"));
    for (size_t cut = 0; cut < len; cut += 11)
        ck_assert_int_ne(spes_contrib_decode(&d, buf, cut, &lo, E, base, 1e3f, "peer"), 0);
    free(bad);
    free(buf);
    spes_contrib_fini(&c);
}
END_TEST

START_TEST(test_q8ef_error_feedback)
{
    /* a node that moves every value by the same tiny delta each round: without error feedback the
     * quantised deltas lose it; with it, what arrives over R rounds is the sum of the deltas minus
     * the residual left (error feedback's invariant), within float rounding */
    enum { S = 256, C = 0, E = 1, R = 40 };
    spes_layout lo = lay(S, C, E);
    float base[S], cur[S], ef[S];
    double arrived[S], sent[S];
    memset(ef, 0, sizeof ef);
    memset(arrived, 0, sizeof arrived);
    memset(sent, 0, sizeof sent);
    uint8_t none[E] = {0};
    for (int r = 0; r < R; r++) {
        for (int i = 0; i < S; i++) {
            base[i] = 1.0f;
            float delta = i == 0 ? 1.0f : 1e-4f * (float)(1 + i % 5); /* value 0 sets the block's scale */
            cur[i] = base[i] + delta;
            sent[i] += (double)(cur[i] - base[i]);
        }
        spes_contrib c, d;
        uint8_t *buf;
        size_t len;
        ck_assert_int_eq(spes_contrib_make(&c, &lo, E, none, cur, r, 0, 1, 1.0f), 0);
        ck_assert_int_eq(spes_contrib_encode(&c, SPES_CODEC_Q8EF, base, ef, &buf, &len), 0);
        ck_assert_int_eq(spes_contrib_decode(&d, buf, len, &lo, E, base, 10.0f, "peer"), 0);
        for (int i = 0; i < S; i++)
            arrived[i] += (double)(d.val[i] - base[i]);
        spes_contrib_fini(&c);
        spes_contrib_fini(&d);
        free(buf);
    }
    for (int i = 1; i < S; i++) {
        ck_assert(fabs(arrived[i] + (double)ef[i] - sent[i]) < 1e-5);
        ck_assert(arrived[i] > 0.5 * sent[i]); /* delivered, not lost to rounding */
    }
}
END_TEST

START_TEST(test_resid_settle)
{
    enum { S = 4, C = 3, E = 3 };
    spes_layout lo = lay(S, C, E);
    float base[S + E * C], own_v[S + C];
    for (size_t i = 0; i < lo.total_numel; i++)
        base[i] = 1.0f;
    for (size_t i = 0; i < S + C; i++)
        own_v[i] = 1.5f; /* D(u) = 0.5 everywhere */
    spes_resid r;
    ck_assert_int_eq(spes_resid_init(&r, &lo, E), 0);
    ck_assert_uint_eq(spes_resid_numel(&r), S); /* the shared block only, at first */
    /* holding column 2: shared, then column 2 (zero); its values line up with a contribution of it */
    uint8_t want[E] = {0, 0, 1};
    ck_assert_int_eq(spes_resid_hold(&r, want), 0);
    ck_assert_uint_eq(spes_resid_numel(&r), S + C);
    for (size_t i = 0; i < S + C; i++)
        r.val[i] = 0.25f;
    int32_t cols[1] = {2};
    spes_contrib own = {.ncols = 1, .cols = cols, .shared_numel = S, .column_numel = C, .val = own_v};
    ck_assert(spes_resid_matches(&r, &own));
    ck_assert_int_eq(spes_resid_settle(&r, SPES_RESID_APPLIED, &own, base, 100.0), 0);
    for (size_t i = 0; i < S + C; i++)
        ck_assert_float_eq(r.val[i], 0.25f);
    /* left out: every value becomes e + D(u) = 0.75 */
    ck_assert_int_eq(spes_resid_settle(&r, SPES_RESID_LEFT_OUT, &own, base, 100.0), 0);
    for (size_t i = 0; i < S + C; i++)
        ck_assert_float_eq(r.val[i], 0.75f);
    /* ... capped at the norm given: 7 values of 1.25 have norm 3.31; capped to 1 */
    ck_assert_int_eq(spes_resid_settle(&r, SPES_RESID_LEFT_OUT, &own, base, 1.0), 0);
    double s = 0;
    for (size_t i = 0; i < S + C; i++)
        s += (double)r.val[i] * r.val[i];
    ck_assert_double_eq_tol(sqrt(s), 1.0, 1e-6);
    /* refused: everything dropped */
    ck_assert_int_eq(spes_resid_settle(&r, SPES_RESID_REFUSED, NULL, base, 1.0), 0);
    for (size_t i = 0; i < S + C; i++)
        ck_assert_float_eq(r.val[i], 0.0f);
    /* columns dealt anew: column 0 joins (zero), column 2 stays (its values kept), in column order */
    for (size_t i = 0; i < S + C; i++)
        r.val[i] = (float)i;
    uint8_t both[E] = {1, 0, 1};
    ck_assert_int_eq(spes_resid_hold(&r, both), 0);
    ck_assert_uint_eq(spes_resid_numel(&r), S + 2 * C);
    for (size_t i = 0; i < S; i++)
        ck_assert_float_eq(r.val[i], (float)i);
    for (size_t i = 0; i < C; i++) {
        ck_assert_float_eq(r.val[S + i], 0.0f);               /* column 0: new */
        ck_assert_float_eq(r.val[S + C + i], (float)(S + i)); /* column 2: kept */
    }
    /* a contribution of other columns does not line up: refused, nothing changed */
    ck_assert(!spes_resid_matches(&r, &own));
    ck_assert_int_eq(spes_resid_settle(&r, SPES_RESID_LEFT_OUT, &own, base, 1.0), SPES_EINVAL);
    ck_assert_double_eq_tol(spes_contrib_delta_norm(&own, base), 0.5 * sqrt(7.0), 1e-9);
    /* column 2 given up: only column 0's (zero) values remain */
    uint8_t first[E] = {1, 0, 0};
    ck_assert_int_eq(spes_resid_hold(&r, first), 0);
    ck_assert_uint_eq(spes_resid_numel(&r), S + C);
    ck_assert_float_eq(r.val[S], 0.0f);
    spes_resid_fini(&r);
}
END_TEST

/* codec_io: --q8|--topk IN OUT for tests/sync_codecs_numpy.py: IN = u64 n | f32 u[n] | f32 e[n] (u
 * here is the delta; the residual e is added, as a contribution does); OUT = the encoded group |
 * f32 residual[n]. */
static int codec_io(spes_codec codec, const char *in, const char *out)
{
    FILE *f = fopen(in, "rb");
    uint64_t n = 0;
    int rc = 2;
    if (!f || fread(&n, 8, 1, f) != 1 || n == 0 || n > (1u << 24)) {
        if (f)
            fclose(f);
        return 2;
    }
    float *u = malloc(n * 4), *e = malloc(n * 4), *base = calloc(n, 4);
    uint8_t *buf = NULL;
    size_t len = 0;
    spes_layout lo = lay(n, 1, 1);
    uint8_t none[1] = {0};
    spes_contrib c;
    if (u && e && base && fread(u, 4, n, f) == n && fread(e, 4, n, f) == n &&
        spes_contrib_make(&c, &lo, 1, none, u, 0, 0, 0, 0.0f) == 0) {
        if (spes_contrib_encode(&c, codec, base, e, &buf, &len) == 0) {
            FILE *g = fopen(out, "wb");
            size_t vals = 64;
            if (g && fwrite(buf + vals, 1, len - vals, g) == len - vals && fwrite(e, 4, n, g) == n)
                rc = 0;
            if (g && fclose(g))
                rc = 1;
        } else {
            rc = 3; /* refused (non-finite) */
        }
        spes_contrib_fini(&c);
    }
    fclose(f);
    free(buf);
    free(u);
    free(e);
    free(base);
    return rc;
}

/* The weight of a round's stale steps at the rebase (sync/overlap.h): 1 when none
 * were stale, the run's overlap_carry when all were, 1 / (1 + share (1/c1 - 1))
 * between; the rebase is base + c (p - x) value by value. */
START_TEST(test_overlap_carry)
{
    ck_assert(spes_overlap_carry_of(0.5, 0, 10, 0) == 1.0);
    ck_assert(spes_overlap_carry_of(0.5, 10, 10, 0) == 0.5);
    ck_assert(spes_overlap_carry_of(0.5, 12, 10, 0) == 0.5); /* never past the round */
    ck_assert_double_eq_tol(spes_overlap_carry_of(0.5, 2, 10, 0), 1 / 1.2, 1e-15);
    ck_assert_double_eq_tol(spes_overlap_carry_of(0.5, 25, 50, 0), 2.0 / 3.0, 1e-15);
    ck_assert_double_eq_tol(spes_overlap_carry_of(0.25, 5, 10, 0), 1 / 2.5, 1e-15);
    for (int k = 0; k <= 50; k++) {
        ck_assert(spes_overlap_carry_of(1.0, k, 50, 0) == 1.0); /* whole, at any share */
        ck_assert(spes_overlap_carry_of(0.0, k, 50, 0) == (k ? 0.0 : 1.0));
        if (k) /* more stale steps weigh less */
            ck_assert(spes_overlap_carry_of(0.5, k, 50, 0) < spes_overlap_carry_of(0.5, k - 1, 50, 0));
    }
    /* a group whose delta is the mean of k contributions was stale only by the others' share,
     * 1 - 1/k: a column of its own (k = 1) keeps its steps whole, k unknown (0) counts it whole */
    for (int k = 0; k <= 8; k++)
        ck_assert(spes_overlap_carry_of(0.5, 0, 10, k) == 1.0);
    ck_assert(spes_overlap_carry_of(0.5, 10, 10, 1) == 1.0);
    ck_assert(spes_overlap_carry_of(0.0, 10, 10, 1) == 1.0);
    ck_assert(spes_overlap_carry_of(0.0, 10, 10, 2) == 0.0);
    ck_assert(spes_overlap_carry_of(0.5, 10, 10, 0) == spes_overlap_carry_of(0.5, 10, 10, 0));
    ck_assert_double_eq_tol(spes_overlap_carry_of(0.5, 10, 10, 2), 1 / 1.5, 1e-15);
    ck_assert_double_eq_tol(spes_overlap_carry_of(0.5, 5, 10, 4), 1 / (1 + 0.75 * 0.5), 1e-15);
    for (int k = 2; k <= 8; k++) /* more contributors: more of the delta is the others' */
        ck_assert(spes_overlap_carry_of(0.5, 10, 10, k) < spes_overlap_carry_of(0.5, 10, 10, k - 1));
    float p[3] = {1.0f, -2.0f, 4.0f}, base[3] = {0.5f, 0.5f, 0.5f}, x[3] = {0.0f, -1.0f, 4.0f};
    spes_overlap_rebase(p, base, x, 3, 0.5f);
    ck_assert(p[0] == 1.0f && p[1] == 0.0f && p[2] == 0.5f);
}
END_TEST

Suite *sync_suite(void)
{
    Suite *s = suite_create("sync");
    TCase *tc = tcase_create("sync");
    tcase_add_test(tc, test_contrib_max_size);
    tcase_add_test(tc, test_contrib_round_trip);
    tcase_add_test(tc, test_q8ef_codec);
    tcase_add_test(tc, test_topk_codec);
    tcase_add_test(tc, test_q8ef_error_feedback);
    tcase_add_test(tc, test_resid_settle);
    tcase_add_test(tc, test_contrib_check_author);
    tcase_add_test(tc, test_bf16_rounding);
    tcase_add_test(tc, test_aggregate);
    tcase_add_test(tc, test_digest);
    tcase_add_test(tc, test_outer_plain_is_aggregate);
    tcase_add_test(tc, test_outer_nesterov);
    tcase_add_test(tc, test_digest2);
    tcase_add_test(tc, test_norm_bound_check);
    tcase_add_test(tc, test_norm_history);
    tcase_add_test(tc, test_median_and_norm);
    tcase_add_test(tc, test_trimmed_mean);
    tcase_add_test(tc, test_clipped_mean);
    tcase_add_test(tc, test_state_blob);
    tcase_add_test(tc, test_overlap_carry);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "--q8"))
        return codec_io(SPES_CODEC_Q8EF, argv[2], argv[3]);
    if (argc == 4 && !strcmp(argv[1], "--topk"))
        return codec_io(SPES_CODEC_TOPK, argv[2], argv[3]);
    if (argc == 4 && !strcmp(argv[1], "--outer"))
        return outer_io(argv[2], argv[3], NULL);
    spes_agg g; /* --robust MODE PARAM IN OUT: the same, aggregated by MODE with trim or clip PARAM */
    if (argc == 6 && !strcmp(argv[1], "--robust") &&
        spes_agg_from_name(&g, argv[2], atof(argv[3]), atof(argv[3])) == 0)
        return outer_io(argv[4], argv[5], &g);
    SRunner *sr = srunner_create(sync_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
