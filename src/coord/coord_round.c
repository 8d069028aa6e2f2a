/* coord_round.c: the coordinator's round machinery: announcements, the
 * deadline, validation by the coordinator's own node, the commit, digests,
 * failure detection. Decisions only: the checks, the commit's bytes and the
 * persists leave as queued actions. */
#include "coord/coord_priv.h"
#include "core/error.h"
#include "core/log.h"
#include "core/sha256.h"
#include "merge/merge.h"
#include "proto/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* start_validation asks the own node to check every announced contribution of the open round
 * (in a sharded round, their columns, while aggregators check the shards). */
static void start_validation(spes_coord_sm *c, spes_coord_now now)
{
    c->nval = 0;
    for (int i = 0; i < c->nmem; i++) /* members are stored in id order */
        if (c->mem[i].participant && c->mem[i].announced)
            c->val_idx[c->nval++] = i;
    spes_coord_action a = {.kind = SPES_COORD_VALIDATE, .round = c->round};
    size_t n = (size_t)c->nval ? (size_t)c->nval : 1;
    a.hashes = malloc(n * 32);
    a.manifests = malloc(n * 32);
    a.urls = calloc(n, sizeof *a.urls);
    a.names = calloc(n, sizeof *a.names);
    a.ids = calloc(n, sizeof *a.ids);
    a.cols = calloc(n, (size_t)c->E);
    if (!a.hashes || !a.manifests || !a.urls || !a.names || !a.ids || !a.cols)
        goto fail;
    for (a.n = 0; a.n < c->nval; a.n++) {
        const coord_member *m = &c->mem[c->val_idx[a.n]];
        memcpy(a.hashes[a.n], m->blob, 32);
        memcpy(a.manifests[a.n], m->manifest, 32);
        a.ids[a.n] = m->id;
        memcpy(a.cols + (size_t)a.n * (size_t)c->E, m->cur, (size_t)c->E); /* what it was told to train */
        a.urls[a.n] = strdup(m->url);
        a.names[a.n] = strdup(m->name);
        if (!a.urls[a.n] || !a.names[a.n]) {
            a.n++;
            goto fail;
        }
    }
    c->validating = 1;
    if (c->val_said_n != c->nval || c->val_said_round != c->round)
        coord_log(c, SPES_LOG_INFO, "round %llu: checking %d contribution(s)", (unsigned long long)c->round,
                  c->nval);
    c->val_said_round = c->round;
    c->val_said_n = c->nval;
    if (coord_push(c, &a) != 0)
        c->validating = 0;
    else if (c->nshards)
        coord_shards_start(c, now);
    return;
fail:
    spes_coord_action_fini(&a);
    coord_log(c, SPES_LOG_ERROR, "round %llu: cannot start validation: out of memory",
              (unsigned long long)c->round);
}

void spes_coord_sm_validation_failed(spes_coord_sm *c, uint64_t round)
{
    if (round == c->round)
        c->validating = 0;
}

/* commit_record records the validated contributions and refusals of the open round in cm
 * (arrays cv/cp for n contributions, rv/rp for refusals) and in the last round's status. */
static void commit_record(spes_coord_sm *c, Spes__Wire__Commit *cm, const int *ok, char (*reasons)[256],
                          Spes__Wire__Contribution *cv, Spes__Wire__Contribution **cp,
                          Spes__Wire__Refusal *rv, Spes__Wire__Refusal **rp)
{
    c->nlast_refused = 0;
    for (int k = 0; k < c->nval; k++) {
        coord_member *m = &c->mem[c->val_idx[k]];
        if (ok[k] < 0) /* left out: late (its residual waits for the next round) */
            continue;
        if (ok[k]) {
            Spes__Wire__Contribution *x = &cv[cm->n_contributions];
            spes__wire__contribution__init(x);
            x->node_id = m->id;
            x->blob_hash = (ProtobufCBinaryData){32, m->blob};
            x->size = m->blob_size;
            x->manifest_hash = (ProtobufCBinaryData){32, m->manifest};
            x->tokens_trained = m->tokens;
            cp[cm->n_contributions++] = x;
        } else {
            Spes__Wire__Refusal *x = &rv[cm->n_refused];
            spes__wire__refusal__init(x);
            x->node_id = m->id;
            x->reason = reasons[k];
            rp[cm->n_refused++] = x;
            if (c->nlast_refused < SPES_COORD_MAX_REFUSED) {
                c->last_refused_id[c->nlast_refused] = m->id;
                snprintf(c->last_refused[c->nlast_refused++], sizeof c->last_refused[0], "%s: %s", m->name,
                         reasons[k]);
            }
            coord_log(c, SPES_LOG_ERROR, "round %llu: contribution of %s refused: %s",
                      (unsigned long long)c->round, m->name, reasons[k]);
        }
    }
    cm->contributions = cp;
    cm->refused = rp;
}

/* encode_commit encodes the Commit of the open round (contributions, refusals, the next
 * round's columns as dealt now, peers, checkpoint) into c->last_commit. */
static int encode_commit(spes_coord_sm *c, const int *ok, char (*reasons)[256], uint64_t step_end)
{
    size_t nm = (size_t)(c->nmem ? c->nmem : 1), E = (size_t)(c->E ? c->E : 1);
    Spes__Wire__Commit cm = SPES__WIRE__COMMIT__INIT;
    Spes__Wire__Contribution *cv = calloc(nm, sizeof *cv), **cp = calloc(nm, sizeof *cp);
    Spes__Wire__Refusal *rv = calloc(nm, sizeof *rv), **rp = calloc(nm, sizeof *rp);
    Spes__Wire__ColumnAssignment *av = calloc(nm, sizeof *av), **ap = calloc(nm, sizeof *ap);
    Spes__Wire__Peer *pv = calloc(nm, sizeof *pv), **pp = calloc(nm, sizeof *pp);
    uint32_t *colbuf = calloc(nm * E, sizeof *colbuf);
    int rc = SPES_ENOMEM;
    if (!cv || !cp || !rv || !rp || !av || !ap || !pv || !pp || !colbuf)
        goto out;
    cm.round = c->round;
    if (c->state_hash_known) /* nodes whose S_round differs must not apply this to theirs */
        cm.base_hash = (ProtobufCBinaryData){32, c->state_hash};
    commit_record(c, &cm, ok, reasons, cv, cp, rv, rp);
    cm.merge_applied = spes_merge_alpha(&c->run.spes, c->run.train.max_steps, (int64_t)step_end) > 0;
    cm.next_step = step_end;
    for (int i = 0; i < c->nmem; i++) {
        coord_member *m = &c->mem[i];
        if (!coord_member_active(m))
            continue;
        Spes__Wire__ColumnAssignment *a = &av[cm.n_assignment];
        spes__wire__column_assignment__init(a);
        a->node_id = m->id;
        a->columns = colbuf + (size_t)i * E;
        a->n_columns = coord_train_cols_fill(c, i, a->columns); /* what it trains next */
        ap[cm.n_assignment++] = a;
        Spes__Wire__Peer *p = &pv[cm.n_peers];
        spes__wire__peer__init(p);
        p->node_id = m->id;
        p->name = m->name;
        p->listen_url = m->url;
        pp[cm.n_peers++] = p;
    }
    cm.assignment = ap;
    cm.peers = pp;
    cm.next_deadline_ms = (uint32_t)coord_deadline(c);
    cm.checkpoint_id = c->pending_ckpt;
    Spes__Wire__Aggregate agv[SPES_COORD_MAX_SHARDS], *agp[SPES_COORD_MAX_SHARDS];
    Spes__Wire__Group grv[SPES_COORD_MAX_SHARDS];
    cm.shards = (uint32_t)c->nshards;
    cm.next_shards = (uint32_t)coord_shards_count(c);
    for (int j = 0; j < c->nshards && cm.n_contributions; j++) { /* what replaces the shared block */
        const coord_shard *s = &c->shard[j];
        spes__wire__group__init(&grv[j]);
        grv[j].blob_hash = (ProtobufCBinaryData){32, (uint8_t *)s->out.hash};
        grv[j].manifest_hash = (ProtobufCBinaryData){32, (uint8_t *)s->out.manifest};
        grv[j].size = s->out.size;
        spes__wire__aggregate__init(&agv[j]);
        agv[j].shard = (uint32_t)j;
        agv[j].node_id = s->agg >= 0 ? c->mem[s->agg].id : 0;
        agv[j].blob = &grv[j];
        agp[j] = &agv[j];
        cm.n_aggregates++;
    }
    cm.aggregates = agp;
    if (c->last_commit && c->round > 0) { /* the last one joins the older ones */
        int slot = (int)((c->round - 1) % (SPES_COORD_COMMIT_HISTORY - 1));
        free(c->older[slot].data);
        c->older[slot].round = c->round - 1;
        c->older[slot].data = c->last_commit;
        c->older[slot].len = c->last_commit_len;
    } else {
        free(c->last_commit);
    }
    c->last_commit = NULL;
    c->last_commit_len = 0;
    rc = spes_proto_encode(SPES_MSG_COMMIT, &cm.base, &c->last_commit, &c->last_commit_len);
    c->last_contributors = (uint32_t)cm.n_contributions;
    c->last_merge = cm.merge_applied;
    c->pending_ckpt[0] = '\0'; /* it is in this commit now */
out:
    if (rc)
        coord_log(c, SPES_LOG_ERROR, "round %llu: cannot encode the commit: %s", (unsigned long long)c->round,
                  spes_errmsg());
    free(cv);
    free(cp);
    free(rv);
    free(rp);
    free(av);
    free(ap);
    free(pv);
    free(pp);
    free(colbuf);
    return rc;
}

const uint8_t *coord_commit_for(const spes_coord_sm *c, uint64_t r, size_t *len)
{
    if (c->last_commit && r + 1 == c->round) {
        *len = c->last_commit_len;
        return c->last_commit;
    }
    for (int i = 0; i < SPES_COORD_COMMIT_HISTORY - 1; i++)
        if (c->older[i].data && c->older[i].round == r && r + SPES_COORD_COMMIT_HISTORY >= c->round) {
            *len = c->older[i].len;
            return c->older[i].data;
        }
    return NULL;
}

void coord_commits_forget(spes_coord_sm *c)
{
    free(c->last_commit);
    c->last_commit = NULL;
    c->last_commit_len = 0;
    for (int i = 0; i < SPES_COORD_COMMIT_HISTORY - 1; i++) {
        free(c->older[i].data);
        c->older[i].data = NULL;
    }
}

/* persist_commit queues the durable write of the last commit (nodes that wait for it get it
 * after a coordinator restart too). */
static void persist_commit(spes_coord_sm *c)
{
    spes_coord_action a = {.kind = SPES_COORD_PERSIST_COMMIT, .round = c->round, .len = c->last_commit_len};
    if (!c->last_commit || !(a.data = malloc(c->last_commit_len)))
        return;
    memcpy(a.data, c->last_commit, c->last_commit_len);
    coord_push(c, &a);
}

/* contributor_names writes the names of the accepted contributors, in id order, for the commit's
 * log line ("none" if there are none; cut with "..." where they do not fit). */
static void contributor_names(const spes_coord_sm *c, const int *ok, char *out, size_t cap)
{
    size_t len = 0;
    out[0] = '\0';
    for (int k = 0; k < c->nval; k++) {
        if (ok[k] <= 0)
            continue;
        const char *name = c->mem[c->val_idx[k]].name;
        if (len + strlen(name) + 5 >= cap) {
            snprintf(out + len, cap - len, "%s...", len ? " " : "");
            return;
        }
        len += (size_t)snprintf(out + len, cap - len, "%s%s", len ? " " : "", name);
    }
    if (!len)
        snprintf(out, cap, "none");
}

void spes_coord_sm_validated(spes_coord_sm *c, spes_coord_now now, uint64_t round, int n, const int *ok,
                             char (*reasons)[256])
{
    if (round != c->round || !c->validating || n != c->nval)
        return;
    if (c->nshards) { /* the commit waits for the shards' aggregates too */
        if (c->checking && !c->own_checked)
            coord_shards_checked(c, now, ok, reasons);
        return;
    }
    coord_commit_round(c, now, ok, reasons);
}

void coord_commit_round(spes_coord_sm *c, spes_coord_now now, const int *ok, char (*reasons)[256])
{
    uint64_t step_end = c->step + (uint64_t)c->run.spes.sync_interval;
    coord_deal_columns(c); /* the commit tells every node the next round's columns */
    int K = c->run.spes.rotate_interval;
    if (K > 0 && (c->round + 1) % (uint64_t)K == 0) {
        coord_rotate_columns(c);
        coord_log(c, SPES_LOG_INFO,
                  "round %llu: every member's columns go to the next member (rotate_interval %d)",
                  (unsigned long long)(c->round + 1), K);
    }
    coord_round_timing(c); /* and the next round's deadline */
    char who[512];
    contributor_names(c, ok, who, sizeof who);
    if (encode_commit(c, ok, reasons, step_end) == 0)
        persist_commit(c);
    coord_log(c, SPES_LOG_INFO, "round %llu committed: %u contribution(s)%s (%s)",
              (unsigned long long)c->round, c->last_contributors,
              c->last_merge ? ", merge warm-up applied" : "", who);
    c->last_commit_ms = now.wall_ms;
    c->nmismatch = 0;
    for (int i = 0; i < c->nmem; i++)
        if (c->mem[i].state == NS(JOINING))
            c->mem[i].state = NS(ACTIVE);
    memcpy(c->prev_hash, c->state_hash, 32);
    c->prev_known = c->state_hash_known;
    c->round++;
    c->step = step_end;
    c->state_hash_known = 0;
    coord_open_round(c, now);
    if (c->step >= (uint64_t)c->run.train.max_steps)
        coord_log(c, SPES_LOG_INFO, "the run is complete: %llu steps (train.max_steps)",
                  (unsigned long long)c->step);
    coord_save(c);
}

/* all_announced says whether every active participant of the open round announced. */
static int all_announced(const spes_coord_sm *c)
{
    for (int i = 0; i < c->nmem; i++)
        if (c->mem[i].participant && !c->mem[i].announced && c->mem[i].state == NS(ACTIVE))
            return 0;
    return 1;
}

void coord_announce(spes_coord_sm *c, spes_coord_now now, const Spes__Wire__Announce *a,
                    const spes_pki_identity *peer, spes_coord_to to)
{
    coord_member *m = coord_find_id(c, a->node_id);
    if (!m || (peer->name[0] && strcmp(m->name, peer->name))) {
        coord_reply_error(c, to, SPES_EAUTH, SPES_MSG_ANNOUNCE, "node id %u is not %s", a->node_id,
                          peer->name);
        return;
    }
    if (a->round != c->round || !m->participant || c->validating) {
        coord_reply_error(c, to, SPES_ESTATE, SPES_MSG_ANNOUNCE,
                          "round %llu is not open for %s (open round %llu%s)", (unsigned long long)a->round,
                          m->name, (unsigned long long)c->round,
                          !m->participant ? ", not a participant"
                          : c->validating ? ", closing"
                                          : "");
        return;
    }
    /* a contribution is at most a header, E column ids and every value in fp32 */
    uint64_t max = 64 + 4 * (uint64_t)c->E + 4 * (c->shared_numel + (uint64_t)c->E * c->column_numel);
    if (a->size > max) {
        coord_reply_error(c, to, SPES_ERANGE, SPES_MSG_ANNOUNCE,
                          "a contribution of %llu bytes exceeds the %llu bytes this model allows",
                          (unsigned long long)a->size, (unsigned long long)max);
        return;
    }
    if (coord_shards_announce(c, m, a, to) != 0)
        return;
    memcpy(m->blob, a->blob_hash.data, 32);
    memcpy(m->manifest, a->manifest_hash.data, 32);
    m->blob_size = a->size;
    m->tokens = a->tokens_trained;
    m->blob_loss = a->loss ? a->loss->mean : 0;
    m->announced = 1;
    uint64_t after = now.mono_ms > c->round_open_ms ? now.mono_ms - c->round_open_ms : 0;
    m->announced_ms = after > UINT32_MAX ? UINT32_MAX : (uint32_t)after;
    coord_member_seen(m, now);
    coord_reply_ack(c, to, "announced");
    if (all_announced(c))
        start_validation(c, now);
}

/* check_digest records m as mismatched if its digest of the open round is not the agreed one. */
static void check_digest(spes_coord_sm *c, coord_member *m)
{
    if (!memcmp(m->digest, c->state_hash, 32))
        return;
    char hex[65];
    spes_hex_encode(m->digest, 32, hex);
    coord_log(c, SPES_LOG_ERROR, "DIGEST MISMATCH: %s reports %.16s for round %llu", m->name, hex,
              (unsigned long long)c->round);
    for (int i = 0; i < c->nmismatch; i++)
        if (c->mismatch[i] == m->id)
            return;
    c->mismatch[c->nmismatch++] = m->id; /* at most one entry per member: room for all */
}

void coord_digest(spes_coord_sm *c, spes_coord_now now, const Spes__Wire__Digest *g,
                  const spes_pki_identity *peer, spes_coord_to to)
{
    coord_member *m = coord_find_id(c, g->node_id);
    if (!m || (peer->name[0] && strcmp(m->name, peer->name))) {
        coord_reply_error(c, to, SPES_EAUTH, SPES_MSG_DIGEST, "node id %u is not %s", g->node_id, peer->name);
        return;
    }
    memcpy(m->digest, g->state_hash.data, 32);
    m->digest_round = g->round;
    if (g->round > m->round && g->round <= c->round)
        m->round = g->round; /* it holds S_round now, though its heartbeat may not say so yet */
    coord_member_seen(m, now);
    int own = !strcmp(m->name, c->set.name);
    if (own && g->round == c->round && !c->state_hash_known) {
        char hex[65];
        spes_hex_encode(m->digest, 32, hex);
        memcpy(c->state_hash, m->digest, 32);
        c->state_hash_known = 1;
        coord_save(c);
        coord_log(c, SPES_LOG_INFO, "round %llu: agreed state digest %.16s", (unsigned long long)g->round,
                  hex);
    }
    if (g->checkpoint_id[0])
        coord_checkpoint_saved(c, m, g->checkpoint_id, m->digest);
    coord_reply_ack(c, to, "digest recorded");
    if (!c->state_hash_known || g->round != c->round)
        return;
    if (own) {
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

/* forgive_stall moves every deadline on by the time the caller itself did not
 * run (the tick is periodic, so a longer gap means its loop was blocked: a
 * slow fsync, an overloaded or suspended machine). Heartbeats that arrived
 * meanwhile wait in the caller's inbox, which runs after the timers; without
 * this the coordinator would blame every member, itself included, for its own
 * stall. (Cassandra's failure detector skips its local pauses the same way.) */
static void forgive_stall(spes_coord_sm *c, uint64_t now)
{
    uint64_t period = c->set.tick_ms;
    uint64_t last = c->last_tick_ms;
    c->last_tick_ms = now;
    if (!last || now - last <= period)
        return;
    uint64_t stall = now - last - period;
    if (stall >= 1000)
        coord_log(c, SPES_LOG_WARN,
                  "coordinator: this daemon did not run for %llu ms (a slow disk or an overloaded machine); "
                  "heartbeat and round deadlines are moved on by that",
                  (unsigned long long)stall);
    for (int i = 0; i < c->nmem; i++)
        if (c->mem[i].seen_mono_ms)
            c->mem[i].seen_mono_ms = later_by(c->mem[i].seen_mono_ms, stall, now);
    c->round_open_ms = later_by(c->round_open_ms, stall, now);
    c->started_ms = later_by(c->started_ms, stall, now);
}

/* try_open_round opens a round when enough members are active: a fresh run waits for
 * min_nodes, however long the operator's nodes take to start; a restarted coordinator for the
 * members it had, or for failure_timeout_ms, whichever comes first. */
static void try_open_round(spes_coord_sm *c, spes_coord_now now, int nact)
{
    int target = c->round == 0 ? c->set.min_nodes : c->restored_active;
    if (c->round > 0 && now.mono_ms - c->started_ms > (uint64_t)c->set.failure_timeout_ms)
        target = 1;
    if (nact >= (target > 0 ? target : 1) && c->state_hash_known)
        coord_open_round(c, now);
}

void spes_coord_sm_tick(spes_coord_sm *c, spes_coord_now now)
{
    forgive_stall(c, now.mono_ms);
    int nact = 0, nparticipants = 0;
    for (int i = 0; i < c->nmem; i++) {
        coord_member *m = &c->mem[i];
        if (coord_member_active(m) && m->seen_mono_ms &&
            now.mono_ms - m->seen_mono_ms > (uint64_t)c->set.failure_timeout_ms) {
            coord_log(c, SPES_LOG_WARN, "%s missed its heartbeats for %llu ms: marked failed", m->name,
                      (unsigned long long)(now.mono_ms - m->seen_mono_ms));
            m->state = NS(FAILED);
            coord_save(c);
        }
        nact += m->state == NS(ACTIVE);
        nparticipants += m->participant && m->state == NS(ACTIVE);
    }
    if (c->validating) {
        coord_shards_tick(c, now);
        return;
    }
    if (nparticipants == 0) {
        if (c->step < (uint64_t)c->run.train.max_steps) /* else the run is complete */
            try_open_round(c, now, nact);
        return;
    }
    if (all_announced(c) && coord_any_announced(c)) {
        start_validation(c, now);
    } else if (now.mono_ms - c->round_open_ms > coord_deadline(c)) {
        if (coord_any_announced(c)) {
            coord_log(c, SPES_LOG_WARN, "round %llu: deadline passed; committing without the missing nodes",
                      (unsigned long long)c->round);
            start_validation(c, now);
        } else {
            c->round_open_ms = now.mono_ms;
        }
    }
}
