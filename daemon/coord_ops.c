/* coord_ops.c: the coordinator's request handlers: join, heartbeat, leave,
 * status, members (operator), and the dispatch by message type. Every
 * handler checks the sender's certificate role and name before acting. */
#include "core/error.h"
#include "core/log.h"
#include "core/sha256.h"
#include "daemon/coord_state.h"
#include "proto/proto.h"

#include <stdlib.h>
#include <string.h>

#include "core/nodestate.h"

/* Declared in coord_round.c. */
void coord_announce(spes_coord *c, const Spes__Wire__Announce *a, const spes_pki_identity *peer,
                    spes_reply_fn reply, void *ctx);
void coord_digest(spes_coord *c, const Spes__Wire__Digest *g, const spes_pki_identity *peer, spes_reply_fn reply,
                  void *ctx);

/* round_open says whether the open round has participants; until it has, every
 * node that shows up takes part in it (run start, coordinator restart). */
static int round_open(const spes_coord *c)
{
    for (int i = 0; i < c->nmem; i++)
        if (c->mem[i].participant)
            return 1;
    return 0;
}

static void reply_reject(spes_reply_fn reply, void *ctx, int code, uint32_t retry_ms, const char *reason)
{
    Spes__Wire__Reject r = SPES__WIRE__REJECT__INIT;
    r.code = code;
    r.reason = (char *)reason;
    r.retry_after_ms = retry_ms;
    coord_reply_msg(reply, ctx, SPES_MSG_REJECT, &r.base);
}

/* reply_accept tells m the agreed state and, if it takes part in the open round, its columns. */
static void reply_accept(spes_coord *c, coord_member *m, spes_reply_fn reply, void *ctx)
{
    Spes__Wire__Accept a = SPES__WIRE__ACCEPT__INIT;
    a.node_id = m->id;
    size_t n = 0;
    uint32_t *cols = m->participant ? coord_cols_list(m->cur, c->E, &n) : NULL;
    a.columns = cols;
    a.n_columns = n;
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
    a.round_deadline_ms = (uint32_t)c->d->cfg.round_deadline_ms;
    a.run_id = c->run_id;
    coord_reply_msg(reply, ctx, SPES_MSG_ACCEPT, &a.base);
    free(cols);
}

static int node_peer_ok(const spes_pki_identity *peer, const char *name, spes_reply_fn reply, void *ctx, int type)
{
    if (peer->role == SPES_ROLE_NONE && !peer->name[0])
        return 1; /* plain tcp (tests) or the local control socket */
    if (peer->role != SPES_ROLE_NODE || strcmp(peer->name, name)) {
        spes_daemon_reply_error(reply, ctx, SPES_EAUTH, type, "certificate %s (%s) may not speak for node %s",
                                peer->name, spes_pki_role_name(peer->role), name);
        return 0;
    }
    return 1;
}

static void handle_join(spes_coord *c, const Spes__Wire__Join *j, const spes_pki_identity *peer,
                        spes_reply_fn reply, void *ctx)
{
    if (!node_peer_ok(peer, j->node_name, reply, ctx, SPES_MSG_JOIN))
        return;
    coord_member *m = coord_find(c, j->node_name);
    if (!m) {
        if (c->nmem == COORD_MAX_MEMBERS) {
            reply_reject(reply, ctx, SPES__WIRE__ERROR_CODE__ERROR_REFUSED, 0, "the run is full");
            return;
        }
        m = &c->mem[c->nmem++];
        m->id = c->next_id++;
        snprintf(m->name, sizeof m->name, "%s", j->node_name);
        memset(m->cols, 0, (size_t)c->E);
        m->state = strcmp(c->d->cfg.admission, "approve") || !strcmp(m->name, c->d->cfg.name) ? NS(JOINING)
                                                                                                : NS(PENDING);
        log_info("%s joins as node %u%s", m->name, m->id, m->state == NS(PENDING) ? ", awaiting approval" : "");
    } else if (m->state == NS(EVICTED) || m->state == NS(DRAINING)) {
        /* NOT_MEMBER with no retry: the node stops instead of knocking forever */
        reply_reject(reply, ctx, SPES__WIRE__ERROR_CODE__ERROR_NOT_MEMBER, 0,
                     m->state == NS(EVICTED) ? "this node was evicted from the run" : "this node was drained from the run");
        return;
    } else if (m->state != NS(PENDING)) {
        m->state = NS(JOINING);
        m->participant = 0;
    }
    snprintf(m->url, sizeof m->url, "%s", j->listen_url);
    coord_member_seen(m);
    if (m->state == NS(PENDING)) {
        coord_save(c);
        reply_reject(reply, ctx, SPES__WIRE__ERROR_CODE__ERROR_REFUSED, 2000, "awaiting operator approval");
        return;
    }
    if (!round_open(c))
        m->state = NS(ACTIVE);
    coord_rebalance(c);
    coord_save(c);
    if (!c->state_hash_known && !c->prev_known) {
        reply_reject(reply, ctx, SPES__WIRE__ERROR_CODE__ERROR_BUSY, 300, "the agreed state is being computed");
        return;
    }
    reply_accept(c, m, reply, ctx);
}

static void handle_heartbeat(spes_coord *c, const Spes__Wire__Heartbeat *h, const spes_pki_identity *peer,
                             spes_reply_fn reply, void *ctx)
{
    coord_member *m = coord_find_id(c, h->node_id);
    if (!m || !node_peer_ok(peer, m->name, reply, ctx, SPES_MSG_HEARTBEAT))
        return m ? (void)0 : reply_reject(reply, ctx, SPES__WIRE__ERROR_CODE__ERROR_NOT_MEMBER, 0, "unknown node id");
    if (!coord_member_active(m)) {
        reply_reject(reply, ctx, SPES__WIRE__ERROR_CODE__ERROR_NOT_MEMBER, 500, "not an active member: join again");
        return;
    }
    if (m->state == NS(JOINING) && !round_open(c) && h->round == c->round)
        m->state = NS(ACTIVE); /* known from before our restart, holding the agreed state */
    coord_member_seen(m);
    m->round = h->round;
    m->step = h->step;
    m->loss = h->loss;
    m->tps = h->tokens_per_s;
    if (h->round + 1 == c->round && c->last_commit) {
        reply(ctx, c->last_commit, c->last_commit_len); /* the node waits for this commit */
    } else if (h->round != c->round) {
        reply_reject(reply, ctx, SPES__WIRE__ERROR_CODE__ERROR_WRONG_ROUND, 0,
                     h->round < c->round ? "too far behind: join again" : "the run was restored: join again");
    } else if (h->round == c->round && m->participant && !m->announced && !c->validating &&
               h->state != SPES__WIRE__NODE_STATE__NODE_STATE_ACTIVE && c->state_hash_known) {
        reply_accept(c, m, reply, ctx); /* idle node, open round: train it */
    } else {
        coord_reply_ack(reply, ctx, "ok");
    }
}

static void handle_leave(spes_coord *c, const Spes__Wire__Leave *l, const spes_pki_identity *peer,
                         spes_reply_fn reply, void *ctx)
{
    coord_member *m = coord_find_id(c, l->node_id);
    if (!m || !node_peer_ok(peer, m->name, reply, ctx, SPES_MSG_LEAVE))
        return m ? (void)0 : coord_reply_ack(reply, ctx, "unknown node");
    log_info("%s leaves the run: %s", m->name, l->reason[0] ? l->reason : "no reason given");
    m->state = NS(LEFT);
    coord_save(c);
    coord_reply_ack(reply, ctx, "left");
}



void spes_coord_handle(spes_coord *c, int type, const ProtobufCMessage *msg, const spes_pki_identity *peer,
                       spes_reply_fn reply, void *ctx)
{
    switch (type) {
    case SPES_MSG_JOIN: handle_join(c, (const Spes__Wire__Join *)msg, peer, reply, ctx); break;
    case SPES_MSG_HEARTBEAT: handle_heartbeat(c, (const Spes__Wire__Heartbeat *)msg, peer, reply, ctx); break;
    case SPES_MSG_LEAVE: handle_leave(c, (const Spes__Wire__Leave *)msg, peer, reply, ctx); break;
    case SPES_MSG_ANNOUNCE: coord_announce(c, (const Spes__Wire__Announce *)msg, peer, reply, ctx); break;
    case SPES_MSG_DIGEST: coord_digest(c, (const Spes__Wire__Digest *)msg, peer, reply, ctx); break;
    case SPES_MSG_STATUS_REQUEST: coord_status(c, reply, ctx); break;
    case SPES_MSG_MEMBERS_REQUEST: coord_members(c, (const Spes__Wire__MembersRequest *)msg, peer, reply, ctx); break;
    case SPES_MSG_CHECKPOINT_REQUEST:
        coord_checkpoint(c, (const Spes__Wire__CheckpointRequest *)msg, peer, reply, ctx);
        break;
    default: spes_daemon_reply_error(reply, ctx, SPES_EINVAL, type, "unexpected message type %d", type);
    }
}
