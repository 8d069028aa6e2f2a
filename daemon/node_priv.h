/* node_priv.h: the node's internals, shared by node.c (loop side) and
 * node_work.c (worker side). Fields marked [loop] are touched only on the
 * loop; [worker] only by the worker while a job runs; the job hand-over is
 * guarded by mu. */
#ifndef SPES_DAEMON_NODE_PRIV_H
#define SPES_DAEMON_NODE_PRIV_H

#include <pthread.h>
#include <stdatomic.h>

#include "config/config.h"
#include "daemon/node.h"
#include "sync/outer.h"
#include "train/trainer.h"

enum node_phase { P_JOIN, P_PREPARE, P_IDLE, P_TRAIN, P_ANNOUNCE, P_WAIT, P_APPLY, P_DIGEST, P_STOP, P_DONE };
enum job_kind { JOB_PREPARE = 1, JOB_TRAIN, JOB_APPLY, JOB_VALIDATE };

#define NODE_MAX_PEERS 256

/* node_job is one piece of worker work and, when done, its result. */
typedef struct node_job {
    int kind;
    /* inputs */
    uint64_t round, step;
    uint8_t hash[32];          /* PREPARE: S_round's digest (zero: unknown) */
    uint8_t *cols;             /* TRAIN: (E) columns */
    int npeers;
    char urls[NODE_MAX_PEERS][512], names[NODE_MAX_PEERS][64];
    uint32_t peer_ids[NODE_MAX_PEERS];
    uint8_t is_coord[NODE_MAX_PEERS]; /* this URL is the coordinator's (it holds every committed blob) */
    int ncontrib;              /* APPLY/VALIDATE */
    uint32_t contrib_node[NODE_MAX_PEERS];
    uint8_t contrib_hash[NODE_MAX_PEERS][32];
    uint8_t contrib_manifest[NODE_MAX_PEERS][32]; /* pins each blob's manifest (and so its size) */
    int merge;                 /* APPLY */
    char ckpt_id[64];          /* APPLY: keep the new state under this checkpoint id */
    uint64_t next_step;
    /* results */
    int rc;
    char err[512];
    uint8_t out_hash[32];      /* TRAIN: contribution blob; APPLY: digest of the new state */
    uint8_t out_manifest[32];  /* TRAIN: hash of the contribution's manifest */
    uint64_t out_size, tokens;
    uint64_t bytes_in;         /* APPLY/PREPARE: blob bytes fetched from peers by this job */
    double loss_mean;
    int ok[NODE_MAX_PEERS];    /* VALIDATE */
    char reasons[NODE_MAX_PEERS][256];
    struct node_job *next;     /* job queue link */
    struct spes_node *d_node;  /* the node that submitted it */
} node_job;

struct spes_node {
    spes_daemon *d;
    spes_blob_store *blobs;
    spes_net_client *cc;   /* to the coordinator */
    int phase;             /* [loop] */
    uint32_t id;           /* [loop] */
    int joined;
    spes_run_config run;   /* the run config from Accept */
    int have_run;
    int E;
    uint64_t round, step;  /* the agreed state held: S_round, steps done */
    uint8_t hash[32];
    int have_state;
    uint8_t *cols;         /* (E) columns being trained */
    spes_trainer tr;       /* [worker while a job runs] params = working copy */
    int have_trainer;
    float *base;           /* (total) S_round */
    spes_outer outer;      /* [worker] outer optimizer; its momentum is part of S_round (docs/convergence.md) */
    char state_dir[600];
    /* worker */
    pthread_t th;
    int th_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    node_job *jobs, *jobs_tail; /* queued jobs (guarded by mu) */
    int busy;              /* [loop] jobs submitted and not yet reported back */
    int quit;
    atomic_int cancel;
    /* loop bookkeeping */
    int call_inflight;
    uint64_t next_try_ms, last_hb_ms;
    double loss, tps;
    uint8_t pending_blob[32], pending_manifest[32];
    uint64_t pending_size, pending_tokens;
    double pending_loss;
    uint64_t train_round;
    char saved_ckpt[64];
    uint64_t bytes_in_total;
    double t_train0, t_train1;
    uint8_t *pending_commit;   /* a commit that arrived while we were training (round closed without us) */
    size_t pending_commit_len;
    uint32_t *accept_cols;     /* columns of the Accept being prepared for */
    size_t accept_ncols;
    /* blobs of the last rounds (contributions and states), deleted two rounds on */
    struct {
        uint64_t round;
        int n;
        uint8_t hash[NODE_MAX_PEERS + 2][32];
    } kept[3]; /* seconds (monotonic) when the last training began and ended */  /* blob bytes fetched from peers since start */   /* checkpoint saved with the last applied state, reported with the digest */
};

/* node_run_job performs a job on the worker thread. */
void node_run_job(spes_node *n, node_job *j);

/* node_persist writes the node's state (trainer checkpoint + identity) durably. */
int node_persist(spes_node *n);

#endif
