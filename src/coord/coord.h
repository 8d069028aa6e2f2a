/* coord.h: the coordinator of a run as a state machine that does no I/O
 * (docs/protocol.md). Its inputs are decoded requests with the sender's
 * verified identity, periodic ticks, the results of contribution checks and
 * of checkpoint file work, each with an explicit `now`. Its outputs are
 * actions queued for the caller: reply envelopes, state to persist durably,
 * contributions to check, checkpoint file work, log lines. It never reads a
 * clock, a socket or a file; the daemon (daemon/coord_glue.c) carries out
 * what it returns. One thread at a time may use a spes_coord_sm. */
#ifndef SPES_COORD_COORD_H
#define SPES_COORD_COORD_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "pki/pki.h"

/* SPES_COORD_MAX_MEMBERS is the member table's capacity: joins beyond it are refused as "the run is full". */
#define SPES_COORD_MAX_MEMBERS SPES_MAX_MEMBERS
/* SPES_COORD_MAX_BARRED is how many evicted names are remembered once their slots are reclaimed
 * (the oldest is forgotten first). */
#define SPES_COORD_MAX_BARRED 1024
/* SPES_COORD_MAX_DEPARTED is how many members whose slots were reclaimed status still shows
 * (the oldest is forgotten first). */
#define SPES_COORD_MAX_DEPARTED 64
/* SPES_COORD_MAX_CKPTS is how many checkpoint records are kept (the oldest goes first). */
#define SPES_COORD_MAX_CKPTS 64
/* SPES_COORD_MAX_WAITERS is how many operators may wait for a checkpoint at once. */
#define SPES_COORD_MAX_WAITERS 16
/* SPES_COORD_MAX_REFUSED is how many refusals of the last round the status shows. */
#define SPES_COORD_MAX_REFUSED 8
/* SPES_COORD_ID_LEN bounds a checkpoint id (with its NUL). */
#define SPES_COORD_ID_LEN 32
/* SPES_COORD_EXPORT_NAME_MAX bounds the NAME of an export to exports/NAME (bytes, without the NUL). */
#define SPES_COORD_EXPORT_NAME_MAX 128

/* SPES_COORD_LOCAL_OPERATOR initializes the identity of a local control socket client: the operator role, no name. */
#define SPES_COORD_LOCAL_OPERATOR                                                                            \
    {                                                                                                        \
        .name = "", .role = SPES_ROLE_OPERATOR                                                               \
    }

typedef struct spes_coord_sm spes_coord_sm;

/* spes_coord_reply_fn is how the caller answers a request; the library stores it but never calls it. */
typedef void (*spes_coord_reply_fn)(void *ctx, const uint8_t *data, size_t len);

/* spes_coord_to names whoever waits for a reply: handed back unchanged in REPLY actions. */
typedef struct spes_coord_to {
    spes_coord_reply_fn fn;
    void *ctx;
} spes_coord_to;

/* spes_coord_now is the time of an input: monotonic ms (deadlines) and unix wall ms (reports). */
typedef struct spes_coord_now {
    uint64_t mono_ms;
    uint64_t wall_ms;
} spes_coord_now;

/* spes_coord_settings are the daemon settings the coordinator decides with. */
typedef struct spes_coord_settings {
    char name[64];    /* the coordinator's own node (its digest is the agreed one) */
    char listen[512]; /* the URL members reach the coordinator at (its advertise URL), shown in status */
    int approve;      /* admission "approve": new nodes wait for an operator */
    int min_nodes;    /* round 0 opens once this many nodes are active (1..SPES_COORD_MAX_MEMBERS) */
    int failure_timeout_ms; /* silence after which an active member is failed */
    int round_deadline_ms; /* a round commits with whoever announced once its deadline passes: at most this */
    int round_deadline_min_ms; /* the adaptive deadline's floor (>= round_deadline_ms: a fixed deadline) */
    uint64_t tick_ms;          /* the period the caller ticks at (a longer gap is a stall of the caller) */
} spes_coord_settings;

/* spes_coord_action_kind says what an action asks the caller to do. */
enum spes_coord_action_kind {
    SPES_COORD_REPLY = 1,      /* to.fn(to.ctx, data, len); data NULL: drop the request */
    SPES_COORD_PERSIST_STATE,  /* write data (coordinator.json text) durably, then nothing; on failure
                                * call spes_coord_sm_persist_failed */
    SPES_COORD_PERSIST_COMMIT, /* write data (the last Commit envelope, for `round`) durably */
    SPES_COORD_VALIDATE,       /* have the own node fetch and check the n announced contributions of
                                * `round`; report with spes_coord_sm_validated, or call
                                * spes_coord_sm_validation_failed if the check cannot start */
    SPES_COORD_LOG,            /* log text at level (enum spes_log_level) */
    SPES_COORD_CKPT_FINAL,     /* copy the own node's state of `round` to checkpoint id; then
                                * spes_coord_sm_final_saved */
    SPES_COORD_CKPT_RESTORE,   /* republish checkpoint id's state, check it against hash; then
                                * spes_coord_sm_restored */
    SPES_COORD_CKPT_EXPORT,    /* write checkpoint id as Hugging Face files to out_dir (absolute, or
                                * exports/NAME relative to the state directory); then
                                * spes_coord_sm_exported */
};

/* spes_coord_action is one output; the caller owns it once taken and frees it with spes_coord_action_fini. */
typedef struct spes_coord_action {
    int kind;
    spes_coord_to to; /* REPLY and CKPT_*: who waits */
    uint8_t *data;    /* REPLY, PERSIST_*: bytes; LOG: NUL-terminated text */
    size_t len;
    int level;                  /* LOG */
    uint64_t round;             /* PERSIST_COMMIT, VALIDATE, CKPT_FINAL, CKPT_RESTORE */
    int n;                      /* VALIDATE: contributions, in member id order */
    uint8_t (*hashes)[32];      /* VALIDATE: (n) blob hashes */
    uint8_t (*manifests)[32];   /* VALIDATE: (n) manifest hashes */
    char **urls, **names;       /* VALIDATE: (n) authors' listen URLs and names */
    uint32_t *ids;              /* VALIDATE: (n) authors' member ids */
    uint8_t *cols;              /* VALIDATE: (n * E) each author's columns in the round (1 = its) */
    char id[SPES_COORD_ID_LEN]; /* CKPT_* */
    uint8_t hash[32];           /* CKPT_RESTORE: the recorded digest of its state */
    char *out_dir;              /* CKPT_EXPORT */
} spes_coord_action;

/* spes_coord_action_fini frees what an action owns. */
void spes_coord_action_fini(spes_coord_action *a);

/* spes_coord_sm_alloc makes a coordinator for a validated run config (copied) with no run yet. */
int spes_coord_sm_alloc(spes_coord_sm **out, const spes_run_config *run, const spes_coord_settings *s);

/* spes_coord_sm_free releases the coordinator and any actions not taken. */
void spes_coord_sm_free(spes_coord_sm *c);

/* spes_coord_sm_new_run starts run run_id at round 0 from S_0's digest and queues its first persist. */
int spes_coord_sm_new_run(spes_coord_sm *c, const char *run_id, const uint8_t digest[32]);

/* spes_coord_sm_load resumes from a persisted state (coordinator.json text; origin names it in
 * errors): members that were active must be heard from again before they count. */
int spes_coord_sm_load(spes_coord_sm *c, const char *json, const char *origin);

/* spes_coord_sm_set_state_hash supplies the agreed digest of S_round after a restart that lost it;
 * ignored unless round is the run's round. */
void spes_coord_sm_set_state_hash(spes_coord_sm *c, uint64_t round, const uint8_t hash[32]);

/* spes_coord_sm_set_last_commit supplies the last Commit envelope (copied) for nodes that still wait for it. */
int spes_coord_sm_set_last_commit(spes_coord_sm *c, const uint8_t *data, size_t len);

/* spes_coord_sm_start starts the clocks: waiting for members and the round deadline count from now. */
void spes_coord_sm_start(spes_coord_sm *c, spes_coord_now now);

/* spes_coord_sm_request handles one request of the given type from peer, as spes_proto_decode
 * returns it (checked: hashes are 32 bytes, strings bounded UTF-8); its reply (now or later)
 * is a REPLY action to `to`. peer is the TLS certificate's identity; the local control socket
 * passes the operator role with an empty name (SPES_COORD_LOCAL_OPERATOR), a plain test run
 * no identity at all. Node messages need a node certificate speaking for its own member. */
void spes_coord_sm_request(spes_coord_sm *c, spes_coord_now now, int type, const ProtobufCMessage *msg,
                           const spes_pki_identity *peer, spes_coord_to to);

/* spes_coord_sm_tick runs failure detection and the round deadlines. */
void spes_coord_sm_tick(spes_coord_sm *c, spes_coord_now now);

/* spes_coord_sm_validated takes the own node's check of round's n contributions (the VALIDATE
 * order): ok[i] whether contribution i passed, reasons[i] why not; commits the round. */
void spes_coord_sm_validated(spes_coord_sm *c, spes_coord_now now, uint64_t round, int n, const int *ok,
                             char (*reasons)[256]);

/* spes_coord_sm_validation_failed says the VALIDATE of round could not start: the next tick retries. */
void spes_coord_sm_validation_failed(spes_coord_sm *c, uint64_t round);

/* spes_coord_sm_persist_failed says the last PERSIST_STATE was not written: the next change rewrites it. */
void spes_coord_sm_persist_failed(spes_coord_sm *c);

/* spes_coord_sm_final_saved reports a CKPT_FINAL: rc 0, or an error code with its message. */
void spes_coord_sm_final_saved(spes_coord_sm *c, spes_coord_now now, spes_coord_to to, const char *id, int rc,
                               const char *err);

/* spes_coord_sm_restored reports a CKPT_RESTORE: on rc 0 the run rewinds to checkpoint id. */
void spes_coord_sm_restored(spes_coord_sm *c, spes_coord_now now, spes_coord_to to, const char *id, int rc,
                            const char *err);

/* spes_coord_sm_exported reports a CKPT_EXPORT of checkpoint id to out_dir. */
void spes_coord_sm_exported(spes_coord_sm *c, spes_coord_to to, const char *id, const char *out_dir, int rc,
                            const char *err);

/* spes_coord_sm_next_action moves the oldest queued action to *a (1), or returns 0 when none is left. */
int spes_coord_sm_next_action(spes_coord_sm *c, spes_coord_action *a);

/* spes_coord_sm_round returns the open round r (contributions make S_{r+1}). */
uint64_t spes_coord_sm_round(const spes_coord_sm *c);

/* spes_coord_sm_state_hash returns whether the digest of S_round is known, and copies it to out if so. */
int spes_coord_sm_state_hash(const spes_coord_sm *c, uint8_t out[32]);

/* spes_coord_sm_run_id returns the run's id. */
const char *spes_coord_sm_run_id(const spes_coord_sm *c);

/* spes_coord_sm_members returns how many members the table holds. */
int spes_coord_sm_members(const spes_coord_sm *c);

#endif
