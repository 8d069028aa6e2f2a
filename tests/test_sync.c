/* test_sync.c: contribution codec, aggregation and digest; the shard plan, group blobs and a shard's mean. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/sha256.h"
#include "sync/outer.h"
#include "sync/overlap.h"
#include "sync/resid.h"
#include "sync/robust.h"
#include "sync/shard.h"
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

/* check_plan checks a plan of n values among `capable` nodes: K shards (want_k, or at most K0 when
 * want_k is 0), off from 0 to n, every shard but the last of one length (a multiple of 128), the last
 * no longer, none empty. */
static void check_plan(size_t n, int capable, int want_k)
{
    size_t off[SPES_SHARD_MAX + 1];
    size_t k0 = capable > 1 ? (size_t)capable : 1;
    k0 = k0 < n / SPES_SHARD_MIN ? k0 : n / SPES_SHARD_MIN;
    k0 = k0 < 1 ? 1 : k0 > SPES_SHARD_MAX ? SPES_SHARD_MAX : k0;
    int k = spes_shard_plan(n, capable, off);
    if (want_k)
        ck_assert_int_eq(k, want_k);
    ck_assert(k >= 1 && (size_t)k <= k0);
    ck_assert_uint_eq(off[0], 0);
    ck_assert_uint_eq(off[k], n);
    size_t len = off[1] - off[0], sum = 0;
    for (int j = 0; j < k; j++) {
        ck_assert_uint_gt(off[j + 1], off[j]);
        if (j + 1 < k) {
            ck_assert_uint_eq(off[j + 1] - off[j], len);
            ck_assert_uint_eq(len % SPES_Q8_BLOCK, 0);
        } else {
            ck_assert_uint_le(off[j + 1] - off[j], len);
        }
        sum += off[j + 1] - off[j];
    }
    ck_assert_uint_eq(sum, n);
}

START_TEST(test_shard_plan)
{
    size_t off[SPES_SHARD_MAX + 1];
    const size_t M = SPES_SHARD_MIN;
    /* an empty block: one empty shard */
    ck_assert_int_eq(spes_shard_plan(0, 3, off), 1);
    ck_assert(off[0] == 0 && off[1] == 0);
    /* under 2 x 256 Ki values, or one capable node (or none): one shard */
    check_plan(1000, 3, 1);
    check_plan(2 * M - 1, 3, 1);
    check_plan(10 * M, 1, 1);
    check_plan(10 * M, 0, 1);
    check_plan(10 * M, -4, 1);
    /* two shards of exactly 256 Ki */
    ck_assert_int_eq(spes_shard_plan(2 * M, 3, off), 2);
    ck_assert(off[1] == M && off[2] == 2 * M);
    /* 3 x 256 Ki + 1 among 3: ceil 262145, rounded up to 262272 (2049 blocks); the last holds 261889 */
    ck_assert_int_eq(spes_shard_plan(3 * M + 1, 3, off), 3);
    ck_assert(off[1] == 262272 && off[2] == 2 * 262272 && off[3] == 3 * M + 1);
    /* 300 capable nodes: at most 256 shards, and at most numel / 256 Ki */
    ck_assert_int_eq(spes_shard_plan(300 * M + 77, 300, off), 256);
    ck_assert_uint_eq(off[1], 307328); /* ceil((300 x 256 Ki + 77) / 256) = 307201, rounded up */
    check_plan(300 * M, 300, 256);
    check_plan(7 * M + 5, 300, 7);
    /* many sizes and node counts: never more than K0, never an empty shard */
    static const size_t ns[] = {1,           127,        2 * M - 3,       2 * M + 1, 5 * M + 127,
                                5 * M + 128, 64 * M + 1, 255 * M + 99999, 256 * M,   1000 * M + 1};
    static const int caps[] = {-1, 0, 1, 2, 3, 7, 64, 255, 256, 300};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        for (size_t c = 0; c < sizeof caps / sizeof caps[0]; c++)
            check_plan(ns[i], caps[c], 0);
}
END_TEST

/* ghdr is the header of a test group: shard 1 of 3 at 262272, round 9, node 2. */
static spes_group_hdr ghdr(uint32_t kind, uint32_t codec, uint64_t count)
{
    return (spes_group_hdr){.kind = kind,
                            .codec = codec,
                            .round = 9,
                            .node = 2,
                            .shard = 1,
                            .shards = 3,
                            .offset = 262272,
                            .count = count,
                            .contributors = kind == SPES_GROUP_AGGREGATE ? 3 : 0};
}

static void ghdr_eq(const spes_group_hdr *a, const spes_group_hdr *b)
{
    ck_assert(a->kind == b->kind && a->codec == b->codec && a->round == b->round && a->node == b->node);
    ck_assert(a->shard == b->shard && a->shards == b->shards && a->offset == b->offset);
    ck_assert(a->count == b->count && a->contributors == b->contributors);
}

static void gfixture(float *base, float *val, float *ef, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        base[i] = 0.5f + 0.001f * (float)(i % 97);
        val[i] = base[i] + 0.01f * sinf((float)i * 0.37f);
        ef[i] = 0.0005f * cosf((float)i);
    }
    val[17] = base[17] + 2.0f;
}

enum { GN = 4096 + 100 }; /* q8ef: 33 blocks, the last of 100; topk: a full chunk and one of 100 */

/* check_group_values checks what a group of GN values in an error-feedback codec decoded to (dec) and
 * left in ef, against the codec run on u = (val - base) + ef0 directly. */
static void check_group_values(uint32_t codec, const uint8_t *g, const float *val, const float *base,
                               const float *ef0, const float *ef, const float *dec)
{
    static float u[GN], res[GN];
    static uint8_t want[GN * 4];
    for (size_t i = 0; i < GN; i++)
        u[i] = (val[i] - base[i]) + (ef0 ? ef0[i] : 0.0f);
    if (codec == SPES_CODEC_Q8EF)
        ck_assert_int_eq(spes_q8_encode(u, GN, want, res), 0);
    else
        ck_assert_int_eq(spes_topk_encode(u, GN, want, res), 0);
    ck_assert_mem_eq(g, want, spes__values_size(codec, GN));
    if (ef)
        ck_assert_mem_eq(ef, res, sizeof res);
    for (size_t i = 0; i < GN; i++) {
        if (codec == SPES_CODEC_Q8EF)
            ck_assert(dec[i] == base[i] + q8_decoded(g, i));
        else if (res[i] == u[i])
            ck_assert(dec[i] == base[i]); /* not kept */
        else
            ck_assert_float_eq_tol((dec[i] - base[i]) + res[i], u[i], 1e-6f);
    }
}

START_TEST(test_group_round_trip)
{
    static float base[GN], val[GN], ef[GN], ef0[GN], dec[GN];
    gfixture(base, val, ef0, GN);
    const size_t vsize[] = {0, 4 * GN, 2 * GN, 33 * 4 + GN, 128 + 128};
    for (uint32_t kind = SPES_GROUP_CONTRIB; kind <= SPES_GROUP_AGGREGATE; kind++)
        for (uint32_t codec = SPES_CODEC_FP32; codec <= SPES_CODEC_TOPK; codec++) {
            spes_group_hdr h = ghdr(kind, codec, GN), got;
            memcpy(ef, ef0, sizeof ef);
            uint8_t *buf;
            size_t len;
            ck_assert_int_eq(spes_group_encode(&h, val, base, ef, &buf, &len), 0);
            ck_assert_uint_eq(len, SPES_GROUP_HEADER + vsize[codec]);
            ck_assert_uint_eq(len, spes_group_size(codec, GN));
            ck_assert_mem_eq(buf, "SPESGRP1", 8);
            ck_assert_int_eq(spes_group_decode(&got, dec, buf, len, &h, base, 1e3f, "peer"), 0);
            ghdr_eq(&got, &h);
            const uint8_t *g = buf + SPES_GROUP_HEADER;
            if (codec == SPES_CODEC_FP32) { /* the values themselves, bit for bit; no residual */
                ck_assert_mem_eq(dec, val, sizeof val);
                ck_assert_mem_eq(ef, ef0, sizeof ef);
            } else if (codec == SPES_CODEC_BF16) {
                for (size_t i = 0; i < GN; i++)
                    ck_assert(dec[i] == base[i] + spes_f32_from_bf16(spes_bf16_from_f32(val[i] - base[i])));
                ck_assert_mem_eq(ef, ef0, sizeof ef);
            } else {
                check_group_values(codec, g, val, base, ef0, ef, dec);
            }
            free(buf);
        }
    /* no residual (an aggregate's): u is the delta */
    for (uint32_t codec = SPES_CODEC_Q8EF; codec <= SPES_CODEC_TOPK; codec++) {
        spes_group_hdr h = ghdr(SPES_GROUP_AGGREGATE, codec, GN), got;
        uint8_t *buf;
        size_t len;
        ck_assert_int_eq(spes_group_encode(&h, val, base, NULL, &buf, &len), 0);
        ck_assert_int_eq(spes_group_decode(&got, dec, buf, len, &h, base, 1e3f, "peer"), 0);
        check_group_values(codec, buf + SPES_GROUP_HEADER, val, base, NULL, NULL, dec);
        free(buf);
    }
    /* an empty shard is a header alone */
    spes_group_hdr h = ghdr(SPES_GROUP_CONTRIB, SPES_CODEC_Q8EF, 0), got;
    uint8_t *buf;
    size_t len;
    ck_assert_int_eq(spes_group_encode(&h, val, base, ef, &buf, &len), 0);
    ck_assert_uint_eq(len, SPES_GROUP_HEADER);
    ck_assert_int_eq(spes_group_decode(&got, dec, buf, len, &h, base, 1e3f, "peer"), 0);
    free(buf);
}
END_TEST

START_TEST(test_group_header_refused)
{
    enum { N = 300 };
    float base[N], val[N], ef[N], dec[N];
    gfixture(base, val, ef, N);
    spes_group_hdr h = ghdr(SPES_GROUP_AGGREGATE, SPES_CODEC_Q8EF, N), got;
    uint8_t *buf, *bad;
    size_t len;
    ck_assert_int_eq(spes_group_encode(&h, val, base, NULL, &buf, &len), 0);
    ck_assert_uint_eq(len, 60 + 3 * 4 + N);
    bad = malloc(len + 1);
    /* every header field that differs from what was asked for (its lowest bit flipped), named */
    static const struct {
        size_t at;
        int err;
        const char *msg;
    } f[] = {
        {0, SPES_EFORMAT, "node-5: not a group blob (bad magic or 372 bytes)"},
        {8, SPES_EFORMAT, "node-5: group version 0 is not supported"},
        {12, SPES_EFORMAT, "node-5: group kind is 3, expected 2"},
        {16, SPES_EFORMAT, "node-5: group codec is 2, expected 3"},
        {20, SPES_ESTATE, "node-5: group round is 8, expected 9"},
        {28, SPES_EAUTH, "node-5: group node is 3, expected 2"},
        {32, SPES_EFORMAT, "node-5: group shard is 0, expected 1"},
        {36, SPES_EFORMAT, "node-5: group shards is 2, expected 3"},
        {40, SPES_EFORMAT, "node-5: group offset is 262273, expected 262272"},
        {48, SPES_EFORMAT, "node-5: group count is 301, expected 300"},
        {56, SPES_EFORMAT, "node-5: group contributors is 2, expected 3"},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        memcpy(bad, buf, len);
        bad[f[i].at] ^= 1;
        ck_assert_int_eq(spes_group_decode(&got, dec, bad, len, &h, base, 1e3f, "node-5"), f[i].err);
        ck_assert_str_eq(spes_errmsg(), f[i].msg);
    }
    /* an aggregate of nobody; any count of contributors when none is asked for */
    memcpy(bad, buf, len);
    bad[56] = 0;
    ck_assert_int_eq(spes_group_decode(&got, dec, bad, len, &h, base, 1e3f, "node-5"), SPES_EFORMAT);
    ck_assert_str_eq(spes_errmsg(), "node-5: group contributors is 0, an aggregate's must be at least 1");
    spes_group_hdr any = h;
    any.contributors = 0;
    bad[56] = 7;
    ck_assert_int_eq(spes_group_decode(&got, dec, bad, len, &any, base, 1e3f, "node-5"), 0);
    ck_assert_uint_eq(got.contributors, 7);
    /* truncated anywhere, or a byte too long */
    for (size_t cut = 0; cut < len; cut++)
        ck_assert_int_eq(spes_group_decode(&got, dec, buf, cut, &h, base, 1e3f, "node-5"), SPES_EFORMAT);
    memcpy(bad, buf, len);
    bad[len] = 0;
    ck_assert_int_eq(spes_group_decode(&got, dec, bad, len + 1, &h, base, 1e3f, "node-5"), SPES_EFORMAT);
    ck_assert_str_eq(spes_errmsg(), "node-5: group is 373 bytes, expected 372");
    /* q = -128, a negative scale, a delta beyond the bound */
    memcpy(bad, buf, len);
    bad[60 + 4 + 5] = 0x80;
    ck_assert_int_eq(spes_group_decode(&got, dec, bad, len, &h, base, 1e3f, "node-5"), SPES_EFORMAT);
    ck_assert_str_eq(spes_errmsg(), "node-5: group value 5 is -128, outside -127..127");
    memcpy(bad, buf, len);
    float neg = -1.0f;
    memcpy(bad + 60 + 132, &neg, 4);
    ck_assert_int_eq(spes_group_decode(&got, dec, bad, len, &h, base, 1e3f, "node-5"), SPES_ERANGE);
    ck_assert_str_eq(spes_errmsg(), "node-5: group scale of the block at value 128 is -1");
    ck_assert_int_eq(spes_group_decode(&got, dec, buf, len, &h, base, 1e-3f, "node-5"), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "beyond the bound"));
    /* what cannot be asked for, and headers that cannot be written */
    spes_group_hdr w = h;
    w.kind = 5;
    ck_assert_int_eq(spes_group_decode(&got, dec, buf, len, &w, base, 1e3f, "node-5"), SPES_EINVAL);
    w = h;
    w.codec = 9;
    ck_assert_int_eq(spes_group_decode(&got, dec, buf, len, &w, base, 1e3f, "node-5"), SPES_EINVAL);
    w.count = UINT64_MAX;
    w.codec = SPES_CODEC_FP32;
    ck_assert_int_eq(spes_group_decode(&got, dec, buf, len, &w, base, 1e3f, "node-5"), SPES_EINVAL);
    uint8_t *out = NULL;
    size_t olen;
    ck_assert_int_eq(spes_group_encode(&w, val, base, NULL, &out, &olen), SPES_EINVAL);
    w = ghdr(SPES_GROUP_CONTRIB, SPES_CODEC_BF16, N);
    w.contributors = 1;
    ck_assert_int_eq(spes_group_encode(&w, val, base, NULL, &out, &olen), SPES_EINVAL);
    w = ghdr(SPES_GROUP_AGGREGATE, SPES_CODEC_BF16, N);
    w.contributors = 0;
    ck_assert_int_eq(spes_group_encode(&w, val, base, NULL, &out, &olen), SPES_EINVAL);
    ck_assert_ptr_null(out);
    free(bad);
    free(buf);
}
END_TEST

START_TEST(test_group_values_refused)
{
    enum { N = 300 };
    float base[N], val[N], ef[N], ef0[N], dec[N];
    gfixture(base, val, ef, N);
    spes_group_hdr h = ghdr(SPES_GROUP_CONTRIB, SPES_CODEC_TOPK, N), got;
    uint8_t *buf, *bad;
    size_t len;
    ck_assert_int_eq(spes_group_encode(&h, val, base, ef, &buf, &len), 0);
    bad = malloc(len);
    /* topk: an index out of order, a non-finite level */
    memcpy(bad, buf, len);
    memset(bad + 60 + 16, 0xff, 3); /* indices 0 and 1 both 4095 */
    ck_assert_int_eq(spes_group_decode(&got, dec, bad, len, &h, base, 1e3f, "node-4"), SPES_EFORMAT);
    ck_assert_str_eq(spes_errmsg(),
                     "node-4: group index 4095 of the chunk at value 0 is out of order or range");
    memcpy(bad, buf, len);
    float inf = INFINITY;
    memcpy(bad + 60 + 4, &inf, 4);
    ck_assert_int_eq(spes_group_decode(&got, dec, bad, len, &h, base, 1e3f, "node-4"), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "group level 1 of the chunk at value 0"));
    free(bad);
    free(buf);
    /* a non-finite value is refused at the source, the residual left as it was */
    memcpy(ef0, ef, sizeof ef);
    val[250] = NAN;
    for (uint32_t codec = SPES_CODEC_Q8EF; codec <= SPES_CODEC_TOPK; codec++) {
        h.codec = codec;
        ck_assert_int_eq(spes_group_encode(&h, val, base, ef, &buf, &len), SPES_ERANGE);
        ck_assert_mem_eq(ef, ef0, sizeof ef);
    }
    /* fp32 carries it, and the decoder refuses it */
    h.codec = SPES_CODEC_FP32;
    ck_assert_int_eq(spes_group_encode(&h, val, base, NULL, &buf, &len), 0);
    ck_assert_int_eq(spes_group_decode(&got, dec, buf, len, &h, base, 1e3f, "node-4"), SPES_ERANGE);
    ck_assert_str_eq(spes_errmsg(), "node-4: group value 250 is NaN");
    free(buf);
}
END_TEST

START_TEST(test_shard_mean)
{
    /* one contributor: its values bit for bit, whatever the base */
    float base[4] = {1, 2, 0.5f, 10}, one[4] = {1e30f, 1e-30f, 3, -7}, out[4];
    const float *v1[] = {one};
    ck_assert_int_eq(spes_shard_mean(out, base, v1, 1, 4), 0);
    ck_assert_mem_eq(out, one, sizeof one);
    /* three: base + (the fp32 sum of the deltas in order) / 3 */
    float a[4] = {2, 1, 0.75f, 13}, b[4] = {3, 2, 0.75f, 7}, c[4] = {1, 6, 1, 16};
    const float *v3[] = {a, b, c};
    ck_assert_int_eq(spes_shard_mean(out, base, v3, 3, 4), 0);
    float third = 1.0f / 3.0f;
    ck_assert(out[0] == 2 && out[1] == 3 && out[2] == 0.5f + third && out[3] == 12);
    /* in place, and the same bytes as spes_aggregate */
    enum { N = 300 };
    static float p[N], q[N], w[3][N];
    for (size_t i = 0; i < N; i++) {
        p[i] = q[i] = 0.3f + 0.01f * sinf((float)i);
        for (int k = 0; k < 3; k++)
            w[k][i] = p[i] + 0.001f * cosf((float)(i * (size_t)(k + 2)));
    }
    spes_layout lo = lay(N, 1, 1);
    spes_contrib cs[3];
    const spes_contrib *cp[3];
    const float *vs[3];
    for (int k = 0; k < 3; k++) {
        cs[k] = (spes_contrib){.node = k, .shared_numel = N, .column_numel = 1, .val = w[k]};
        cp[k] = &cs[k];
        vs[k] = w[k];
    }
    float base0[N], acc[N] = {0}, r[N];
    memcpy(base0, q, sizeof base0);
    ck_assert_int_eq(spes_aggregate(p, &lo, 1, cp, 3), 0);
    ck_assert_int_eq(spes_shard_mean(q, q, vs, 3, N), 0);
    ck_assert_mem_eq(p, q, sizeof p);
    for (int k = 0; k < 3; k++) /* one contribution at a time, as an aggregator streams them */
        spes_shard_acc_add(acc, w[k], base0, N);
    spes_shard_acc_mean(r, base0, acc, 3, N);
    ck_assert_mem_eq(r, q, sizeof r);
    ck_assert_int_eq(spes_shard_mean(out, base, v3, 0, 4), SPES_EINVAL);
}
END_TEST

/* --plan NUMEL CAPABLE for tests/sync_shard_numpy.py: prints K, then off[0..K], on one line. */
static int plan_io(const char *numel, const char *capable)
{
    size_t off[SPES_SHARD_MAX + 1];
    int k = spes_shard_plan((size_t)strtoull(numel, NULL, 10), atoi(capable), off);
    printf("%d", k);
    for (int j = 0; j <= k; j++)
        printf(" %zu", off[j]);
    printf("\n");
    return 0;
}

/* --group CODEC IN OUT for tests/sync_shard_numpy.py: one shard's round. IN holds, little-endian:
 * i64 round | i32 aggregator | u32 shard, shards | u64 offset, n | u32 k | i32 nodes[k] | f32 base[n] |
 * per contributor f32 val[n], ef[n]. Each contribution is encoded (kind 1, with its residual) and
 * decoded, the decoded ones averaged (spes_shard_mean) and the aggregate encoded (kind 2, no residual)
 * and decoded. OUT gets each contributor's blob and new residual, the aggregate's blob, then the
 * shard's decoded new values. */
static int group_io(const char *codec_name, const char *in, const char *out)
{
    uint32_t codec = spes_codec_from_name(codec_name), sh[2], k = 0;
    int64_t round;
    int32_t agg, nodes[64];
    uint64_t on[2];
    FILE *f = fopen(in, "rb"), *g = NULL;
    if (!codec || !f || fread(&round, 8, 1, f) != 1 || fread(&agg, 4, 1, f) != 1 || fread(sh, 4, 2, f) != 2 ||
        fread(on, 8, 2, f) != 2 || fread(&k, 4, 1, f) != 1 || k < 1 || k > 64 || on[1] > (1u << 24) ||
        fread(nodes, 4, k, f) != k) {
        if (f)
            fclose(f);
        return 2;
    }
    size_t n = (size_t)on[1];
    float *base = malloc(n * 4 + 4), *vals = malloc(k * n * 4 + 4), *ef = malloc(n * 4 + 4);
    float *mean = malloc(n * 4 + 4), *dec = malloc(n * 4 + 4);
    const float *vs[64];
    uint8_t *buf = NULL;
    size_t len;
    int rc = 2;
    spes_group_hdr h = {.codec = codec, .round = round, .shard = sh[0], .shards = sh[1], .offset = on[0]},
                   got;
    h.count = n;
    if (!base || !vals || !ef || !mean || !dec || fread(base, 4, n, f) != n || !(g = fopen(out, "wb")))
        goto done;
    h.kind = SPES_GROUP_CONTRIB;
    for (uint32_t j = 0; j < k; j++) {
        float *v = vals + j * n;
        vs[j] = v;
        h.node = nodes[j];
        if (fread(v, 4, n, f) != n || fread(ef, 4, n, f) != n)
            goto done;
        rc = 3;
        if (spes_group_encode(&h, v, base, ef, &buf, &len) ||
            spes_group_decode(&got, v, buf, len, &h, base, FLT_MAX, "io"))
            goto done;
        rc = fwrite(buf, 1, len, g) != len || fwrite(ef, 4, n, g) != n;
        free(buf);
        buf = NULL;
        if (rc)
            goto done;
    }
    rc = 3;
    h = (spes_group_hdr){.kind = SPES_GROUP_AGGREGATE,
                         .codec = codec,
                         .round = round,
                         .node = agg,
                         .shard = sh[0],
                         .shards = sh[1],
                         .offset = on[0],
                         .count = n,
                         .contributors = k};
    if (spes_shard_mean(mean, base, vs, (int)k, n) || spes_group_encode(&h, mean, base, NULL, &buf, &len) ||
        spes_group_decode(&got, dec, buf, len, &h, base, FLT_MAX, "io"))
        goto done;
    rc = fwrite(buf, 1, len, g) != len || fwrite(dec, 4, n, g) != n;
done:
    if (g && fclose(g))
        rc = 1;
    fclose(f);
    free(buf);
    free(base);
    free(vals);
    free(ef);
    free(mean);
    free(dec);
    return rc;
}

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
    tcase_add_test(tc, test_shard_plan);
    tcase_add_test(tc, test_group_round_trip);
    tcase_add_test(tc, test_group_header_refused);
    tcase_add_test(tc, test_group_values_refused);
    tcase_add_test(tc, test_shard_mean);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "--q8"))
        return codec_io(SPES_CODEC_Q8EF, argv[2], argv[3]);
    if (argc == 4 && !strcmp(argv[1], "--topk"))
        return codec_io(SPES_CODEC_TOPK, argv[2], argv[3]);
    if (argc == 4 && !strcmp(argv[1], "--plan"))
        return plan_io(argv[2], argv[3]);
    if (argc == 5 && !strcmp(argv[1], "--group"))
        return group_io(argv[2], argv[3], argv[4]);
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
