/* node.h: the node's side of the round protocol as a state machine that does
 * no I/O (docs/design.md, docs/node.md). Its inputs are replies from the
 * coordinator (envelope bytes), ticks with an explicit monotonic time, job
 * results from the worker and the operator's stop; each input appends actions
 * to a spes_node_out queue: messages to send, jobs to start, blobs to release,
 * log lines, "stopped". It never reads a clock, a socket or a file and starts
 * no thread: daemon/node.c carries its actions out, daemon/node_work.c runs
 * its jobs. */
#ifndef SPES_NODE_NODE_H
#define SPES_NODE_NODE_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "proto/spes.pb-c.h"

#define SPES_NODE_URL_MAX 512    /* longest peer URL kept (the daemon config's string size) */
#define SPES_NODE_NAME_MAX 64    /* longest peer name kept */
#define SPES_NODE_CKPT_MAX 64    /* longest checkpoint id kept */
#define SPES_NODE_ERR_MAX 512    /* longest job error message kept */
#define SPES_NODE_REASON_MAX 256 /* longest validation refusal kept */
#define SPES_NODE_KEEP_ROUNDS 3  /* rounds whose blobs a node keeps (see spes_node_sm_job_done) */
#define SPES_NODE_STATE_PEERS 16 /* members of an Accept a node fetches the agreed state from, at most */
#define SPES_NODE_CALL_TIMEOUT_MS 10000 /* a call to the coordinator */
#define SPES_NODE_LEAVE_TIMEOUT_MS 3000 /* the goodbye: a dead coordinator must not hold a stopping node */
#define SPES_NODE_MAX_SHARDS 128 /* shards of a round a node announces, at most (the coordinator's bound) */

/* spes_node_phase is where the node is in the round protocol. */
enum spes_node_phase {
    SPES_NODE_JOIN,     /* send Join (again) */
    SPES_NODE_PREPARE,  /* a prepare job fetches or loads S_round */
    SPES_NODE_IDLE,     /* holds S_round, waits for columns (heartbeats) */
    SPES_NODE_TRAIN,    /* a train job runs */
    SPES_NODE_ANNOUNCE, /* send Announce of the contribution */
    SPES_NODE_WAIT,     /* announced; waits for the commit (heartbeats) */
    SPES_NODE_APPLY,    /* an apply job builds S_{round+1} */
    SPES_NODE_DIGEST,   /* send Digest of S_{round+1} */
    SPES_NODE_STOP,     /* draining: waits for jobs and calls, then leaves */
    SPES_NODE_DONE,     /* left; nothing more happens */
};

/* spes_node_call names a call to the coordinator, so that its reply finds its handler. */
enum spes_node_call {
    SPES_NODE_CALL_JOIN = 1,
    SPES_NODE_CALL_HEARTBEAT,
    SPES_NODE_CALL_ANNOUNCE,
    SPES_NODE_CALL_DIGEST,
    SPES_NODE_CALL_LEAVE,
    SPES_NODE_CALL_REPORT
};

/* spes_node_job_kind says which member of spes_node_job's union is in use. */
enum spes_node_job_kind {
    SPES_NODE_JOB_PREPARE = 1,
    SPES_NODE_JOB_TRAIN,
    SPES_NODE_JOB_APPLY,
    SPES_NODE_JOB_VALIDATE,
    SPES_NODE_JOB_AGGREGATE
};

/* spes_node_peer is a daemon a job may fetch blobs from. */
typedef struct spes_node_peer {
    char url[SPES_NODE_URL_MAX];
    char name[SPES_NODE_NAME_MAX]; /* empty: unknown (then the certificate name is not checked) */
    uint32_t id;                   /* node id; UINT32_MAX: only the coordinator */
    int is_coord;                  /* this URL is the coordinator's (it holds every committed blob) */
} spes_node_peer;

/* spes_node_contrib is one committed or announced contribution blob. */
typedef struct spes_node_contrib {
    uint32_t node;        /* its author */
    uint8_t hash[32];     /* the blob */
    uint8_t manifest[32]; /* pins the blob's manifest (and so its size) */
} spes_node_contrib;

/* spes_node_group is a blob of a sharded round: a shard of a contribution, or an aggregate. */
typedef struct spes_node_group {
    uint32_t node; /* its author (a contribution's) or aggregator */
    uint32_t shard;
    uint8_t hash[32];     /* the blob */
    uint8_t manifest[32]; /* pins its manifest */
    uint64_t size;
} spes_node_group;

/* spes_node_shard_task is one shard an aggregate job checks and averages, and its result. */
typedef struct spes_node_shard_task {
    uint32_t shard, attempt;
    int n;
    spes_node_group
        *in;   /* (n) the contributions' shards, in node-id order; in[k]'s author is peer peer0 + k */
    int peer0; /* the job's peer of in[0] */
    /* results */
    int *ok, *missing;                 /* (n) */
    char (*why)[SPES_NODE_REASON_MAX]; /* (n) */
    int have;                          /* every input passed: out is the aggregate */
    spes_node_group out;
} spes_node_shard_task;

/* spes_node_job_aggregate checks and averages shards of the shared block for the coordinator. */
typedef struct spes_node_job_aggregate {
    uint64_t round;
    int shards; /* the round's K */
    int ntasks;
    spes_node_shard_task *task; /* (ntasks) */
} spes_node_job_aggregate;

/* spes_node_job_prepare gets S_round (local state, checkpoint or peers) into the trainer. */
typedef struct spes_node_job_prepare {
    uint64_t round, step;
    uint8_t hash[32]; /* S_round's digest */
    int have_held;    /* the loop believes the worker already holds held_round/held_hash */
    uint64_t held_round;
    uint8_t held_hash[32];
} spes_node_job_prepare;

/* spes_node_job_train trains the given columns for sync_interval steps from
 * S_round or, overlapped (docs/design.md, "Overlap"), from the node's own
 * parameters while round-1 travels: it then waits for S_round and contributes
 * its progress on top of it. */
typedef struct spes_node_job_train {
    uint64_t round, step;
    int overlap; /* 1: start from the node's own parameters, rebase onto S_round at the end */
    int members; /* the run's active members as last known (0: none yet): the shared block's delta is
                  * the mean of this many contributions, a column's of min(column_owners, members) */
    int E;
    uint8_t *cols; /* (E) 1: column trained */
    int shards;    /* sharded rounds: the round's K, when known at the start (0: take the applied commit's) */
    /* results */
    int nshards;            /* sharded rounds: the shared block's shards, published apart */
    spes_node_group *shard; /* (nshards) */
    uint8_t blob[32];       /* the contribution blob (sharded rounds: its columns only) */
    uint8_t manifest[32];   /* hash of its manifest */
    uint64_t size, tokens;
    double loss_mean;
} spes_node_job_train;

/* spes_node_job_apply fetches a commit's contributions and builds, persists and digests S_{round+1}. */
typedef struct spes_node_job_apply {
    uint64_t round, next_step;
    int merge;                        /* the commit applied expert merging */
    char ckpt_id[SPES_NODE_CKPT_MAX]; /* non-empty: keep the new state under this id; cleared if not saved */
    int ncontrib;
    spes_node_contrib *contribs; /* (ncontrib) */
    int refused_self;            /* the commit refused this node's contribution (its residual is dropped) */
    int shards;                  /* sharded rounds: K (the contributions carry columns only) */
    spes_node_group *agg;        /* (shards) each shard's aggregate (none when nothing was committed) */
    int nagg;
    int next_shards; /* the next round's K (a round trained ahead encodes with it) */
    /* results */
    uint8_t state_hash[32]; /* digest of S_{round+1} */
    uint64_t bytes_served;  /* blob bytes this daemon has served in all (for the log) */
} spes_node_job_apply;

/* spes_node_job_validate fetches and checks announced contributions for the coordinator. */
typedef struct spes_node_job_validate {
    uint64_t round;
    int n;
    spes_node_contrib *contribs; /* (n); contribution k's author is peer k, member contribs[k].node */
    int E;
    uint8_t *cols; /* (n * E): contribution k must carry exactly the columns set in cols[k*E ..] */
    /* results */
    int *ok;                               /* (n) */
    char (*reasons)[SPES_NODE_REASON_MAX]; /* (n) */
} spes_node_job_validate;

/* spes_node_job is one piece of worker work and, once done, its result. */
typedef struct spes_node_job {
    int kind;         /* spes_node_job_kind */
    uint32_t node_id; /* this node's id when the job was made */
    int npeers;
    spes_node_peer *peers; /* (npeers) whom to fetch from */
    union {
        spes_node_job_prepare prepare;
        spes_node_job_train train;
        spes_node_job_apply apply;
        spes_node_job_validate validate;
        spes_node_job_aggregate aggregate;
    } u;
    /* results (every kind) */
    int rc;
    char err[SPES_NODE_ERR_MAX];
    uint64_t bytes_in; /* blob bytes fetched from peers by this job */
} spes_node_job;

/* spes_node_job_free frees a job and what it owns. */
void spes_node_job_free(spes_node_job *j);

/* spes_node_action_kind says what a spes_node_action asks for. */
enum spes_node_action_kind {
    SPES_NODE_ACT_SEND = 1, /* send data (an envelope of type) to the coordinator as call */
    SPES_NODE_ACT_JOB,      /* run job on the worker, then hand it back with spes_node_sm_job_done */
    SPES_NODE_ACT_CANCEL, /* value 1: end every job early (stop); 2: end the training job early; 0: clear 2 */
    SPES_NODE_ACT_ABORT_CALLS, /* fail every call in flight now (their replies still come back) */
    SPES_NODE_ACT_RELEASE,     /* delete blob hash from the store */
    SPES_NODE_ACT_VALIDATED,   /* a validate job is done: give its result to the coordinator */
    SPES_NODE_ACT_LOG,         /* print text at level (a spes_log_level) */
    SPES_NODE_ACT_STOPPED,     /* the node has left the run */
};

/* spes_node_action is one thing the node asks its host to do. */
typedef struct spes_node_action {
    int kind;
    int call, type, timeout_ms; /* SEND */
    uint8_t *data;              /* SEND: the envelope (owned) */
    size_t len;
    spes_node_job *job; /* JOB, VALIDATED (owned) */
    uint8_t hash[32];   /* RELEASE */
    int value;          /* CANCEL */
    int level;          /* LOG */
    char text[640];     /* LOG */
} spes_node_action;

/* spes_node_out is the queue of actions an input produced, first in first out. */
typedef struct spes_node_out {
    spes_node_action *v;
    size_t head, n, cap;
} spes_node_out;

/* spes_node_out_pop takes the oldest action into a (which then owns its data and job); 0 when empty. */
int spes_node_out_pop(spes_node_out *o, spes_node_action *a);

/* spes_node_action_fini frees what a popped action still owns. */
void spes_node_action_fini(spes_node_action *a);

/* spes_node_out_fini frees the queue and every action left in it. */
void spes_node_out_fini(spes_node_out *o);

/* spes_node_hooks lets the daemon observe the machine (counters, metrics)
 * without the machine doing I/O: each hook is optional (NULL: none) and is
 * called synchronously, on the thread that feeds the machine. */
typedef struct spes_node_hooks {
    void *arg;
    /* heartbeat may attach fields to h before it is encoded (w: room for the counters) */
    void (*heartbeat)(void *arg, Spes__Wire__Heartbeat *h, Spes__Wire__NodeCounters *w);
    /* heartbeat_reply sees the coordinator's answer to a heartbeat (type, decoded message) */
    void (*heartbeat_reply)(void *arg, int type, const ProtobufCMessage *msg);
    /* commit sees a commit of the node's round before it is applied */
    void (*commit)(void *arg, const Spes__Wire__Commit *cm, uint32_t self);
    /* applied: round applied; train_s and wait_s are -1 when the node did not train it */
    void (*applied)(void *arg, uint64_t round, double train_s, double wait_s);
} spes_node_hooks;

/* spes_node_opts is what the node needs of the daemon's configuration; strings must outlive the machine. */
typedef struct spes_node_opts {
    const char *name;        /* this node's name (Join) */
    const char *listen;      /* this node's URL (Join; never a fetch source) */
    const char *coordinator; /* the coordinator's URL (a fetch source); empty on the coordinator */
    const char *data;        /* non-empty: this node's token files, overriding the run's */
    int threads;             /* Join's capabilities */
    int heartbeat_ms;
    int commit_poll_ms; /* the heartbeat period while the node waits for its round's commit (if shorter) */
    int keep_blobs;     /* never release blobs */
    spes_node_hooks hooks;
} spes_node_opts;

/* spes_node_kept is the set of blobs of one applied round (its contributions and the state it made). */
typedef struct spes_node_kept {
    uint64_t round;
    int n;
    uint8_t (*hash)[32]; /* (n) */
} spes_node_kept;

/* spes_node_sm is the node's protocol state. Every field belongs to the
 * thread that feeds the machine (the daemon's loop). */
typedef struct spes_node_sm {
    spes_node_opts o;
    int phase;           /* spes_node_phase */
    uint32_t id;         /* our node id (from Accept) */
    int joined;          /* a Leave is owed on stop */
    spes_run_config run; /* the run config from the first Accept (immutable afterwards) */
    int have_run;
    int E;                /* experts of the run */
    int members;          /* active members named by the last Commit (0: none seen yet) */
    uint64_t round, step; /* the agreed state held: S_round, steps done */
    uint8_t hash[32];     /* its digest */
    int have_state;
    uint8_t *cols;        /* (E) the columns being trained */
    int busy;             /* jobs handed out and not yet back */
    int calls;            /* calls sent and not yet answered */
    uint64_t next_try_ms; /* no call before this time (backoff) */
    uint64_t last_hb_ms;
    int have_step; /* the worker's trainer step is known (progress) */
    uint64_t trainer_step;
    double loss, tps;                               /* the worker's last step (progress) */
    uint8_t pending_blob[32], pending_manifest[32]; /* the contribution to announce */
    uint64_t pending_size, pending_tokens;
    double pending_loss;
    uint64_t train_round; /* round of the contribution trained (UINT64_MAX: none) */
    char saved_ckpt
        [SPES_NODE_CKPT_MAX];    /* checkpoint saved with the last applied state, sent with the digest */
    uint64_t bytes_in_total;     /* blob bytes fetched from peers since start */
    uint64_t t_train0, t_train1; /* ms when the last training began and ended */
    uint8_t *pending_commit;     /* a commit (envelope) that closed the round while we trained */
    size_t pending_commit_len;
    uint32_t *accept_cols; /* columns of the Accept being prepared for */
    size_t accept_ncols;
    spes_node_kept kept[SPES_NODE_KEEP_ROUNDS]; /* slot round % KEEP_ROUNDS */
    /* overlap (run.spes.overlap): a train job runs beside the round's sync phases */
    int training;         /* a train job is out */
    uint64_t job_round;   /* its round */
    uint64_t job_t0;      /* ms when it began */
    spes_node_job *ready; /* an overlapped round trained before the node held its S_round (owned) */
    uint64_t dealt_round; /* the round whose columns an Accept confirmed while its training ran */
    uint64_t ready_t0, ready_t1;
    /* sharded rounds (run.spes.sharded) */
    int shards;                      /* K of the round being trained, from its Accept */
    int npending_shards;             /* the contribution's shards, announced with it */
    spes_node_group *pending_shards; /* (npending_shards) */
    int aggregating;                 /* an aggregate job is out */
    spes_node_job *agg_done;         /* a finished aggregate job whose report is owed (owned) */
} spes_node_sm;

/* spes_node_sm_init sets the machine up from opts (phase JOIN, nothing sent yet). */
int spes_node_sm_init(spes_node_sm *sm, const spes_node_opts *o);

/* spes_node_sm_fini frees what the machine owns. */
void spes_node_sm_fini(spes_node_sm *sm);

/* spes_node_sm_tick sends what is due at now: Join, Announce, Digest or a heartbeat. */
void spes_node_sm_tick(spes_node_sm *sm, uint64_t now, spes_node_out *out);

/* spes_node_sm_progress records the worker's last published training progress
 * (have_step: its trainer step is known), reported by heartbeats. */
void spes_node_sm_progress(spes_node_sm *sm, int have_step, uint64_t step, double loss, double tps);

/* spes_node_sm_reply handles the answer to a call: rc != 0 with err when the
 * call failed, else the reply envelope data. */
void spes_node_sm_reply(spes_node_sm *sm, int call, int rc, const char *err, const uint8_t *data, size_t len,
                        uint64_t now, spes_node_out *out);

/* spes_node_sm_job_done takes back a finished job (and frees it). */
void spes_node_sm_job_done(spes_node_sm *sm, spes_node_job *j, uint64_t now, spes_node_out *out);

/* spes_node_sm_stop drains: cancels the job, aborts calls, then leaves the run (STOPPED). */
void spes_node_sm_stop(spes_node_sm *sm, spes_node_out *out);

/* spes_node_sm_validate makes a validate job for the coordinator's count
 * announced contributions (SPES_ESTATE before the node has joined: no job) (author k: member ids[k] at urls[k]/names[k], told to train the
 * columns set in cols[k*E .. k*E+E-1]). */
int spes_node_sm_validate(spes_node_sm *sm, uint64_t round, int count, const uint8_t (*hashes)[32],
                          const uint8_t (*manifests)[32], const char **urls, const char **names,
                          const uint32_t *ids, const uint8_t *cols, spes_node_out *out);

/* spes_node_phase_name names a phase for logs and tests. */
const char *spes_node_phase_name(int phase);

#endif
