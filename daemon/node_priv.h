/* node_priv.h: the node daemon's glue, shared by node.c (the loop side: it
 * feeds the protocol state machine of src/node/node.h and carries out its
 * actions) and node_work.c (the worker thread: it runs the machine's jobs).
 * Every field says who owns it: [loop] only the daemon's loop touches it,
 * [worker] only the worker thread, [mu] both under mu, [once] set before the
 * worker starts and read-only afterwards, [any] thread-safe on its own. */
#ifndef SPES_DAEMON_NODE_PRIV_H
#define SPES_DAEMON_NODE_PRIV_H

#include <pthread.h>
#include <stdatomic.h>

#include "config/config.h"
#include "daemon/node.h"
#include "node/node.h"
#include "sync/outer.h"
#include "sync/resid.h"
#include "sync/robust.h"
#include "train/trainer.h"

/* node_task is a job on its way to the worker and back to the loop. */
typedef struct node_task {
    struct spes_node *n;
    spes_node_job *job;      /* owned by the task until the loop hands it back to the machine */
    struct node_task *next;  /* [mu] queue link */
    struct node_task *dnext; /* [mu] link of the finished jobs the loop has not taken yet */
    uint8_t (*out)[32];      /* [mu] (nout) the blobs the job made (node_keep_add) */
    int nout, outcap;        /* [mu] */
} node_task;

struct spes_node {
    spes_daemon *d;         /* [once] */
    spes_blob_store *blobs; /* [any] */
    spes_net_client *cc;    /* [loop] to the coordinator */
    char state_dir[600];    /* [once] STATE_DIR/node */
    spes_node_sm sm;        /* [loop] the protocol state; its run config is written before the
                                * first job and only read afterwards, by the worker too */
    spes_node_out out;      /* [loop] actions not yet carried out */
    int draining;           /* [loop] drain() is running (actions it causes join its queue) */
    /* the workers: one trains, one runs the rest (prepare, apply, validate), so that a
     * round's sync runs beside the next round's training (docs/design.md, "Overlap") */
    pthread_t th, th_train; /* [loop] */
    int th_started;         /* [loop] threads started (0, 1 or 2) */
    pthread_mutex_t mu;
    pthread_cond_t cv;                    /* [mu] any change of the fields under mu */
    struct node_task *jobs, *jobs_tail;   /* [mu] queued jobs (not train) */
    struct node_task *tjobs, *tjobs_tail; /* [mu] queued train jobs */
    struct node_task *running;            /* [mu] the job the sync worker runs, if any */
    struct node_task *trunning;           /* [mu] the job the training worker runs, if any */
    struct node_task *done;               /* [mu] finished jobs the loop has not taken yet (dnext) */
    /* how the two workers share the model (node_work.c): */
    int64_t base_round; /* [mu] the round of the agreed state in base (-1: none yet) */
    int base_busy;      /* [mu] the training worker reads base and writes ef (rebasing, encoding) */
    int base_shards;    /* [mu] sharded rounds: K of the round after base's (the commit that made it says) */
    int pause_req;      /* [mu] the sync worker wants the trainer still (saving its state) */
    int train_busy;     /* [mu] the training worker is changing the trainer (steps, opening) */
    spes_layout lo;     /* [once] the run's layout (set on the loop before the first job) */
    int have_lo;        /* [once] */
    /* what the blob store's quota must never remove (docs/security.md, "Store quota") */
    pthread_mutex_t keep_mu;
    uint8_t (*keep)[32];        /* [keep_mu] (nkeep) sorted */
    int nkeep;                  /* [keep_mu] */
    int quit;                   /* [mu] the worker ends */
    atomic_int cancel;          /* [any] every job ends early: stopping (set by the loop, read by workers) */
    atomic_int cancel_train;    /* [any] the training job ends early */
    int prog_have_step;         /* [mu] the worker's progress, for heartbeats and status: */
    uint64_t prog_step;         /* [mu]   its trainer's step (when prog_have_step) */
    double prog_loss, prog_tps; /* [mu]  its last training step's loss and tokens/s */
    spes_trainer tr;            /* [worker] params = working copy */
    int have_trainer;           /* [worker] */
    float *base;                /* [worker] (total) S_round: written by the sync worker, under base_busy */
    float *xstart;              /* [worker] (total) overlap: the parameters the training round began from */
    spes_outer outer; /* [worker] outer optimizer: its momentum is part of S_round (docs/convergence.md) */
    double loss, tps; /* [worker] the last training step's loss and tokens/s */
    spes_norm_history *norms; /* [worker] what the norm bound remembers of earlier rounds (validation) */
    /* error feedback of a q8ef or topk run (docs/design.md, "Codecs"); have_ef is 0 in other runs */
    spes_resid ef;            /* [worker] the residual: what the codec has not delivered yet */
    int have_ef;              /* [worker] */
    int64_t ef_round;         /* [worker] the round whose contribution ef awaits the outcome of (-1: none) */
    uint8_t ef_blob[32];      /* [worker] that contribution's blob */
    uint8_t (*ef_shards)[32]; /* [worker] (nef_shards) sharded rounds: its shards' blobs */
    int nef_shards;
    double ef_cap; /* [worker] 2 x its delta's norm: the cap of a residual left out */
};

/* node_run_job performs a job on the worker thread. */
void node_run_job(spes_node *n, spes_node_job *j);

/* node_keep_add (a worker, for the job it runs) has the store keep a blob job j makes (a state,
 * a contribution) until the loop has taken the job's result, from which it knows what to keep:
 * otherwise another worker's install could collect it in between, under a quota. */
void node_keep_add(spes_node *n, const spes_node_job *j, const uint8_t hash[32]);

/* NODE_MAX_DELTA: a contribution moving a weight further than this in one round is refused. */
#define NODE_MAX_DELTA 1e4f

/* node_fetch_blob (worker) gets blob hash for job j: from peer `first` (an author; -1: none) and the
 * coordinator, pinned by manifest, at most max_size bytes (0: the largest contribution). */
int node_fetch_blob(spes_node *n, spes_node_job *j, const uint8_t *hash, int first, const uint8_t *manifest,
                    uint64_t max_size);

/* node_author is the peer of job j that is member `node`, or -1. */
int node_author(const spes_node_job *j, uint32_t node);

/* node_job_fail records rc and the error message in job j and returns rc. */
int node_job_fail(spes_node_job *j, int rc);

/* node_encode_shards (training worker, holding base) publishes the shared block of contribution c
 * as `shards` group blobs in the codec into the train job j's results, encoding against base with
 * the residual's shared block (node_shard.c). */
int node_encode_shards(spes_node *n, spes_node_job *j, const spes_contrib *c, uint32_t codec, int shards);

/* node_job_aggregate runs an aggregate job: fetch, check and average each task's shards. */
int node_job_aggregate(spes_node *n, spes_node_job *j);

/* node_apply_aggregates writes the shared block of S_{r+1} into p from the aggregates apply job j names. */
int node_apply_aggregates(spes_node *n, spes_node_job *j, float *p);

/* node_own_shards fills own's shared block from this node's shard blobs of its round (a contribution
 * left out keeps the whole of what it sent as its residual). */
int node_own_shards(spes_node *n, spes_contrib *own);

/* node_publish_progress makes the trainer's step, loss and speed visible to the loop (worker only). */
void node_publish_progress(spes_node *n);

#endif
