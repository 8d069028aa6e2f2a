/* coord_status.c: what the operator sees (status, members) and the operator's
 * membership changes (approve, drain, evict), which need an operator
 * certificate or the local control socket. */
#include "core/error.h"
#include "core/log.h"
#include "daemon/coord_state.h"
#include "daemon/node.h"
#include "proto/proto.h"

#include <stdlib.h>
#include <string.h>

#include "core/nodestate.h"

void coord_fill_member(const spes_coord *c, const coord_member *m, Spes__Wire__MemberInfo *mi, uint32_t *cols)
{
    spes__wire__member_info__init(mi);
    mi->node_id = m->id;
    mi->name = (char *)m->name;
    mi->state = m->state;
    mi->columns = cols;
    mi->n_columns = coord_cols_fill(m->cols, c->E, cols);
    mi->round = m->round;
    mi->digest = (ProtobufCBinaryData){m->digest_round ? 32 : 0, (uint8_t *)m->digest};
    mi->last_seen_unix_ms = m->last_seen_ms;
    mi->tokens_per_s = m->tps;
    mi->listen_url = (char *)m->url;
    mi->loss = m->loss;
}

void coord_status(spes_coord *c, spes_reply_fn reply, void *ctx)
{
    static Spes__Wire__MemberInfo mv[COORD_MAX_MEMBERS];
    static Spes__Wire__MemberInfo *mp[COORD_MAX_MEMBERS];
    static uint32_t cols[COORD_MAX_MEMBERS][1024];
    static Spes__Wire__Refusal rv[8];
    static Spes__Wire__Refusal *rp[8];
    Spes__Wire__StatusReply s = SPES__WIRE__STATUS_REPLY__INIT;
    Spes__Wire__LastRound lr = SPES__WIRE__LAST_ROUND__INIT;
    s.run_id = c->run_id;
    s.round = c->round;
    s.step = c->step;
    s.coordinator = c->d->cfg.listen;
    double loss = 0, tps = 0;
    int nloss = 0;
    for (int i = 0; i < c->nmem; i++) {
        coord_fill_member(c, &c->mem[i], &mv[i], cols[i]);
        mp[i] = &mv[i];
        if (c->mem[i].state == NS(ACTIVE)) {
            tps += c->mem[i].tps;
            if (c->mem[i].loss > 0) {
                loss += c->mem[i].loss;
                nloss++;
            }
        }
    }
    s.members = mp;
    s.n_members = (size_t)c->nmem;
    s.loss = nloss ? loss / nloss : 0;
    s.tokens_per_s = tps;
    if (c->round > 0) {
        lr.round = c->round - 1;
        lr.contributors = c->last_contributors;
        lr.merge_applied = c->last_merge;
        lr.digest = (ProtobufCBinaryData){c->state_hash_known ? 32 : 0, c->state_hash};
        for (int i = 0; i < c->nlast_refused; i++) {
            spes__wire__refusal__init(&rv[i]);
            rv[i].reason = c->last_refused[i];
            rp[i] = &rv[i];
        }
        lr.refused = rp;
        lr.n_refused = (size_t)c->nlast_refused;
        lr.digest_mismatch = c->mismatch;
        lr.n_digest_mismatch = (size_t)c->nmismatch;
        lr.committed_unix_ms = c->last_commit_ms;
        s.last_round = &lr;
    }
    coord_reply_msg(reply, ctx, SPES_MSG_STATUS_REPLY, &s.base);
}

static coord_member *find_target(spes_coord *c, const char *t)
{
    coord_member *m = coord_find(c, t);
    if (m)
        return m;
    char *end;
    unsigned long id = strtoul(t, &end, 10);
    return (*t && !*end) ? coord_find_id(c, (uint32_t)id) : NULL;
}

void coord_members(spes_coord *c, const Spes__Wire__MembersRequest *r, const spes_pki_identity *peer,
                   spes_reply_fn reply, void *ctx)
{
    static Spes__Wire__MemberInfo mv[COORD_MAX_MEMBERS];
    static Spes__Wire__MemberInfo *mp[COORD_MAX_MEMBERS];
    static uint32_t cols[COORD_MAX_MEMBERS][1024];
    char msg[256] = "";
    int list = r->action == SPES__WIRE__MEMBERS_ACTION__MEMBERS_LIST;
    if (!list) {
        if (!coord_peer_is_operator(peer)) {
            spes_daemon_reply_error(reply, ctx, SPES_EAUTH, SPES_MSG_MEMBERS_REQUEST,
                                    "changing membership needs an operator certificate (%s is a %s)", peer->name,
                                    spes_pki_role_name(peer->role));
            return;
        }
        coord_member *m = find_target(c, r->target);
        if (!m) {
            spes_daemon_reply_error(reply, ctx, SPES_ENOENT, SPES_MSG_MEMBERS_REQUEST, "no member named %s", r->target);
            return;
        }
        if (r->action == SPES__WIRE__MEMBERS_ACTION__MEMBERS_APPROVE) {
            if (m->state == NS(PENDING))
                m->state = NS(JOINING);
            snprintf(msg, sizeof msg, "%s approved", m->name);
        } else if (r->action == SPES__WIRE__MEMBERS_ACTION__MEMBERS_DRAIN) {
            m->state = NS(DRAINING);
            snprintf(msg, sizeof msg, "%s drains: its columns move at the next round", m->name);
        } else if (r->action == SPES__WIRE__MEMBERS_ACTION__MEMBERS_EVICT) {
            m->state = NS(EVICTED);
            snprintf(msg, sizeof msg, "%s evicted", m->name);
        } else {
            spes_daemon_reply_error(reply, ctx, SPES_EINVAL, SPES_MSG_MEMBERS_REQUEST, "unknown members action");
            return;
        }
        log_info("operator %s: %s", peer->name[0] ? peer->name : "(local)", msg);
        coord_rebalance(c); /* the next round deals the columns without it */
        coord_save(c);
    }
    Spes__Wire__MembersReply mr = SPES__WIRE__MEMBERS_REPLY__INIT;
    for (int i = 0; i < c->nmem; i++) {
        coord_fill_member(c, &c->mem[i], &mv[i], cols[i]);
        mp[i] = &mv[i];
    }
    mr.members = mp;
    mr.n_members = (size_t)c->nmem;
    mr.message = msg;
    coord_reply_msg(reply, ctx, SPES_MSG_MEMBERS_REPLY, &mr.base);
}
