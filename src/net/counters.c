/* counters.c: what this process has sent to and received from peers, in
 * message payload bytes per class (net.h, docs/counters.md). Every count goes
 * through spes__net_count, called where a message is known to have left
 * (nng completed its send) or arrived (nng delivered it): in net.c for
 * requests and replies, in blob/conn.c for the fetching side of blobs.
 * Relaxed atomics: the counters are independent tallies, read as a snapshot
 * that may be a few messages behind on another thread. */
#include "net/net_internal.h"

#include <stdatomic.h>

/* rows: sent bytes, sent messages, received bytes, received messages */
static _Atomic uint64_t counts[4][SPES_NET_NCLASS];

void spes__net_count(spes_net_class cls, int dir, size_t bytes)
{
    if ((unsigned)cls >= SPES_NET_NCLASS)
        cls = SPES_NET_CONTROL;
    int row = dir == SPES__NET_SENT ? 0 : 2;
    atomic_fetch_add_explicit(&counts[row][cls], (uint64_t)bytes, memory_order_relaxed);
    atomic_fetch_add_explicit(&counts[row + 1][cls], 1, memory_order_relaxed);
}

void spes_net_counters_get(spes_net_counters *out)
{
    for (int c = 0; c < SPES_NET_NCLASS; c++) {
        out->sent_bytes[c] = atomic_load_explicit(&counts[0][c], memory_order_relaxed);
        out->sent_msgs[c] = atomic_load_explicit(&counts[1][c], memory_order_relaxed);
        out->received_bytes[c] = atomic_load_explicit(&counts[2][c], memory_order_relaxed);
        out->received_msgs[c] = atomic_load_explicit(&counts[3][c], memory_order_relaxed);
    }
}

uint64_t spes_net_counters_sent(const spes_net_counters *c)
{
    uint64_t s = 0;
    for (int i = 0; i < SPES_NET_NCLASS; i++)
        s += c->sent_bytes[i];
    return s;
}

uint64_t spes_net_counters_received(const spes_net_counters *c)
{
    uint64_t s = 0;
    for (int i = 0; i < SPES_NET_NCLASS; i++)
        s += c->received_bytes[i];
    return s;
}
