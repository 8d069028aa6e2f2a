/* counters.h: what this daemon has done since it started: payload bytes
 * exchanged with peers (spes_net_counters, per class), seconds training,
 * seconds waiting for the round, and rounds contributed. The node feeds the
 * round clock through the hooks below; the heartbeat, `spesctl status` and a
 * metrics exporter read it all with spes_daemon_counters_get. One daemon per
 * process, so the state is the process's. docs/counters.md defines each
 * counter exactly. All functions are thread-safe. */
#ifndef SPES_DAEMON_COUNTERS_H
#define SPES_DAEMON_COUNTERS_H

#include <stdint.h>

#include "net/net.h"
#include "proto/spes.pb-c.h"

/* spes_daemon_counters is one snapshot of the daemon's counters. */
typedef struct spes_daemon_counters {
    spes_net_counters net; /* payload bytes and messages per class */
    double train_s;        /* seconds in training jobs, one in progress included */
    double wait_s;         /* seconds from the end of training to the next (docs/counters.md) */
    uint64_t rounds;       /* rounds committed with this node among the contributors */
} spes_daemon_counters;

/* spes_daemon_counters_get takes a snapshot (open intervals count up to now). */
void spes_daemon_counters_get(spes_daemon_counters *out);

/* spes_counters_train_begin marks the start of a training job (worker thread). */
void spes_counters_train_begin(void);

/* spes_counters_train_end marks its end, finished or abandoned; the wait for
 * the round starts here. */
void spes_counters_train_end(void);

/* spes_counters_state_held marks that the node holds an agreed state it can
 * train from (a commit applied, or a state prepared): the wait ends here,
 * unless the node trains again, which adds the time in between. */
void spes_counters_state_held(void);

/* spes_counters_commit_seen counts cm's round if node `self` is among its
 * contributors (each round at most once, however often its commit is seen). */
void spes_counters_commit_seen(const Spes__Wire__Commit *cm, uint32_t self);

/* spes_counters_to_wire fills w (initialised here) from a snapshot. */
void spes_counters_to_wire(const spes_daemon_counters *c, Spes__Wire__NodeCounters *w);

/* spes_counters_wire_now fills w from a snapshot taken now. */
void spes_counters_wire_now(Spes__Wire__NodeCounters *w);

/* spes_counters_heartbeat attaches a snapshot (in w) to heartbeat h, unless the
 * coordinator has refused heartbeats that carry one (an older spesd). */
void spes_counters_heartbeat(Spes__Wire__Heartbeat *h, Spes__Wire__NodeCounters *w);

/* spes_counters_heartbeat_reply looks at the coordinator's answer to a
 * heartbeat that carried counters: an Error of kind BAD_MESSAGE means it does
 * not know the field, and later heartbeats go without it. */
void spes_counters_heartbeat_reply(int type, const ProtobufCMessage *msg);

#endif
