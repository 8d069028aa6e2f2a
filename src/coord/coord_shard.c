/* coord_shard.c: the coordinator's side of the sharded round (docs/design.md,
 * "The sharded round"): how many shards a round has, the shards members
 * announce, the aggregator of each shard and its backups, their reports, and
 * the contributor list that every refusal narrows until the aggregates of one
 * list are in. Decisions only: tasks and acknowledgements leave as replies,
 * the commit is coord_round.c's. */
#include "coord/coord_priv.h"
#include "core/error.h"
#include "core/log.h"
#include "proto/proto.h"
#include "sync/shard.h"
#include "sync/sync.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* SHARD_TASKS_PER_REPLY bounds the tasks one heartbeat reply carries (the rest come with the next). */
#define SHARD_TASKS_PER_REPLY 8

static int reachable(const coord_member *m)
{
    return m->url[0] != '\0';
}

int coord_shards_count(const spes_coord_sm *c)
{
    if (!c->run.spes.sharded)
        return 0;
    int capable = 0;
    for (int i = 0; i < c->nmem; i++)
        capable += coord_member_active(&c->mem[i]) && reachable(&c->mem[i]);
    if (capable > SPES_COORD_MAX_SHARDS)
        capable = SPES_COORD_MAX_SHARDS;
    size_t off[SPES_SHARD_MAX + 1];
    return spes_shard_plan((size_t)c->shared_numel, capable, off);
}

int coord_shards_announce(spes_coord_sm *c, coord_member *m, const Spes__Wire__Announce *a, spes_coord_to to)
{
    if ((int)a->n_shards != c->nshards) {
        coord_reply_error(c, to, SPES_EFORMAT, SPES_MSG_ANNOUNCE,
                          "round %llu has %d shard(s); the announcement of %s names %zu",
                          (unsigned long long)c->round, c->nshards, m->name, a->n_shards);
        return -1;
    }
    if (!c->nshards)
        return 0;
    size_t off[SPES_SHARD_MAX + 1];
    spes_shard_plan((size_t)c->shared_numel, c->nshards, off);
    for (int j = 0; j < c->nshards; j++) {
        const Spes__Wire__Group *g = a->shards[j];
        size_t max = spes_group_size(SPES_CODEC_FP32, off[j + 1] - off[j]); /* fp32 is the largest codec */
        if (!g || g->blob_hash.len != 32 || g->manifest_hash.len != 32 || g->size > max) {
            coord_reply_error(c, to, SPES_ERANGE, SPES_MSG_ANNOUNCE,
                              "shard %d of %s's announcement: no hashes, or %llu bytes where at most %zu fit",
                              j, m->name, g ? (unsigned long long)g->size : 0ull, max);
            return -1;
        }
    }
    if (!m->shards && !(m->shards = calloc(SPES_COORD_MAX_SHARDS, sizeof *m->shards))) {
        coord_reply_error(c, to, SPES_ENOMEM, SPES_MSG_ANNOUNCE, "out of memory");
        return -1;
    }
    for (int j = 0; j < c->nshards; j++) {
        memcpy(m->shards[j].hash, a->shards[j]->blob_hash.data, 32);
        memcpy(m->shards[j].manifest, a->shards[j]->manifest_hash.data, 32);
        m->shards[j].size = a->shards[j]->size;
    }
    return 0;
}

/* in_list counts the contributions still in the round's list. */
static int in_list(const spes_coord_sm *c)
{
    int n = 0;
    for (int k = 0; k < c->nval; k++)
        n += !c->mem[c->val_idx[k]].out;
    return n;
}

/* own_node is the member index of the coordinator's own node, or -1. */
static int own_node(const spes_coord_sm *c)
{
    for (int i = 0; i < c->nmem; i++)
        if (!strcmp(c->mem[i].name, c->set.name) && coord_member_active(&c->mem[i]))
            return i;
    return -1;
}

/* pick chooses shard j's aggregator after `tries` others: the listed contributors that can be
 * dialled, in id order from the j-th, then the coordinator's own node, then round again. */
static int pick(const spes_coord_sm *c, int j, int tries)
{
    int cand[SPES_COORD_MAX_MEMBERS], n = 0, own = -1;
    for (int k = 0; k < c->nval; k++) {
        const coord_member *m = &c->mem[c->val_idx[k]];
        if (!m->out && reachable(m) && m->state == NS(ACTIVE))
            cand[n++] = c->val_idx[k];
    }
    own = own_node(c);
    int period = n + (own >= 0);
    if (!period)
        return -1;
    int t = tries % period;
    return t < n ? cand[(j + t) % n] : own;
}

/* mix is splitmix64's finaliser: the coordinator's stand-in for a random choice that a restart or a
 * test repeats. */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* audited marks in aud[j] the ceil(audit_fraction K) shards of the open round that a second node
 * recomputes: those whose mix of (run, round, shard) is lowest (ties: the lower shard). */
static void audited(const spes_coord_sm *c, int *aud)
{
    double f = c->run.spes.audit_fraction;
    int want = f > 0 ? (int)(f * c->nshards + 0.999999) : 0;
    uint64_t seed = 1469598103934665603ull, h[SPES_COORD_MAX_SHARDS];
    for (const char *p = c->run_id; *p; p++)
        seed = (seed ^ (uint8_t)*p) * 1099511628211ull;
    for (int i = 0; i < c->nshards; i++)
        h[i] = mix(seed ^ mix(c->round * 1024 + (uint64_t)i));
    for (int j = 0; j < c->nshards; j++) {
        int rank = 0;
        for (int i = 0; i < c->nshards; i++)
            rank += h[i] < h[j] || (h[i] == h[j] && i < j);
        aud[j] = rank < want;
    }
}

/* auditor chooses the auditor of shard j, whose aggregator is agg = pick(c, j, 0): the next
 * member in pick's order (-1: there is nobody else). */
static int auditor(const spes_coord_sm *c, int j, int agg)
{
    int a = pick(c, j, 1);
    return a != agg ? a : -1;
}

/* assign gives every shard to its first aggregator, and the audited ones to an auditor, for the
 * current attempt. */
static void assign(spes_coord_sm *c, spes_coord_now now)
{
    int aud[SPES_COORD_MAX_SHARDS];
    audited(c, aud);
    for (int j = 0; j < c->nshards; j++) {
        coord_shard *s = &c->shard[j];
        s->tries = 0;
        s->reported = 0;
        s->issued_ms = now.mono_ms;
        s->agg = pick(c, j, 0);
        s->aud = s->agg >= 0 && aud[j] ? auditor(c, j, s->agg) : -1;
        s->aud_reported = 0;
        s->aud_issued_ms = now.mono_ms;
        s->ref = -1;
        s->ref_reported = 0;
    }
}

void coord_shards_start(spes_coord_sm *c, spes_coord_now now)
{
    for (int k = 0; k < c->nval; k++) {
        coord_member *m = &c->mem[c->val_idx[k]];
        m->out = 0;
        m->why[0] = '\0';
    }
    c->checking = 1;
    c->own_checked = 0;
    c->attempt = 1;
    c->attempt_nin = c->nval;
    assign(c, now);
}

/* differs says whether shard s's aggregate and its auditor's are both in and differ. */
static int differs(const coord_shard *s)
{
    return s->aud >= 0 && s->aud_reported && s->aud_out.size && s->out.size &&
           memcmp(s->out.hash, s->aud_out.hash, 32);
}

/* ask_referee asks the coordinator's own node to recompute every shard whose aggregator and
 * auditor differ, unless it is one of the two (then its word stands); 1 if the round must wait. */
static int ask_referee(spes_coord_sm *c, spes_coord_now now)
{
    int own = own_node(c), wait = 0;
    for (int j = 0; j < c->nshards; j++) {
        coord_shard *s = &c->shard[j];
        if (!differs(s) || own < 0 || own == s->agg || own == s->aud)
            continue;
        if (s->ref < 0) {
            s->ref = own;
            s->ref_reported = 0;
            s->ref_issued_ms = now.mono_ms;
            coord_log(
                c, SPES_LOG_WARN, "round %llu: shard %d: %s and its auditor %s differ; %s recomputes it",
                (unsigned long long)c->round, j, c->mem[s->agg].name, c->mem[s->aud].name, c->mem[own].name);
        }
        wait |= !s->ref_reported;
    }
    return wait;
}

/* judge_audits settles every audited shard: where aggregator and auditor differ, the coordinator's
 * own node's aggregate (its own, or the one it recomputed) is used, else the auditor's; whoever
 * differs from what is used is named in status (docs/design.md, "The sharded round"). */
static void judge_audits(spes_coord_sm *c)
{
    int own = own_node(c);
    c->last_audited = 0;
    c->nlast_audit_mismatch = 0;
    for (int j = 0; j < c->nshards; j++) {
        coord_shard *s = &c->shard[j];
        c->last_audited += s->aud >= 0 && s->aud_reported && s->aud_out.size && s->out.size;
        if (!differs(s))
            continue;
        int agg = s->agg, aud = s->aud, use = aud; /* the auditor's, when nobody else can tell */
        const coord_group *g = &s->aud_out;
        if (own == agg) {
            use = agg, g = &s->out;
        } else if (s->ref >= 0 && s->ref_reported && s->ref_out.size) {
            use = own, g = &s->ref_out;
        }
        for (int k = 0; k < 2; k++) {
            int who = k ? aud : agg;
            const coord_group *w = k ? &s->aud_out : &s->out;
            if (memcmp(w->hash, g->hash, 32) && c->nlast_audit_mismatch < SPES_COORD_MAX_SHARDS)
                c->last_audit_mismatch[c->nlast_audit_mismatch++] = c->mem[who].id;
        }
        coord_log(
            c, SPES_LOG_ERROR,
            "AUDIT MISMATCH: round %llu, shard %d: %s and its auditor %s differ; %s's aggregate is used",
            (unsigned long long)c->round, j, c->mem[agg].name, c->mem[aud].name, c->mem[use].name);
        s->out = *g;
        s->agg = use;
    }
}

/* seal commits the round once one list's aggregates are all in (or the list is empty). */
static void seal(spes_coord_sm *c, spes_coord_now now)
{
    size_t n = (size_t)(c->nval ? c->nval : 1);
    int *ok = calloc(n, sizeof *ok);
    char(*why)[256] = calloc(n, sizeof *why);
    if (!ok || !why) {
        free(ok);
        free(why);
        coord_log(c, SPES_LOG_ERROR, "round %llu: cannot commit: out of memory",
                  (unsigned long long)c->round);
        return;
    }
    for (int k = 0; k < c->nval; k++) {
        const coord_member *m = &c->mem[c->val_idx[k]];
        ok[k] = m->out == 0 ? 1 : m->out == COORD_OUT_REFUSED ? 0 : -1;
        snprintf(why[k], sizeof why[k], "%s", m->why);
    }
    c->checking = 0;
    judge_audits(c);
    coord_commit_round(c, now, ok, why);
    free(ok);
    free(why);
}

/* progress starts another attempt as soon as the list shrank (results for the older list are
 * then stale), and commits once the own node's check is in and every shard's aggregate of one
 * list is, or when the list is empty. */
static void progress(spes_coord_sm *c, spes_coord_now now)
{
    if (!c->checking)
        return;
    int nin = in_list(c);
    if (nin < c->attempt_nin) { /* refused or left out since this list was handed out */
        c->attempt++;
        c->attempt_nin = nin;
        if (nin) {
            coord_log(c, SPES_LOG_INFO,
                      "round %llu: %d contribution(s) left; their shards are averaged again",
                      (unsigned long long)c->round, nin);
            assign(c, now);
        }
    }
    if (!c->own_checked)
        return;
    for (int j = 0; j < c->nshards && nin; j++)
        if (!c->shard[j].reported || (c->shard[j].aud >= 0 && !c->shard[j].aud_reported))
            return;
    if (nin && ask_referee(c, now))
        return;
    seal(c, now);
}

void coord_shards_checked(spes_coord_sm *c, spes_coord_now now, const int *ok, char (*reasons)[256])
{
    for (int k = 0; k < c->nval; k++) {
        coord_member *m = &c->mem[c->val_idx[k]];
        if (!ok[k] && !m->out) {
            m->out = COORD_OUT_REFUSED;
            snprintf(m->why, sizeof m->why, "%s", reasons[k]);
        }
    }
    c->own_checked = 1;
    progress(c, now);
}

/* task_inputs fills shard j's inputs (the listed contributions, in id order) into in/gp/ip. */
static size_t task_inputs(const spes_coord_sm *c, int j, Spes__Wire__ShardInput *in, Spes__Wire__Group *g,
                          Spes__Wire__ShardInput **ip)
{
    size_t n = 0;
    for (int k = 0; k < c->nval; k++) {
        const coord_member *m = &c->mem[c->val_idx[k]];
        if (m->out || !m->shards)
            continue;
        spes__wire__group__init(&g[n]);
        g[n].blob_hash = (ProtobufCBinaryData){32, (uint8_t *)m->shards[j].hash};
        g[n].manifest_hash = (ProtobufCBinaryData){32, (uint8_t *)m->shards[j].manifest};
        g[n].size = m->shards[j].size;
        spes__wire__shard_input__init(&in[n]);
        in[n].node_id = m->id;
        in[n].blob = &g[n];
        in[n].name = (char *)m->name;
        in[n].listen_url = (char *)m->url;
        ip[n] = &in[n];
        n++;
    }
    return n;
}

int coord_shards_task(spes_coord_sm *c, const coord_member *m, spes_coord_to to)
{
    if (!c->checking)
        return 0;
    int idx = (int)(m - c->mem), js[SHARD_TASKS_PER_REPLY], nt = 0;
    for (int j = 0; j < c->nshards && nt < SHARD_TASKS_PER_REPLY; j++)
        if ((c->shard[j].agg == idx && !c->shard[j].reported) ||
            (c->shard[j].aud == idx && !c->shard[j].aud_reported) ||
            (c->shard[j].ref == idx && !c->shard[j].ref_reported))
            js[nt++] = j;
    if (!nt)
        return 0;
    size_t nl = (size_t)(c->nval ? c->nval : 1) * (size_t)nt;
    Spes__Wire__ShardInput *in = calloc(nl, sizeof *in), **ip = calloc(nl, sizeof *ip);
    Spes__Wire__Group *g = calloc(nl, sizeof *g);
    Spes__Wire__ShardTask tv[SHARD_TASKS_PER_REPLY], *tp[SHARD_TASKS_PER_REPLY];
    if (!in || !ip || !g) {
        free(in);
        free(ip);
        free(g);
        return 0; /* the next heartbeat asks again */
    }
    Spes__Wire__AggregateTask t = SPES__WIRE__AGGREGATE_TASK__INIT;
    t.round = c->round;
    t.shards = (uint32_t)c->nshards;
    t.base_hash = (ProtobufCBinaryData){32, c->state_hash};
    size_t at = 0;
    for (int k = 0; k < nt; k++) {
        spes__wire__shard_task__init(&tv[k]);
        tv[k].shard = (uint32_t)js[k];
        tv[k].attempt = c->attempt;
        tv[k].inputs = ip + at;
        tv[k].n_inputs = task_inputs(c, js[k], in + at, g + at, ip + at);
        at += tv[k].n_inputs;
        tp[k] = &tv[k];
    }
    t.tasks = tp;
    t.n_tasks = (size_t)nt;
    coord_reply_msg(c, to, SPES_MSG_AGGREGATE_TASK, &t.base);
    free(in);
    free(ip);
    free(g);
    return 1;
}

/* result_ok checks one shard result against the task it answers: -1 if it is not for the current
 * attempt of a shard m aggregates (stale: no harm), else whether its verdicts name the list. */
static int result_ok(spes_coord_sm *c, int idx, const Spes__Wire__ShardResult *r, char *err, size_t cap)
{
    if (r->shard >= (uint32_t)c->nshards) {
        snprintf(err, cap, "shard %u of %d", r->shard, c->nshards);
        return 0;
    }
    const coord_shard *s = &c->shard[r->shard];
    int role = s->agg == idx && !s->reported       ? 1
               : s->aud == idx && !s->aud_reported ? 2
               : s->ref == idx && !s->ref_reported ? 3
                                                   : 0;
    if (!role || r->attempt != c->attempt)
        return -1;
    size_t n = 0;
    int all = 1;
    for (int k = 0; k < c->nval; k++) {
        const coord_member *m = &c->mem[c->val_idx[k]];
        if (m->out)
            continue;
        if (n >= r->n_verdicts || r->verdicts[n]->node_id != m->id) {
            snprintf(err, cap, "shard %u: the verdicts do not name the task's inputs in order", r->shard);
            return 0;
        }
        all &= r->verdicts[n++]->ok;
    }
    if (n != r->n_verdicts) {
        snprintf(err, cap, "shard %u: %zu verdicts for %zu inputs", r->shard, r->n_verdicts, n);
        return 0;
    }
    size_t off[SPES_SHARD_MAX + 1];
    spes_shard_plan((size_t)c->shared_numel, c->nshards, off);
    const Spes__Wire__Group *a = r->aggregate;
    if (all && (!a || a->blob_hash.len != 32 || a->manifest_hash.len != 32 ||
                a->size > spes_group_size(SPES_CODEC_FP32, off[r->shard + 1] - off[r->shard]))) {
        snprintf(err, cap, "shard %u: every input passed but the aggregate is missing or too large",
                 r->shard);
        return 0;
    }
    return role;
}

/* take_result records a checked result of m, the shard's aggregator (role 1), auditor (2) or
 * referee (3). */
static void take_result(spes_coord_sm *c, const coord_member *m, const Spes__Wire__ShardResult *r, int role)
{
    coord_shard *s = &c->shard[r->shard];
    int all = 1;
    for (size_t v = 0; v < r->n_verdicts; v++) {
        const Spes__Wire__InputVerdict *iv = r->verdicts[v];
        if (iv->ok)
            continue;
        all = 0;
        coord_member *x = coord_find_id(c, iv->node_id);
        if (!x || x->out)
            continue;
        x->out = iv->missing ? COORD_OUT_LATE : COORD_OUT_REFUSED;
        snprintf(x->why, sizeof x->why, "shard %u (checked by %s): %s", r->shard, m->name, iv->reason);
        coord_log(c, iv->missing ? SPES_LOG_WARN : SPES_LOG_ERROR, "round %llu: %s %s: %s",
                  (unsigned long long)c->round, x->name, iv->missing ? "is left out" : "is refused", x->why);
    }
    coord_group *g = role == 1 ? &s->out : role == 2 ? &s->aud_out : &s->ref_out;
    *(role == 1 ? &s->reported : role == 2 ? &s->aud_reported : &s->ref_reported) = 1;
    memset(g, 0, sizeof *g);
    if (all) {
        memcpy(g->hash, r->aggregate->blob_hash.data, 32);
        memcpy(g->manifest, r->aggregate->manifest_hash.data, 32);
        g->size = r->aggregate->size;
    }
}

void coord_aggregate_report(spes_coord_sm *c, spes_coord_now now, const Spes__Wire__AggregateReport *r,
                            const spes_pki_identity *peer, spes_coord_to to)
{
    coord_member *m = coord_find_id(c, r->node_id);
    if (!m || (peer->name[0] && strcmp(m->name, peer->name))) {
        coord_reply_error(c, to, SPES_EAUTH, SPES_MSG_AGGREGATE_REPORT, "node id %u is not %s", r->node_id,
                          peer->name);
        return;
    }
    coord_member_seen(m, now);
    if (!c->checking || r->round != c->round) {
        coord_reply_ack(c, to, "no longer wanted"); /* a backup took it, or the round committed */
        return;
    }
    int idx = (int)(m - c->mem), ok[SHARD_TASKS_PER_REPLY * 2];
    char err[256];
    if (r->n_results > SHARD_TASKS_PER_REPLY * 2) {
        coord_reply_error(c, to, SPES_ERANGE, SPES_MSG_AGGREGATE_REPORT, "%zu results: at most %d",
                          r->n_results, SHARD_TASKS_PER_REPLY * 2);
        return;
    }
    for (size_t i = 0; i < r->n_results; i++) /* all or nothing: a bad result refuses the report */
        if (!(ok[i] = result_ok(c, idx, r->results[i], err, sizeof err))) {
            coord_log(c, SPES_LOG_WARN, "round %llu: aggregate report of %s refused: %s",
                      (unsigned long long)c->round, m->name, err);
            coord_reply_error(c, to, SPES_EFORMAT, SPES_MSG_AGGREGATE_REPORT, "%s", err);
            return;
        }
    for (size_t i = 0; i < r->n_results; i++)
        if (ok[i] > 0)
            take_result(c, m, r->results[i], ok[i]);
    coord_reply_ack(c, to, "reported");
    progress(c, now);
}

void coord_shards_tick(spes_coord_sm *c, spes_coord_now now)
{
    if (!c->checking)
        return;
    uint64_t limit = coord_deadline(c);
    for (int j = 0; j < c->nshards; j++) {
        coord_shard *s = &c->shard[j];
        if (s->aud >= 0 && !s->aud_reported &&
            (!coord_member_active(&c->mem[s->aud]) || now.mono_ms - s->aud_issued_ms > limit)) {
            coord_log(c, SPES_LOG_WARN,
                      "round %llu: shard %d's auditor %s did not report; the shard goes unaudited",
                      (unsigned long long)c->round, j, c->mem[s->aud].name);
            s->aud = -1; /* an audit never holds a round up past its deadline */
        }
        if (s->ref >= 0 && !s->ref_reported && now.mono_ms - s->ref_issued_ms > limit) {
            coord_log(c, SPES_LOG_WARN, "round %llu: shard %d's recomputation by %s did not come",
                      (unsigned long long)c->round, j, c->mem[s->ref].name);
            s->ref_reported = 1; /* the auditor's aggregate is used */
        }
        int gone = s->agg < 0 || !coord_member_active(&c->mem[s->agg]);
        if (s->reported || (!gone && now.mono_ms - s->issued_ms <= limit))
            continue;
        int was = s->agg;
        s->agg = pick(c, j, ++s->tries);
        s->issued_ms = now.mono_ms;
        coord_log(c, SPES_LOG_WARN, "round %llu: shard %d's aggregator %s %s; %s takes it over",
                  (unsigned long long)c->round, j, was >= 0 ? c->mem[was].name : "(none)",
                  gone ? "is gone" : "missed its deadline", s->agg >= 0 ? c->mem[s->agg].name : "nobody");
        if (s->aud == s->agg)
            s->aud = -1; /* the backup is its auditor: nobody is left to compare with */
    }
    progress(c, now); /* a dropped audit may have been all the round waited for */
}
