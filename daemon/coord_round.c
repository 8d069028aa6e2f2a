/* coord_round.c: the coordinator's round machinery: announcements, the
 * deadline, validation by the coordinator's own node, the commit, digests. */
#include "core/error.h"
#include "core/fileio.h"
#include "core/log.h"
#include "core/sha256.h"
#include "daemon/coord_state.h"
#include "daemon/node.h"
#include "merge/merge.h"
#include "proto/proto.h"

#include <stdlib.h>
#include <string.h>

#include "core/nodestate.h"

static void start_validation(spes_coord *c)
{
    static uint8_t hashes[COORD_MAX_MEMBERS][32], manifests[COORD_MAX_MEMBERS][32];
    const char *urls[COORD_MAX_MEMBERS], *names[COORD_MAX_MEMBERS];
    c->nval = 0;
    for (int i = 0; i < c->nmem; i++) /* members are stored in id order */
        if (c->mem[i].participant && c->mem[i].announced) {
            c->val_idx[c->nval] = i;
            memcpy(hashes[c->nval], c->mem[i].blob, 32);
            memcpy(manifests[c->nval], c->mem[i].manifest, 32);
            urls[c->nval] = c->mem[i].url;
            names[c->nval] = c->mem[i].name;
            c->nval++;
        }
    c->validating = 1;
    log_info("round %llu: checking %d contribution(s)", (unsigned long long)c->round, c->nval);
    if (spes_node_validate(c->d->node, c->round, c->nval, (const uint8_t(*)[32])hashes,
                           (const uint8_t(*)[32])manifests, urls, names) != 0) {
        log_error("round %llu: cannot start validation: %s", (unsigned long long)c->round, spes_errmsg());
        c->validating = 0;
    }
}

static void fill_peers(spes_coord *c, Spes__Wire__Peer *pv, Spes__Wire__Peer **pp, size_t *np)
{
    *np = 0;
    for (int i = 0; i < c->nmem; i++) {
        if (!coord_member_active(&c->mem[i]))
            continue;
        spes__wire__peer__init(&pv[*np]);
        pv[*np].node_id = c->mem[i].id;
        pv[*np].name = c->mem[i].name;
        pv[*np].listen_url = c->mem[i].url;
        pp[*np] = &pv[*np];
        (*np)++;
    }
}

static void build_commit(spes_coord *c, const int *ok, char (*reasons)[256], uint64_t step_end)
{
    static Spes__Wire__Contribution cv[COORD_MAX_MEMBERS];
    static Spes__Wire__Contribution *cp[COORD_MAX_MEMBERS];
    static Spes__Wire__Refusal rv[COORD_MAX_MEMBERS];
    static Spes__Wire__Refusal *rp[COORD_MAX_MEMBERS];
    static Spes__Wire__ColumnAssignment av[COORD_MAX_MEMBERS];
    static Spes__Wire__ColumnAssignment *ap[COORD_MAX_MEMBERS];
    static Spes__Wire__Peer pv[COORD_MAX_MEMBERS];
    static Spes__Wire__Peer *pp[COORD_MAX_MEMBERS];
    Spes__Wire__Commit cm = SPES__WIRE__COMMIT__INIT;
    cm.round = c->round;
    if (c->state_hash_known) /* nodes whose S_round differs must not apply this to theirs */
        cm.base_hash = (ProtobufCBinaryData){32, c->state_hash};
    c->nlast_refused = 0;
    for (int k = 0; k < c->nval; k++) {
        coord_member *m = &c->mem[c->val_idx[k]];
        if (ok[k]) {
            spes__wire__contribution__init(&cv[cm.n_contributions]);
            cv[cm.n_contributions].node_id = m->id;
            cv[cm.n_contributions].blob_hash = (ProtobufCBinaryData){32, m->blob};
            cv[cm.n_contributions].size = m->blob_size;
            cv[cm.n_contributions].manifest_hash = (ProtobufCBinaryData){32, m->manifest};
            cv[cm.n_contributions].tokens_trained = m->tokens;
            cp[cm.n_contributions] = &cv[cm.n_contributions];
            cm.n_contributions++;
        } else {
            spes__wire__refusal__init(&rv[cm.n_refused]);
            rv[cm.n_refused].node_id = m->id;
            rv[cm.n_refused].reason = reasons[k];
            rp[cm.n_refused] = &rv[cm.n_refused];
            cm.n_refused++;
            if (c->nlast_refused < 8) {
                char line[256];
                snprintf(line, sizeof line, "%s: %s", m->name, reasons[k]);
                memcpy(c->last_refused[c->nlast_refused++], line, sizeof line);
            }
            log_error("round %llu: contribution of %s refused: %s", (unsigned long long)c->round, m->name, reasons[k]);
        }
    }
    cm.contributions = cp;
    cm.refused = rp;
    cm.merge_applied = spes_merge_alpha(&c->run.spes, (int64_t)step_end) > 0;
    cm.next_step = step_end;
    coord_rebalance(c);
    static uint32_t colbuf[COORD_MAX_MEMBERS][1024];
    for (int i = 0; i < c->nmem; i++) {
        coord_member *m = &c->mem[i];
        if (!coord_member_active(m))
            continue;
        Spes__Wire__ColumnAssignment *a = &av[cm.n_assignment];
        spes__wire__column_assignment__init(a);
        a->node_id = m->id;
        a->columns = colbuf[i];
        a->n_columns = coord_cols_fill(m->cols, c->E < 1024 ? c->E : 1024, colbuf[i]);
        ap[cm.n_assignment++] = a;
    }
    cm.assignment = ap;
    fill_peers(c, pv, pp, &cm.n_peers);
    cm.peers = pp;
    cm.next_deadline_ms = (uint32_t)c->d->cfg.round_deadline_ms;
    cm.checkpoint_id = c->pending_ckpt;
    free(c->last_commit);
    c->last_commit = NULL;
    if (spes_proto_encode(SPES_MSG_COMMIT, &cm.base, &c->last_commit, &c->last_commit_len) != 0) {
        log_error("round %llu: cannot encode the commit: %s", (unsigned long long)c->round, spes_errmsg());
    } else {
        char path[700];
        snprintf(path, sizeof path, "%.600s/last_commit.bin", c->d->cfg.state_dir);
        if (spes_write_file_atomic(path, c->last_commit, c->last_commit_len) != 0)
            log_error("the commit of round %llu is not saved: %s", (unsigned long long)c->round, spes_errmsg());
    }
    c->last_contributors = (uint32_t)cm.n_contributions;
    c->last_merge = cm.merge_applied;
    c->pending_ckpt[0] = '\0'; /* it is in this commit now */
}

void spes_coord_validated(spes_coord *c, uint64_t round, int n, const int *ok, char (*reasons)[256])
{
    if (round != c->round || !c->validating || n != c->nval)
        return;
    uint64_t step_end = c->step + (uint64_t)c->run.spes.sync_interval;
    build_commit(c, ok, reasons, step_end);
    log_info("round %llu committed: %u contribution(s)%s", (unsigned long long)c->round, c->last_contributors,
             c->last_merge ? ", merge warm-up applied" : "");
    c->last_commit_ms = spes_now_ms();
    c->nmismatch = 0;
    for (int i = 0; i < c->nmem; i++)
        if (c->mem[i].state == NS(JOINING))
            c->mem[i].state = NS(ACTIVE);
    memcpy(c->prev_hash, c->state_hash, 32);
    c->prev_known = c->state_hash_known;
    c->round++;
    c->step = step_end;
    c->state_hash_known = 0;
    coord_open_round(c);
    if (c->step >= (uint64_t)c->run.train.max_steps)
        log_info("the run is complete: %llu steps (train.max_steps)", (unsigned long long)c->step);
    if (coord_save(c) != 0)
        log_error("coordinator state not saved: %s", spes_errmsg());
}

void coord_announce(spes_coord *c, const Spes__Wire__Announce *a, const spes_pki_identity *peer,
                    spes_reply_fn reply, void *ctx)
{
    coord_member *m = coord_find_id(c, a->node_id);
    if (!m || (peer->name[0] && strcmp(m->name, peer->name))) {
        spes_daemon_reply_error(reply, ctx, SPES_EAUTH, SPES_MSG_ANNOUNCE, "node id %u is not %s", a->node_id,
                                peer->name);
        return;
    }
    if (a->round != c->round || !m->participant || c->validating) {
        spes_daemon_reply_error(reply, ctx, SPES_ESTATE, SPES_MSG_ANNOUNCE,
                                "round %llu is not open for %s (open round %llu%s)", (unsigned long long)a->round,
                                m->name, (unsigned long long)c->round,
                                !m->participant ? ", not a participant" : c->validating ? ", closing" : "");
        return;
    }
    /* a contribution is at most a header, E column ids and every value in fp32 */
    uint64_t max = 64 + 4 * (uint64_t)c->E + 4 * (c->shared_numel + (uint64_t)c->E * c->column_numel);
    if (a->size > max) {
        spes_daemon_reply_error(reply, ctx, SPES_ERANGE, SPES_MSG_ANNOUNCE,
                                "a contribution of %llu bytes exceeds the %llu bytes this model allows",
                                (unsigned long long)a->size, (unsigned long long)max);
        return;
    }
    memcpy(m->blob, a->blob_hash.data, 32);
    memcpy(m->manifest, a->manifest_hash.data, 32);
    m->blob_size = a->size;
    m->tokens = a->tokens_trained;
    m->blob_loss = a->loss ? a->loss->mean : 0;
    m->announced = 1;
    coord_member_seen(m);
    coord_reply_ack(reply, ctx, "announced");
    int all = 1;
    for (int i = 0; i < c->nmem; i++)
        if (c->mem[i].participant && !c->mem[i].announced && c->mem[i].state == NS(ACTIVE))
            all = 0;
    if (all)
        start_validation(c);
}

/* check_digest records m as mismatched if its digest of the open round is not the agreed one. */
static void check_digest(spes_coord *c, coord_member *m)
{
    if (!memcmp(m->digest, c->state_hash, 32))
        return;
    char hex[65];
    spes_hex_encode(m->digest, 32, hex);
    log_error("DIGEST MISMATCH: %s reports %.16s for round %llu", m->name, hex, (unsigned long long)c->round);
    for (int i = 0; i < c->nmismatch; i++)
        if (c->mismatch[i] == m->id)
            return;
    if (c->nmismatch < COORD_MAX_MEMBERS)
        c->mismatch[c->nmismatch++] = m->id;
}

void coord_digest(spes_coord *c, const Spes__Wire__Digest *g, const spes_pki_identity *peer, spes_reply_fn reply,
                  void *ctx)
{
    coord_member *m = coord_find_id(c, g->node_id);
    if (!m || (peer->name[0] && strcmp(m->name, peer->name))) {
        spes_daemon_reply_error(reply, ctx, SPES_EAUTH, SPES_MSG_DIGEST, "node id %u is not %s", g->node_id,
                                peer->name);
        return;
    }
    memcpy(m->digest, g->state_hash.data, 32);
    m->digest_round = g->round;
    coord_member_seen(m);
    char hex[65];
    spes_hex_encode(m->digest, 32, hex);
    if (!strcmp(m->name, c->d->cfg.name) && g->round == c->round && !c->state_hash_known) {
        memcpy(c->state_hash, m->digest, 32);
        c->state_hash_known = 1;
        if (coord_save(c) != 0)
            log_error("coordinator state not saved: %s", spes_errmsg());
        log_info("round %llu: agreed state digest %.16s", (unsigned long long)g->round, hex);
    }
    if (g->checkpoint_id[0])
        coord_checkpoint_saved(c, m, g->checkpoint_id, m->digest);
    coord_reply_ack(reply, ctx, "digest recorded");
    if (!c->state_hash_known || g->round != c->round)
        return;
    if (!strcmp(m->name, c->d->cfg.name)) {
        /* the agreed digest is known only now: judge those that reported before it */
        for (int i = 0; i < c->nmem; i++)
            if (&c->mem[i] != m && c->round > 0 && c->mem[i].digest_round == c->round) /* 0: none */
                check_digest(c, &c->mem[i]);
    } else {
        check_digest(c, m);
    }
}

/* later_by is t moved on by stall, but never past now. */
static uint64_t later_by(uint64_t t, uint64_t stall, uint64_t now)
{
    return t + stall < now ? t + stall : now; /* a heartbeat handled after the stall is at now */
}

/* forgive_stall moves every deadline on by the time this daemon itself did
 * not run (the tick is periodic, so a longer gap means the loop was blocked:
 * a slow fsync, an overloaded or suspended machine). Heartbeats that arrived
 * meanwhile wait in the inbox, which runs after the timers; without this the
 * coordinator would blame every member, itself included, for its own stall.
 * (Cassandra's failure detector skips its local pauses the same way.) */
static void forgive_stall(spes_coord *c, uint64_t now)
{
    uint64_t period = spes_daemon_tick_ms(c->d->cfg.heartbeat_ms);
    uint64_t last = c->last_tick_ms;
    c->last_tick_ms = now;
    if (!last || now - last <= period)
        return;
    uint64_t stall = now - last - period;
    if (stall >= 1000)
        log_warnx("coordinator: this daemon did not run for %llu ms (a slow disk or an overloaded machine); "
                  "heartbeat and round deadlines are moved on by that",
                  (unsigned long long)stall);
    for (int i = 0; i < c->nmem; i++)
        if (c->mem[i].seen_mono_ms)
            c->mem[i].seen_mono_ms = later_by(c->mem[i].seen_mono_ms, stall, now);
    c->round_open_ms = later_by(c->round_open_ms, stall, now);
    c->started_ms = later_by(c->started_ms, stall, now);
}

void spes_coord_tick(spes_coord *c)
{
    uint64_t now = spes_mono_ms();
    forgive_stall(c, now);
    int nact = 0, nparticipants = 0;
    for (int i = 0; i < c->nmem; i++) {
        coord_member *m = &c->mem[i];
        if (coord_member_active(m) && m->seen_mono_ms && now - m->seen_mono_ms > (uint64_t)c->d->cfg.failure_timeout_ms) {
            log_warnx("%s missed its heartbeats for %llu ms: marked failed", m->name,
                      (unsigned long long)(now - m->seen_mono_ms));
            m->state = NS(FAILED);
            coord_save(c);
        }
        nact += m->state == NS(ACTIVE);
        nparticipants += m->participant && m->state == NS(ACTIVE);
    }
    if (c->validating)
        return;
    if (nparticipants == 0 && c->step >= (uint64_t)c->run.train.max_steps)
        return; /* the run is complete */
    if (nparticipants == 0) {
        /* a fresh run waits for min_nodes; a restarted coordinator for the
         * members it had, or for failure_timeout_ms, whichever comes first */
        int target = c->round == 0 ? c->d->cfg.min_nodes : c->restored_active;
        if (now - c->started_ms > (uint64_t)c->d->cfg.failure_timeout_ms)
            target = 1;
        if (nact >= (target > 0 ? target : 1) && c->state_hash_known)
            coord_open_round(c);
        return;
    }
    int all = 1;
    for (int i = 0; i < c->nmem; i++)
        if (c->mem[i].participant && c->mem[i].state == NS(ACTIVE) && !c->mem[i].announced)
            all = 0;
    if (all && coord_any_announced(c)) {
        start_validation(c);
    } else if (now - c->round_open_ms > (uint64_t)c->d->cfg.round_deadline_ms) {
        if (coord_any_announced(c)) {
            log_warnx("round %llu: deadline passed; committing without the missing nodes", (unsigned long long)c->round);
            start_validation(c);
        } else {
            c->round_open_ms = now;
        }
    }
}
