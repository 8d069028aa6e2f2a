/* metrics.h: the operator's numbers of one daemon as plain data (a snapshot)
 * and their renderings: Prometheus text exposition (/metrics) and the JSON
 * document behind the dashboard (/api/status). Pure code: no I/O, no clock,
 * no locks; the daemon fills a snapshot on its loop and renders it there. */
#ifndef SPES_METRICS_METRICS_H
#define SPES_METRICS_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define SPES_METRICS_MAX_MEMBERS 256
#define SPES_METRICS_MAX_E 256
#define SPES_METRICS_MAX_L 64
#define SPES_METRICS_HISTORY 64
#define SPES_METRICS_ROUND_NODES 32
#define SPES_METRICS_NBUCKETS 12

/* spes_metrics_buckets_s are the upper bounds (seconds) of the round-time histograms. */
extern const double spes_metrics_buckets_s[SPES_METRICS_NBUCKETS];

/* spes_metrics_class is a class of payload bytes on the wire. */
enum spes_metrics_class { SPES_METRICS_CONTROL = 0, SPES_METRICS_BLOB, SPES_METRICS_NCLASS };

/* spes_metrics_reason is why the coordinator refused a contribution, coarsely. */
enum spes_metrics_reason {
    SPES_METRICS_R_NON_FINITE = 0, /* NaN or infinite values */
    SPES_METRICS_R_OUT_OF_BOUND,   /* a value moved beyond the delta bound */
    SPES_METRICS_R_MALFORMED,      /* not a well-formed contribution for this model */
    SPES_METRICS_R_UNAVAILABLE,    /* the blob could not be fetched in time */
    SPES_METRICS_R_OTHER,
    SPES_METRICS_NREASONS
};

/* spes_metrics_hist is a histogram: per-bucket counts (not cumulative), sum and count. */
typedef struct spes_metrics_hist {
    uint64_t bucket[SPES_METRICS_NBUCKETS + 1]; /* last: above every bound */
    uint64_t count;
    double sum;
} spes_metrics_hist;

/* spes_metrics_member is one row of the coordinator's membership table. */
typedef struct spes_metrics_member {
    uint32_t id;
    char name[64]; /* from a certificate: escaped by every renderer */
    int state;     /* Spes__Wire__NodeState value */
    uint64_t round;
    double loss, tps;
    uint64_t last_seen_ms;               /* wall clock; 0: never */
    uint8_t cols[SPES_METRICS_MAX_E];    /* 1 where the member owns the column */
    int have_counters;                   /* the member reported its counters (below) */
    double train_s, wait_s;              /* its seconds training and waiting since it started */
    uint64_t sent_bytes, received_bytes; /* its payload bytes, all classes */
    uint64_t rounds;                     /* rounds committed with it among the contributors */
    double behind_s; /* how far behind the last round's median announcement (0: on time; NaN unknown) */
    uint64_t straggler_rounds; /* rounds it was a straggler in, since this coordinator's daemon started */
} spes_metrics_member;

/* spes_metrics_round is one committed round, for the dashboard's plot and timeline. */
typedef struct spes_metrics_round {
    uint64_t round, step;
    double loss, tps; /* the run's (coordinator) or this node's; NaN unknown */
    uint64_t committed_ms;
    int nnodes;
    struct {
        char name[64];
        double train_s, wait_s;
    } node[SPES_METRICS_ROUND_NODES];
} spes_metrics_round;

/* spes_metrics_snapshot is everything one daemon exposes. */
typedef struct spes_metrics_snapshot {
    char name[64];
    char version[32];
    int protocol;
    char run_id[40];
    int coordinator;          /* 1: the members, refusals and expert owners below are filled */
    uint64_t round, step;     /* rounds committed (the state held is S_round), steps done */
    uint64_t rounds_applied;  /* rounds this daemon applied since it started */
    double loss, tps;         /* this daemon's last training step */
    double run_loss, run_tps; /* coordinator: the run's mean loss and summed tokens/s */
    double deadline_s;        /* coordinator: the open round's deadline after its opening (NaN unknown) */
    double median_announce_s; /* coordinator: the last round's median announcement after its opening */
    spes_metrics_hist train_s, wait_s;
    uint64_t sent[SPES_METRICS_NCLASS], received[SPES_METRICS_NCLASS];
    uint64_t sent_msgs[SPES_METRICS_NCLASS], received_msgs[SPES_METRICS_NCLASS];
    int have_control_bytes;             /* 0: only blob bytes are known (no message counts either) */
    double train_total_s, wait_total_s; /* seconds training and waiting since start */
    uint64_t rounds_contributed;
    uint64_t blob_store_bytes;
    uint32_t blob_store_blobs;
    int have_listener; /* 1: the four counters of this daemon's listener below are filled */
    uint64_t conns_over_cap, handshakes_expired, conns_idle_closed, listener_restarts;
    int have_pushes; /* 1: this daemon takes pushed blobs (the coordinator): the counters below */
    uint64_t pushes_completed, pushes_refused, push_bytes, pushes_in_progress;
    uint64_t refusals[SPES_METRICS_NREASONS];
    uint64_t digest_mismatches;
    int nmembers;
    spes_metrics_member members[SPES_METRICS_MAX_MEMBERS];
    int have_last_round;
    uint64_t last_round;
    uint32_t last_contributors;
    int nlast_refused;
    char last_refused[8][256];
    int nlast_mismatch;
    char last_mismatch[8][64];
    int E, L; /* 0: the model is not known yet */
    double
        router_load[SPES_METRICS_MAX_L * SPES_METRICS_MAX_E]; /* (L, E) share of routed rows; NaN unknown */
    double delta_norm[SPES_METRICS_MAX_E]; /* L2 norm of each column's last committed change; NaN unknown */
    int nhist;                             /* rounds in hist, oldest first */
    spes_metrics_round hist[SPES_METRICS_HISTORY];
} spes_metrics_snapshot;

/* spes_metrics_snapshot_init empties s (unknowns as NaN). */
void spes_metrics_snapshot_init(spes_metrics_snapshot *s);

/* spes_metrics_hist_observe adds one value to h. */
void spes_metrics_hist_observe(spes_metrics_hist *h, double v);

/* spes_metrics_reason_of classifies a refusal's text. */
enum spes_metrics_reason spes_metrics_reason_of(const char *text);

/* spes_metrics_reason_name returns the label value of a reason ("non_finite", ...). */
const char *spes_metrics_reason_name(enum spes_metrics_reason r);

/* spes_metrics_state_name returns the label value of a NodeState ("active", ...). */
const char *spes_metrics_state_name(int state);

/* spes_metrics_round_at returns the history entry of round r, appending it
 * (and dropping the oldest when full) if it is newer than every entry; NULL
 * for a round older than the history's newest that it does not hold. */
spes_metrics_round *spes_metrics_round_at(spes_metrics_snapshot *s, uint64_t r);

/* spes_metrics_round_node returns round entry e's row for node name, adding it; NULL when full. */
void spes_metrics_round_node(spes_metrics_round *e, const char *name, double train_s, double wait_s);

/* spes_metrics_escape_label writes v escaped as a Prometheus label value
 * (backslash, double quote, newline) into out (size n, always terminated);
 * returns the length it needed, like snprintf. */
size_t spes_metrics_escape_label(char *out, size_t n, const char *v);

/* spes_metrics_render_prom renders s in Prometheus text exposition format
 * 0.0.4 into *out (malloc'd, NUL-terminated, caller frees). */
int spes_metrics_render_prom(const spes_metrics_snapshot *s, char **out, size_t *len);

/* spes_metrics_render_json renders s as the dashboard's JSON document into
 * *out (malloc'd, NUL-terminated, caller frees). */
int spes_metrics_render_json(const spes_metrics_snapshot *s, uint64_t now_ms, char **out, size_t *len);

#endif
