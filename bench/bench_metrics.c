/* bench_metrics.c: what the metrics cost. For snapshots from a small run (3
 * members, 8 experts, 2 layers) to the largest the snapshot holds (256
 * members, 256 experts, 64 layers, a full history) it times the loop's share
 * per tick (publishing: one copy of the snapshot) and a scrape's rendering on
 * the HTTP thread (Prometheus exposition + dashboard JSON), and prints both
 * against the loop's default tick period (heartbeat_ms / 2 = 500 ms), measured
 * in the same run. usage: bench_metrics [REPEATS] */
#include "core/clock.h"
#include "metrics/metrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fill(spes_metrics_snapshot *s, int members, int E, int L, int rounds)
{
    spes_metrics_snapshot_init(s);
    snprintf(s->name, sizeof s->name, "node-0");
    s->coordinator = 1;
    s->have_control_bytes = 1;
    s->E = E;
    s->L = L;
    s->nmembers = members;
    for (int i = 0; i < members; i++) {
        spes_metrics_member *m = &s->members[i];
        m->id = (uint32_t)i;
        snprintf(m->name, sizeof m->name, "volunteer-%03d.example.org", i);
        m->state = 3;
        m->loss = 2.5 + i * 1e-3;
        m->tps = 1000 + i;
        m->have_counters = 1;
        m->cols[i % E] = 1;
    }
    for (int i = 0; i < L * E; i++)
        s->router_load[i] = 1.0 / E;
    for (int e = 0; e < E; e++)
        s->delta_norm[e] = 0.5;
    for (int r = 0; r < rounds; r++) {
        spes_metrics_round *h = spes_metrics_round_at(s, (uint64_t)r);
        h->loss = 3 - r * 0.01;
        for (int i = 0; i < members && i < SPES_METRICS_ROUND_NODES; i++)
            spes_metrics_round_node(h, s->members[i].name, 10, 2);
    }
}

static double refresh_ms(const spes_metrics_snapshot *s, int reps, size_t *bytes)
{
    double t0 = spes_mono_s();
    for (int i = 0; i < reps; i++) {
        char *p, *j;
        size_t pl, jl;
        if (spes_metrics_render_prom(s, &p, &pl) || spes_metrics_render_json(s, 0, &j, &jl))
            exit(1);
        *bytes = pl + jl;
        free(p);
        free(j);
    }
    return (spes_mono_s() - t0) * 1000 / reps;
}

static double publish_ms(const spes_metrics_snapshot *s, spes_metrics_snapshot *pub, int reps)
{
    double t0 = spes_mono_s();
    for (int i = 0; i < reps * 10; i++) {
        memcpy(pub, s, sizeof *s);
        __asm__ volatile("" ::"r"(pub) : "memory");
    }
    return (spes_mono_s() - t0) * 1000 / (reps * 10);
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    static spes_metrics_snapshot s, pub;
    static const struct {
        const char *what;
        int members, E, L, rounds;
    } cases[] = {{"3 members, E 8, L 2 (test cluster)", 3, 8, 2, 20},
                 {"64 members, E 64, L 16", 64, 64, 16, 64},
                 {"256 members, E 256, L 64 (largest)", 256, 256, 64, 64}};
    printf("snapshot size %zu bytes (copied once per tick)\n", sizeof s);
    printf("%-38s %9s %14s %14s %12s %14s\n", "snapshot", "bytes", "loop ms/tick", "of 500 ms", "scrape ms",
           "of 500 ms");
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fill(&s, cases[c].members, cases[c].E, cases[c].L, cases[c].rounds);
        size_t bytes = 0;
        double ms = refresh_ms(&s, reps, &bytes), cp = publish_ms(&s, &pub, reps);
        printf("%-38s %9zu %14.4f %13.4f%% %12.3f %13.3f%%\n", cases[c].what, bytes, cp, 100 * cp / 500, ms,
               100 * ms / 500);
    }
    return 0;
}
