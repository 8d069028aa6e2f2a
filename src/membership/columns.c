/* columns.c: see columns.h. Sizes are tiny (nodes x experts), so clarity wins
 * over asymptotics: every decision rescans the table. */
#include "membership/columns.h"
#include "core/error.h"

static int load(const uint8_t *own, int E, int k)
{
    int c = 0;
    for (int e = 0; e < E; e++)
        c += own[(long)k * E + e];
    return c;
}

static int owners(const uint8_t *own, int n, int E, int e)
{
    int c = 0;
    for (int k = 0; k < n; k++)
        c += own[(long)k * E + e];
    return c;
}

/* argmin/argmax of load; ties: lowest index for min, lowest index for max */
static int least_loaded(const uint8_t *own, int n, int E)
{
    int best = 0;
    for (int k = 1; k < n; k++)
        if (load(own, E, k) < load(own, E, best))
            best = k;
    return best;
}

static int most_loaded(const uint8_t *own, int n, int E)
{
    int best = 0;
    for (int k = 1; k < n; k++)
        if (load(own, E, k) > load(own, E, best))
            best = k;
    return best;
}

/* move_one moves the highest column of node from to node to (from keeps the rest). */
static void move_one(uint8_t *own, int E, int from, int to)
{
    for (int e = E - 1; e >= 0; e--)
        if (own[(long)from * E + e] && !own[(long)to * E + e]) {
            own[(long)from * E + e] = 0;
            own[(long)to * E + e] = 1;
            return;
        }
}

void spes_columns_rebalance(uint8_t *own, int n, int E)
{
    if (n <= 0 || E <= 0)
        return;
    /* 1. orphaned columns, in column order, to the least-loaded node */
    for (int e = 0; e < E; e++)
        if (owners(own, n, E, e) == 0)
            own[(long)least_loaded(own, n, E) * E + e] = 1;
    if (n <= E) {
        /* 2. shared columns (left from a time with more nodes) keep one owner: the lowest node */
        for (int e = 0; e < E; e++)
            for (int k = n - 1; k >= 0 && owners(own, n, E, e) > 1; k--)
                if (own[(long)k * E + e])
                    own[(long)k * E + e] = 0;
        /* 3. even out: heaviest gives to lightest until loads differ by at most one */
        for (;;) {
            int hi = most_loaded(own, n, E), lo = least_loaded(own, n, E);
            if (load(own, E, hi) - load(own, E, lo) <= 1)
                break;
            move_one(own, E, hi, lo);
        }
        return;
    }
    /* n > E: every node owns exactly one column; columns get several owners */
    for (int k = 0; k < n; k++) /* drop columns that others also own */
        for (int e = E - 1; e >= 0 && load(own, E, k) > 1; e--)
            if (own[(long)k * E + e] && owners(own, n, E, e) > 1)
                own[(long)k * E + e] = 0;
    for (int k = 0; k < n; k++) {
        while (load(own, E, k) > 1) { /* only sole-owned columns left: hand one over */
            int to = -1;
            for (int j = 0; j < n && to < 0; j++)
                if (load(own, E, j) == 0)
                    to = j;
            for (int j = 0; j < n && to < 0; j++)
                for (int e = 0; e < E; e++)
                    if (load(own, E, j) == 1 && own[(long)j * E + e] && owners(own, n, E, e) > 1) {
                        own[(long)j * E + e] = 0;
                        to = j;
                        break;
                    }
            if (to < 0)
                break; /* cannot happen with n > E: the pigeonhole leaves a shared column */
            move_one(own, E, k, to);
        }
    }
    for (int k = 0; k < n; k++) {
        if (load(own, E, k) > 0)
            continue;
        int best = 0; /* the column with the fewest owners, lowest index */
        for (int e = 1; e < E; e++)
            if (owners(own, n, E, e) < owners(own, n, E, best))
                best = e;
        own[(long)k * E + best] = 1;
    }
}

int spes_columns_check(const uint8_t *own, int n, int E)
{
    for (int e = 0; e < E; e++)
        if (n > 0 && owners(own, n, E, e) == 0)
            return spes_errf(SPES_EINVAL, "column %d has no owner", e);
    int lo = 1 << 30, hi = 0;
    for (int k = 0; k < n; k++) {
        int l = load(own, E, k);
        lo = l < lo ? l : lo;
        hi = l > hi ? l : hi;
    }
    if (n > 0 && hi - lo > 1)
        return spes_errf(SPES_EINVAL, "column loads range from %d to %d", lo, hi);
    if (n > E && (hi != 1 || lo != 1))
        return spes_errf(SPES_EINVAL, "with more nodes than columns every node must own exactly one");
    return 0;
}
