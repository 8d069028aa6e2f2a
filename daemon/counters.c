/* counters.c: the daemon's round clock and contributed rounds, and the
 * snapshot that adds the byte counters of spes_net (counters.h). Intervals
 * are measured on the monotonic clock. The wait for a round runs from the end
 * of training until the node holds the next agreed state, and then on until
 * it trains again (the digest report and the next round's assignment belong
 * to the round too); that last stretch is added only once training does
 * start, so a node idle after the run's last round stops waiting at the
 * state it holds. A training job or a wait still open when a snapshot is
 * taken counts up to that moment: every counter only grows. */
#include "daemon/counters.h"

#include "core/clock.h"
#include "core/log.h"
#include "proto/proto.h"

#include <pthread.h>

static struct {
    pthread_mutex_t mu;
    double train_s, wait_s; /* closed intervals */
    double train_since;     /* start of the training job in progress, 0 if none */
    double wait_since;      /* start of the wait in progress, 0 if none */
    double held_since;      /* a wait ended at a new state: when, until training resumes (0: none) */
    uint64_t rounds;
    uint64_t last_round; /* the latest round counted, plus one (0: none yet) */
    int unreported;      /* the coordinator refused heartbeats with counters */
} g = {.mu = PTHREAD_MUTEX_INITIALIZER};

void spes_counters_train_begin(void)
{
    pthread_mutex_lock(&g.mu);
    double now = spes_mono_s(); /* read under the lock: intervals never end before they begin */
    if (g.wait_since > 0) {     /* training again without a new state: the wait is over */
        g.wait_s += now - g.wait_since;
        g.wait_since = 0;
    }
    if (g.held_since > 0) { /* from the new state to this training: the round's end */
        g.wait_s += now - g.held_since;
        g.held_since = 0;
    }
    g.train_since = now;
    pthread_mutex_unlock(&g.mu);
}

void spes_counters_train_end(void)
{
    pthread_mutex_lock(&g.mu);
    double now = spes_mono_s();
    if (g.train_since > 0) {
        g.train_s += now - g.train_since;
        g.train_since = 0;
        g.wait_since = now;
    }
    pthread_mutex_unlock(&g.mu);
}

void spes_counters_state_held(void)
{
    pthread_mutex_lock(&g.mu);
    double now = spes_mono_s();
    if (g.wait_since > 0) {
        g.wait_s += now - g.wait_since;
        g.wait_since = 0;
        g.held_since = now;
    }
    pthread_mutex_unlock(&g.mu);
}

void spes_counters_commit_seen(const Spes__Wire__Commit *cm, uint32_t self)
{
    int mine = 0;
    for (size_t i = 0; i < cm->n_contributions; i++)
        mine |= cm->contributions[i]->node_id == self;
    pthread_mutex_lock(&g.mu);
    if (mine && cm->round + 1 > g.last_round) {
        g.rounds++;
        g.last_round = cm->round + 1;
    }
    pthread_mutex_unlock(&g.mu);
}

void spes_daemon_counters_get(spes_daemon_counters *out)
{
    spes_net_counters_get(&out->net);
    pthread_mutex_lock(&g.mu);
    double now = spes_mono_s();
    out->train_s = g.train_s + (g.train_since > 0 ? now - g.train_since : 0);
    out->wait_s = g.wait_s + (g.wait_since > 0 ? now - g.wait_since : 0);
    out->rounds = g.rounds;
    pthread_mutex_unlock(&g.mu);
}

void spes_counters_to_wire(const spes_daemon_counters *c, Spes__Wire__NodeCounters *w)
{
    spes__wire__node_counters__init(w);
    w->control_sent_bytes = c->net.sent_bytes[SPES_NET_CONTROL];
    w->control_received_bytes = c->net.received_bytes[SPES_NET_CONTROL];
    w->blob_sent_bytes = c->net.sent_bytes[SPES_NET_BLOB];
    w->blob_received_bytes = c->net.received_bytes[SPES_NET_BLOB];
    for (int i = 0; i < SPES_NET_NCLASS; i++) {
        w->sent_messages += c->net.sent_msgs[i];
        w->received_messages += c->net.received_msgs[i];
    }
    w->train_s = c->train_s;
    w->wait_s = c->wait_s;
    w->rounds = c->rounds;
}

void spes_counters_wire_now(Spes__Wire__NodeCounters *w)
{
    spes_daemon_counters c;
    spes_daemon_counters_get(&c);
    spes_counters_to_wire(&c, w);
}

void spes_counters_heartbeat(Spes__Wire__Heartbeat *h, Spes__Wire__NodeCounters *w)
{
    pthread_mutex_lock(&g.mu);
    int skip = g.unreported;
    pthread_mutex_unlock(&g.mu);
    h->counters = NULL;
    if (skip)
        return;
    spes_counters_wire_now(w);
    h->counters = w;
}

void spes_counters_heartbeat_reply(int type, const ProtobufCMessage *msg)
{
    if (type != SPES_MSG_ERROR || !msg ||
        ((const Spes__Wire__Error *)msg)->code != SPES__WIRE__ERROR_CODE__ERROR_BAD_MESSAGE)
        return;
    pthread_mutex_lock(&g.mu);
    int first = !g.unreported;
    g.unreported = 1;
    pthread_mutex_unlock(&g.mu);
    if (first)
        log_warnx("the coordinator refused a heartbeat with counters (%s): an older spesd? Heartbeats go "
                  "without them from now on",
                  ((const Spes__Wire__Error *)msg)->message);
}
