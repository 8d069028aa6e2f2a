/* wanprofile.h: the WAN lab's link profiles (the JSON files in deploy/wan/) resolved for
 * N nodes: per node an access link (uplink and downlink rates, one-way delay
 * to the "internet", loss, droptail buffer, optional Gilbert-Elliott bursts),
 * per ordered pair the one-way delay. See docs/wan-lab.md for the format. */
#ifndef SPES_WAN_PROFILE_H
#define SPES_WAN_PROFILE_H

#include <stddef.h>
#include <stdint.h>

#define WAN_MAX_NODES 64

/* wan_link is one node's access link. */
typedef struct wan_link {
    double up_mbit, down_mbit; /* rates, Mbit/s (10^6 bits) */
    double delay_ms;           /* one-way delay from this node to the internet */
    double loss;               /* long-run loss per packet on each direction of this link */
    double buffer_ms;          /* droptail: a packet that would wait longer than this is dropped */
    double burst_len;          /* mean length of a loss burst in packets; 0: independent (Bernoulli) losses */
    double burst_loss;         /* loss probability inside a burst (Gilbert-Elliott bad state) */
} wan_link;

/* wan_profile is a profile resolved for n nodes. */
typedef struct wan_profile {
    int n;
    wan_link node[WAN_MAX_NODES];
    double delay_ms[WAN_MAX_NODES][WAN_MAX_NODES]; /* one-way delay i -> j */
} wan_profile;

/* wan_profile_load reads PATH and resolves it for n nodes (nodes and pairs
 * naming a node >= n are ignored); errors name the file and the field. */
int wan_profile_load(wan_profile *p, const char *path, int n);

/* wan_profile_parse is wan_profile_load of len bytes of JSON text; errors name origin. */
int wan_profile_parse(wan_profile *p, const char *text, size_t len, const char *origin, int n);

/* wan_profile_print writes the resolved profile as JSON to stdout. */
void wan_profile_print(const wan_profile *p);

#endif
