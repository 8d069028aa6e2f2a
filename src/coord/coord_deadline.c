/* coord_deadline.c: the adaptive round deadline and the stragglers of a
 * round. A round's deadline follows what its participants took in recent
 * rounds: twice the 95th percentile of their announcements (ms after their
 * round opened) plus two seconds, within the operator's bounds
 * (round_deadline_min_ms .. round_deadline_ms). Round 0 teaches it nothing
 * (no node applies a commit before training it, so it is the quickest round
 * of a run). A participant that had not announced when its round committed
 * counts as having announced at the deadline, so a round that cuts members
 * makes the next deadline longer, never shorter. A straggler is a participant that announced more than
 * max(25 % of the median, 1 s) after the round's median announcement, or not
 * at all. See docs/design.md ("Round deadlines"). */
#include "coord/coord_priv.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* bounds gives the operator's floor and ceiling (a floor at or above the ceiling: fixed). */
static void bounds(const spes_coord_sm *c, uint64_t *lo, uint64_t *hi)
{
    *hi = (uint64_t)c->set.round_deadline_ms;
    *lo = c->set.round_deadline_min_ms > 0 && (uint64_t)c->set.round_deadline_min_ms < *hi
              ? (uint64_t)c->set.round_deadline_min_ms
              : *hi;
}

uint64_t coord_deadline(const spes_coord_sm *c)
{
    uint64_t lo, hi;
    bounds(c, &lo, &hi);
    return c->deadline_ms >= lo && c->deadline_ms <= hi ? c->deadline_ms : hi;
}

static void sample(spes_coord_sm *c, uint32_t ms)
{
    c->ann_ms[c->ann_next] = ms;
    c->ann_next = (c->ann_next + 1) % SPES_COORD_DEADLINE_SAMPLES;
    if (c->nann < SPES_COORD_DEADLINE_SAMPLES)
        c->nann++;
}

/* next_deadline is twice the 95th percentile of the samples plus 2 s, within the bounds
 * (the ceiling until SPES_COORD_DEADLINE_MIN_SAMPLES are in). */
static uint64_t next_deadline(const spes_coord_sm *c)
{
    uint64_t lo, hi;
    bounds(c, &lo, &hi);
    if (c->nann < SPES_COORD_DEADLINE_MIN_SAMPLES || lo == hi)
        return hi;
    uint32_t s[SPES_COORD_DEADLINE_SAMPLES];
    memcpy(s, c->ann_ms, (size_t)c->nann * sizeof *s);
    qsort(s, (size_t)c->nann, sizeof *s, cmp_u32);
    int i = (19 * c->nann + 19) / 20 - 1; /* ceil(0.95 n) - 1 */
    uint64_t d = (uint64_t)s[i] * 2 + 2000;
    return d < lo ? lo : d > hi ? hi : d;
}

static int by_behind(const void *a, const void *b)
{
    const coord_straggler *x = a, *y = b;
    if (x->missed != y->missed)
        return y->missed - x->missed; /* the missed first */
    return x->behind_ms > y->behind_ms ? -1 : x->behind_ms < y->behind_ms;
}

void coord_round_timing(spes_coord_sm *c)
{
    uint64_t deadline = coord_deadline(c);
    uint32_t *d = malloc((size_t)(c->nmem ? c->nmem : 1) * sizeof *d);
    coord_straggler *all = malloc((size_t)(c->nmem ? c->nmem : 1) * sizeof *all);
    int n = 0, nall = 0;
    c->nstrag = 0;
    c->last_median_ms = 0;
    if (!d || !all) {
        free(d);
        free(all);
        return; /* out of memory: this round teaches the deadline nothing */
    }
    for (int i = 0; i < c->nmem; i++) {
        const coord_member *m = &c->mem[i];
        if (!m->participant || m->state != NS(ACTIVE))
            continue;
        if (m->announced)
            d[n++] = m->announced_ms;
        if (c->round == 0)
            continue; /* round 0: nothing to apply before training; not what later rounds take */
        if (m->announced)
            sample(c, m->announced_ms);
        else
            sample(c, deadline > UINT32_MAX ? UINT32_MAX : (uint32_t)deadline);
    }
    if (n > 0) {
        uint32_t *s = malloc((size_t)n * sizeof *s);
        if (s) {
            memcpy(s, d, (size_t)n * sizeof *s);
            qsort(s, (size_t)n, sizeof *s, cmp_u32);
            c->last_median_ms = n % 2 ? s[n / 2] : (uint32_t)(((uint64_t)s[n / 2 - 1] + s[n / 2]) / 2);
            free(s);
        }
        uint32_t med = c->last_median_ms, slack = med / 4 > 1000 ? med / 4 : 1000;
        for (int i = 0; i < c->nmem; i++) {
            const coord_member *m = &c->mem[i];
            if (!m->participant || m->state != NS(ACTIVE))
                continue;
            if (!m->announced)
                all[nall++] = (coord_straggler){m->id, deadline > med ? (uint32_t)(deadline - med) : 0, 1};
            else if (m->announced_ms > med + slack)
                all[nall++] = (coord_straggler){m->id, m->announced_ms - med, 0};
        }
        qsort(all, (size_t)nall, sizeof *all, by_behind);
        c->nstrag = nall < SPES_COORD_MAX_STRAGGLERS ? nall : SPES_COORD_MAX_STRAGGLERS;
        memcpy(c->strag, all, (size_t)c->nstrag * sizeof *all);
        if (nall) {
            char line[512];
            int at = 0;
            for (int k = 0; k < c->nstrag && at < (int)sizeof line - 96; k++) {
                const coord_member *m = coord_find_id(c, all[k].id);
                at += snprintf(line + at, sizeof line - (size_t)at, "%s%s %s", k ? ", " : "",
                               m ? m->name : "?", all[k].missed ? "missed the deadline" : "");
                if (!all[k].missed)
                    at += snprintf(line + at, sizeof line - (size_t)at, "%.1f s behind",
                                   (double)all[k].behind_ms / 1e3);
            }
            coord_log(c, SPES_LOG_INFO, "round %llu: stragglers (median announcement %.1f s): %s",
                      (unsigned long long)c->round, (double)med / 1e3, line);
        }
    }
    free(d);
    free(all);
    uint64_t next = next_deadline(c);
    if (next != deadline)
        coord_log(c, SPES_LOG_DEBUG, "round deadline %.1f s (was %.1f s)", (double)next / 1e3,
                  (double)deadline / 1e3);
    c->deadline_ms = next;
}
