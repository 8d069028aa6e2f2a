/* coord_ops.c: the coordinator's request handlers: join, heartbeat, leave,
 * status, members (operator), and the dispatch by message type. Every
 * handler checks the sender's certificate role and name before acting. */
#include "coord/coord_priv.h"
#include "core/error.h"
#include "core/log.h"
#include "proto/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* round_open says whether the open round has participants; until it has, every
 * node that shows up takes part in it (run start, coordinator restart). */
static int round_open(const spes_coord_sm *c)
{
    for (int i = 0; i < c->nmem; i++)
        if (c->mem[i].participant)
            return 1;
    return 0;
}

static void reply_reject(spes_coord_sm *c, spes_coord_to to, int code, uint32_t retry_ms, const char *reason)
{
    Spes__Wire__Reject r = SPES__WIRE__REJECT__INIT;
    r.code = code;
    r.reason = (char *)reason;
    r.retry_after_ms = retry_ms;
    coord_reply_msg(c, to, SPES_MSG_REJECT, &r.base);
}

/* reply_accept tells m the agreed state and, if it takes part in the open round, its columns. */
/* accept_peers lists, into pv/pp, up to SPES_COORD_ACCEPT_PEERS active members other than m that hold
 * S_round (they reported a round from `round` to round + 2, whose states nodes keep) or are applying
 * the commit that makes it (round - 1): a node that must fetch the agreed state fetches it from all of
 * them at once, not from the coordinator alone (one without it yet answers that it has none). */
static size_t accept_peers(const spes_coord_sm *c, const coord_member *m, uint64_t round,
                           Spes__Wire__Peer *pv, Spes__Wire__Peer **pp)
{
    size_t n = 0;
    for (int i = 0; i < c->nmem && n < SPES_COORD_ACCEPT_PEERS; i++) {
        const coord_member *o = &c->mem[i];
        if (o == m || o->state != NS(ACTIVE) || !o->url[0] || o->round + 1 < round || o->round > round + 2)
            continue;
        spes__wire__peer__init(&pv[n]);
        pv[n].node_id = o->id;
        pv[n].name = (char *)o->name;
        pv[n].listen_url = (char *)o->url;
        pp[n] = &pv[n];
        n++;
    }
    return n;
}

static void reply_accept(spes_coord_sm *c, coord_member *m, spes_coord_to to)
{
    Spes__Wire__Accept a = SPES__WIRE__ACCEPT__INIT;
    Spes__Wire__Peer pv[SPES_COORD_ACCEPT_PEERS], *pp[SPES_COORD_ACCEPT_PEERS];
    uint32_t *cols = malloc(sizeof *cols * (size_t)c->E);
    if (!cols) {
        coord_reply_error(c, to, SPES_ENOMEM, SPES_MSG_JOIN, "out of memory");
        return;
    }
    a.node_id = m->id;
    a.columns = cols;
    a.n_columns = m->participant ? coord_cols_fill(m->cur, c->E, cols) : 0;
    a.run_config_json = c->run_json;
    a.round = c->round;
    a.step = c->step;
    a.state_hash = (ProtobufCBinaryData){32, c->state_hash};
    if (!c->state_hash_known && c->prev_known && c->round > 0) {
        /* S_round's digest is not known yet (we restarted before our node
         * reported it): start from S_{round-1}; the last commit brings it up */
        a.round = c->round - 1;
        a.step = c->step - (uint64_t)c->run.spes.sync_interval;
        a.state_hash = (ProtobufCBinaryData){32, c->prev_hash};
        a.n_columns = 0;
    }
    a.round_deadline_ms = (uint32_t)coord_deadline(c);
    a.run_id = c->run_id;
    a.shards = (uint32_t)c->nshards;
    a.peers = pp;
    a.n_peers = accept_peers(c, m, a.round, pv, pp);
    coord_reply_msg(c, to, SPES_MSG_ACCEPT, &a.base);
    free(cols);
}

static int node_peer_ok(spes_coord_sm *c, const spes_pki_identity *peer, const char *name, spes_coord_to to,
                        int type)
{
    if (peer->role == SPES_ROLE_NONE && !peer->name[0])
        return 1; /* plain tcp (tests): no identity at all */
    if (peer->role != SPES_ROLE_NODE || strcmp(peer->name, name)) {
        coord_reply_error(c, to, SPES_EAUTH, type, "certificate %s (%s) may not speak for node %s",
                          peer->name, spes_pki_role_name(peer->role), name);
        return 0;
    }
    return 1;
}

/* new_member adds a node that joins for the first time; NULL when the run is full. */
static coord_member *new_member(spes_coord_sm *c, const char *name)
{
    coord_member *m = coord_add_member(c);
    if (!m && c->nmem == SPES_COORD_MAX_MEMBERS && coord_reclaim(c) == 0)
        m = coord_add_member(c); /* a departed member made room */
    if (!m)
        return NULL;
    m->id = c->next_id++;
    snprintf(m->name, sizeof m->name, "%s", name);
    m->state = !c->set.approve || !strcmp(m->name, c->set.name) ? NS(JOINING) : NS(PENDING);
    coord_log(c, SPES_LOG_INFO, "%s joins as node %u%s", m->name, m->id,
              m->state == NS(PENDING) ? ", awaiting approval" : "");
    return m;
}

static void handle_join(spes_coord_sm *c, spes_coord_now now, const Spes__Wire__Join *j,
                        const spes_pki_identity *peer, spes_coord_to to)
{
    if (!node_peer_ok(c, peer, j->node_name, to, SPES_MSG_JOIN))
        return;
    if (j->protocol_version != SPES_PROTO_VERSION) { /* the envelope agreed: a node that says otherwise */
        coord_log(c, SPES_LOG_WARN, "%s refused: it speaks protocol %u and this run %d", j->node_name,
                  j->protocol_version, SPES_PROTO_VERSION);
        char why[128];
        snprintf(why, sizeof why,
                 "this node speaks protocol %u and the run %d: install the run's spes release",
                 j->protocol_version, SPES_PROTO_VERSION);
        reply_reject(c, to, SPES__WIRE__ERROR_CODE__ERROR_UNSUPPORTED_VERSION, 60000, why);
        return;
    }
    coord_member *m = coord_find(c, j->node_name);
    if (!m && coord_is_barred(c, j->node_name)) {
        reply_reject(c, to, SPES__WIRE__ERROR_CODE__ERROR_NOT_MEMBER, 0,
                     "this node was evicted from the run");
        return;
    }
    if (!m) {
        if (!(m = new_member(c, j->node_name))) {
            reply_reject(c, to, SPES__WIRE__ERROR_CODE__ERROR_REFUSED, 0, "the run is full");
            return;
        }
    } else if (m->state == NS(EVICTED) || m->state == NS(DRAINING)) {
        /* NOT_MEMBER with no retry: the node stops instead of knocking forever */
        reply_reject(c, to, SPES__WIRE__ERROR_CODE__ERROR_NOT_MEMBER, 0,
                     m->state == NS(EVICTED) ? "this node was evicted from the run"
                                             : "this node was drained from the run");
        return;
    } else if (m->state != NS(PENDING)) {
        m->state = NS(JOINING);
        m->participant = 0;
    }
    snprintf(m->url, sizeof m->url, "%s", j->listen_url);
    coord_member_seen(m, now);
    if (m->state == NS(PENDING)) {
        coord_save(c);
        reply_reject(c, to, SPES__WIRE__ERROR_CODE__ERROR_REFUSED, 2000, "awaiting operator approval");
        return;
    }
    if (!round_open(c))
        m->state = NS(ACTIVE);
    coord_deal_columns(c);
    coord_save(c);
    if (!c->state_hash_known && !c->prev_known) {
        reply_reject(c, to, SPES__WIRE__ERROR_CODE__ERROR_BUSY, 300, "the agreed state is being computed");
        return;
    }
    reply_accept(c, m, to);
}

static void handle_heartbeat(spes_coord_sm *c, spes_coord_now now, const Spes__Wire__Heartbeat *h,
                             const spes_pki_identity *peer, spes_coord_to to)
{
    coord_member *m = coord_find_id(c, h->node_id);
    if (!m) {
        reply_reject(c, to, SPES__WIRE__ERROR_CODE__ERROR_NOT_MEMBER, 0, "unknown node id");
        return;
    }
    if (!node_peer_ok(c, peer, m->name, to, SPES_MSG_HEARTBEAT))
        return;
    if (!coord_member_active(m)) {
        reply_reject(c, to, SPES__WIRE__ERROR_CODE__ERROR_NOT_MEMBER, 500,
                     "not an active member: join again");
        return;
    }
    if (m->state == NS(JOINING) && !round_open(c) && h->round == c->round)
        m->state = NS(ACTIVE); /* known from before our restart, holding the agreed state */
    coord_member_seen(m, now);
    m->round = h->round;
    m->step = h->step;
    m->loss = h->loss;
    m->tps = h->tokens_per_s;
    if (h->counters) { /* kept per member for status */
        m->counters = *h->counters;
        m->counters.base.n_unknown_fields = 0;
        m->counters.base.unknown_fields = NULL;
        m->have_counters = 1;
    }
    size_t clen = 0;
    const uint8_t *commit = h->round < c->round ? coord_commit_for(c, h->round, &clen) : NULL;
    if (commit) {
        /* the node waits for this commit, or catches up one commit at a time (docs/design.md,
         * "Failures and joins") */
        coord_reply_raw(c, to, commit, clen);
    } else if (h->round != c->round) {
        reply_reject(c, to, SPES__WIRE__ERROR_CODE__ERROR_WRONG_ROUND, 0,
                     h->round < c->round ? "too far behind: join again" : "the run was restored: join again");
    } else if (coord_shards_task(c, m, to)) {
        /* it aggregates shards of the round being checked */
    } else if (m->participant && !m->announced && !c->validating && h->state != NS(ACTIVE) &&
               c->state_hash_known) {
        reply_accept(c, m, to); /* idle node, open round: train it */
    } else {
        coord_reply_ack(c, to, "ok");
    }
}

static void handle_leave(spes_coord_sm *c, const Spes__Wire__Leave *l, const spes_pki_identity *peer,
                         spes_coord_to to)
{
    coord_member *m = coord_find_id(c, l->node_id);
    if (!m) {
        coord_reply_ack(c, to, "unknown node");
        return;
    }
    if (!node_peer_ok(c, peer, m->name, to, SPES_MSG_LEAVE))
        return;
    coord_log(c, SPES_LOG_INFO, "%s leaves the run: %s", m->name,
              l->reason[0] ? l->reason : "no reason given");
    m->state = NS(LEFT);
    coord_save(c);
    coord_reply_ack(c, to, "left");
}

void coord_fill_member(const spes_coord_sm *c, const coord_member *m, Spes__Wire__MemberInfo *mi,
                       uint32_t *cols)
{
    spes__wire__member_info__init(mi);
    mi->node_id = m->id;
    mi->name = (char *)m->name;
    mi->state = m->state;
    mi->columns = cols;
    /* what it trains: its dealt columns and, with column_owners > 1, those of the next members */
    mi->n_columns = coord_member_active(m) ? coord_train_cols_fill(c, (int)(m - c->mem), cols)
                                           : coord_cols_fill(m->cols, c->E, cols);
    mi->round = m->round;
    mi->digest = (ProtobufCBinaryData){m->digest_round ? 32 : 0, (uint8_t *)m->digest};
    mi->last_seen_unix_ms = m->last_seen_ms;
    mi->tokens_per_s = m->tps;
    mi->listen_url = (char *)m->url;
    mi->loss = m->loss;
    mi->counters = m->have_counters ? (Spes__Wire__NodeCounters *)&m->counters : NULL;
}

/* member_infos is the member table as MemberInfos, with the arrays they point into. */
typedef struct member_infos {
    Spes__Wire__MemberInfo *mv;
    Spes__Wire__MemberInfo **mp;
    uint32_t *cols;
} member_infos;

static void member_infos_fini(member_infos *mi)
{
    free(mi->mv);
    free(mi->mp);
    free(mi->cols);
}

static int member_infos_fill(const spes_coord_sm *c, member_infos *mi)
{
    size_t n = (size_t)(c->nmem ? c->nmem : 1);
    mi->mv = calloc(n, sizeof *mi->mv);
    mi->mp = calloc(n, sizeof *mi->mp);
    mi->cols = calloc(n * (size_t)c->E, sizeof *mi->cols);
    if (!mi->mv || !mi->mp || !mi->cols) {
        member_infos_fini(mi);
        return SPES_ENOMEM;
    }
    for (int i = 0; i < c->nmem; i++) {
        coord_fill_member(c, &c->mem[i], &mi->mv[i], mi->cols + (size_t)i * c->E);
        mi->mp[i] = &mi->mv[i];
    }
    return 0;
}

void coord_status(spes_coord_sm *c, spes_coord_to to)
{
    Spes__Wire__Refusal rv[SPES_COORD_MAX_REFUSED], *rp[SPES_COORD_MAX_REFUSED];
    Spes__Wire__Straggler sv[SPES_COORD_MAX_STRAGGLERS], *sp[SPES_COORD_MAX_STRAGGLERS];
    Spes__Wire__MemberInfo dv[SPES_COORD_MAX_DEPARTED], *dp[SPES_COORD_MAX_DEPARTED];
    Spes__Wire__StatusReply s = SPES__WIRE__STATUS_REPLY__INIT;
    Spes__Wire__LastRound lr = SPES__WIRE__LAST_ROUND__INIT;
    member_infos mi = {0};
    if (member_infos_fill(c, &mi) != 0) {
        coord_reply_error(c, to, SPES_ENOMEM, SPES_MSG_STATUS_REQUEST, "out of memory");
        return;
    }
    s.run_id = c->run_id;
    s.round = c->round;
    s.step = c->step;
    s.coordinator = c->set.listen;
    double loss = 0, tps = 0;
    int nloss = 0;
    for (int i = 0; i < c->nmem; i++) {
        if (c->mem[i].state == NS(ACTIVE)) {
            tps += c->mem[i].tps;
            if (c->mem[i].loss > 0) {
                loss += c->mem[i].loss;
                nloss++;
            }
        }
    }
    s.members = mi.mp;
    s.n_members = (size_t)c->nmem;
    for (int i = 0; i < c->ndeparted; i++) {
        const coord_departed *d = &c->departed[i];
        spes__wire__member_info__init(&dv[i]);
        dv[i].node_id = d->id;
        dv[i].name = (char *)d->name;
        dv[i].state = d->state;
        dv[i].round = d->round;
        dv[i].last_seen_unix_ms = d->last_seen_ms;
        dp[i] = &dv[i];
    }
    s.departed = dp;
    s.round_deadline_ms = (uint32_t)coord_deadline(c);
    s.n_departed = (size_t)c->ndeparted;
    s.loss = nloss ? loss / nloss : 0;
    s.tokens_per_s = tps;
    if (c->round > 0) {
        lr.round = c->round - 1;
        lr.contributors = c->last_contributors;
        lr.merge_applied = c->last_merge;
        lr.digest = (ProtobufCBinaryData){c->state_hash_known ? 32 : 0, c->state_hash};
        for (int i = 0; i < c->nlast_refused; i++) {
            spes__wire__refusal__init(&rv[i]);
            rv[i].node_id = c->last_refused_id[i];
            rv[i].reason = c->last_refused[i];
            rp[i] = &rv[i];
        }
        lr.refused = rp;
        lr.n_refused = (size_t)c->nlast_refused;
        lr.digest_mismatch = c->mismatch;
        lr.n_digest_mismatch = (size_t)c->nmismatch;
        lr.audited = (uint32_t)c->last_audited;
        lr.audit_mismatch = c->last_audit_mismatch;
        lr.n_audit_mismatch = (size_t)c->nlast_audit_mismatch;
        lr.committed_unix_ms = c->last_commit_ms;
        for (int i = 0; i < c->nstrag; i++) {
            spes__wire__straggler__init(&sv[i]);
            sv[i].node_id = c->strag[i].id;
            sv[i].behind_ms = c->strag[i].behind_ms;
            sv[i].missed = c->strag[i].missed;
            sp[i] = &sv[i];
        }
        lr.stragglers = sp;
        lr.n_stragglers = (size_t)c->nstrag;
        lr.median_announce_ms = c->last_median_ms;
        s.last_round = &lr;
    }
    coord_reply_msg(c, to, SPES_MSG_STATUS_REPLY, &s.base);
    member_infos_fini(&mi);
}

static coord_member *find_target(spes_coord_sm *c, const char *t)
{
    coord_member *m = coord_find(c, t);
    if (m)
        return m;
    char *end;
    unsigned long id = strtoul(t, &end, 10);
    return (*t && !*end) ? coord_find_id(c, (uint32_t)id) : NULL;
}

/* change_member carries out an operator's approve, drain or evict; 0, or an error already replied. */
static int change_member(spes_coord_sm *c, const Spes__Wire__MembersRequest *r, const spes_pki_identity *peer,
                         spes_coord_to to, char *msg, size_t cap)
{
    if (!coord_peer_is_operator(peer)) {
        coord_reply_error(c, to, SPES_EAUTH, SPES_MSG_MEMBERS_REQUEST,
                          "changing membership needs an operator certificate (%s is a %s)", peer->name,
                          spes_pki_role_name(peer->role));
        return SPES_EAUTH;
    }
    coord_member *m = find_target(c, r->target);
    if (!m) {
        coord_reply_error(c, to, SPES_ENOENT, SPES_MSG_MEMBERS_REQUEST, "no member named %s", r->target);
        return SPES_ENOENT;
    }
    if (r->action == SPES__WIRE__MEMBERS_ACTION__MEMBERS_APPROVE) {
        if (m->state == NS(PENDING))
            m->state = NS(JOINING);
        snprintf(msg, cap, "%s approved", m->name);
    } else if (r->action == SPES__WIRE__MEMBERS_ACTION__MEMBERS_DRAIN) {
        m->state = NS(DRAINING);
        snprintf(msg, cap, "%s drains: its columns move at the next round", m->name);
    } else if (r->action == SPES__WIRE__MEMBERS_ACTION__MEMBERS_EVICT) {
        m->state = NS(EVICTED);
        snprintf(msg, cap, "%s evicted", m->name);
    } else {
        coord_reply_error(c, to, SPES_EINVAL, SPES_MSG_MEMBERS_REQUEST, "unknown members action");
        return SPES_EINVAL;
    }
    coord_log(c, SPES_LOG_INFO, "operator %s: %s", peer->name[0] ? peer->name : "(local)", msg);
    coord_deal_columns(c); /* the next round deals the columns without it */
    coord_save(c);
    return 0;
}

void coord_members(spes_coord_sm *c, const Spes__Wire__MembersRequest *r, const spes_pki_identity *peer,
                   spes_coord_to to)
{
    char msg[256] = "";
    if (r->action != SPES__WIRE__MEMBERS_ACTION__MEMBERS_LIST &&
        change_member(c, r, peer, to, msg, sizeof msg) != 0)
        return;
    member_infos mi = {0};
    if (member_infos_fill(c, &mi) != 0) {
        coord_reply_error(c, to, SPES_ENOMEM, SPES_MSG_MEMBERS_REQUEST, "out of memory");
        return;
    }
    Spes__Wire__MembersReply mr = SPES__WIRE__MEMBERS_REPLY__INIT;
    mr.members = mi.mp;
    mr.n_members = (size_t)c->nmem;
    mr.message = msg;
    coord_reply_msg(c, to, SPES_MSG_MEMBERS_REPLY, &mr.base);
    member_infos_fini(&mi);
}

/* is_node_verb says whether only a member node sends this message type. */
static int is_node_verb(int type)
{
    return type == SPES_MSG_JOIN || type == SPES_MSG_HEARTBEAT || type == SPES_MSG_LEAVE ||
           type == SPES_MSG_ANNOUNCE || type == SPES_MSG_DIGEST || type == SPES_MSG_AGGREGATE_REPORT;
}

/* node_identity says whether peer may send node verbs at all: a node
 * certificate, or a peer of a plain test run (no identity whatsoever); the
 * handlers then check that it speaks for its own member. */
static int node_identity(const spes_pki_identity *peer)
{
    return peer->role == SPES_ROLE_NODE || (peer->role == SPES_ROLE_NONE && !peer->name[0]);
}

void spes_coord_sm_request(spes_coord_sm *c, spes_coord_now now, int type, const ProtobufCMessage *msg,
                           const spes_pki_identity *peer, spes_coord_to to)
{
    if (is_node_verb(type) && !node_identity(peer)) {
        coord_reply_error(c, to, SPES_EAUTH, type, "%s needs a node certificate over TLS (%s is %s)",
                          spes_proto_type_name(type), peer->name[0] ? peer->name : "the local control socket",
                          peer->name[0] ? spes_pki_role_name(peer->role) : "an operator");
        return;
    }
    switch (type) {
    case SPES_MSG_JOIN: handle_join(c, now, (const Spes__Wire__Join *)msg, peer, to); break;
    case SPES_MSG_HEARTBEAT: handle_heartbeat(c, now, (const Spes__Wire__Heartbeat *)msg, peer, to); break;
    case SPES_MSG_LEAVE: handle_leave(c, (const Spes__Wire__Leave *)msg, peer, to); break;
    case SPES_MSG_ANNOUNCE: coord_announce(c, now, (const Spes__Wire__Announce *)msg, peer, to); break;
    case SPES_MSG_DIGEST: coord_digest(c, now, (const Spes__Wire__Digest *)msg, peer, to); break;
    case SPES_MSG_AGGREGATE_REPORT:
        coord_aggregate_report(c, now, (const Spes__Wire__AggregateReport *)msg, peer, to);
        break;
    case SPES_MSG_STATUS_REQUEST: coord_status(c, to); break;
    case SPES_MSG_MEMBERS_REQUEST: coord_members(c, (const Spes__Wire__MembersRequest *)msg, peer, to); break;
    case SPES_MSG_CHECKPOINT_REQUEST:
        coord_checkpoint(c, now, (const Spes__Wire__CheckpointRequest *)msg, peer, to);
        break;
    default: coord_reply_error(c, to, SPES_EINVAL, type, "unexpected message type %d", type);
    }
}
