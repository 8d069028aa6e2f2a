/* coord_state.h: the coordinator's tables and their persistence (internal to
 * coord*.c). Everything here is owned by the loop thread. */
#ifndef SPES_DAEMON_COORD_STATE_H
#define SPES_DAEMON_COORD_STATE_H

#include <stdint.h>

#include "config/config.h"
#include "daemon/coord.h"
#include "proto/spes.pb-c.h"

#define COORD_MAX_MEMBERS 256

/* coord_member is one row of the membership table. */
typedef struct coord_member {
    uint32_t id;
    char name[64];
    char url[512];
    int state;              /* Spes__Wire__NodeState */
    uint8_t *cols;          /* (E) columns from the next round on */
    uint8_t *cur;           /* (E) columns in the round now open (0 if not participating) */
    int participant;        /* expected to contribute to the open round */
    uint64_t round, step;   /* last reported */
    uint64_t last_seen_ms;  /* wall clock, for status */
    uint64_t seen_mono_ms;  /* the same on the monotonic clock, for failure detection (0: not seen yet) */
    double loss, tps;
    uint8_t digest[32];
    uint64_t digest_round;  /* round the digest is for (S_{digest_round}); 0 = none */
    int announced;          /* for the open round */
    uint8_t blob[32], manifest[32];
    uint64_t blob_size, tokens;
    double blob_loss;
    Spes__Wire__NodeCounters counters; /* last reported in a heartbeat (docs/counters.md) */
    int have_counters;
} coord_member;

#define COORD_MAX_CKPTS 64
#define COORD_MAX_WAITERS 16

/* coord_ckpt records one checkpoint of the run. */
typedef struct coord_ckpt {
    char id[32];
    uint64_t round, step;   /* the checkpoint holds S_round, after `step` steps */
    uint8_t hash[32];
    int hash_known;
    uint64_t created_ms;
    uint32_t holders[COORD_MAX_MEMBERS]; /* node ids that saved their state with it */
    int nholders;
    int complete;           /* the coordinator's own node holds it: restorable */
} coord_ckpt;

/* coord_waiter is an operator waiting for a checkpoint (`save --wait`). */
typedef struct coord_waiter {
    spes_reply_fn reply;
    void *ctx;
    char id[32];
} coord_waiter;

/* spes_coord is the coordinator (see coord.h). */
struct spes_coord {
    spes_daemon *d;
    spes_run_config run;
    char *run_json;
    char run_id[40];
    int E;
    uint64_t shared_numel, column_numel; /* the model's layout sizes */
    int nmem;
    coord_member mem[COORD_MAX_MEMBERS];
    uint32_t next_id;
    uint64_t round;          /* the open round r: contributions make S_{r+1} */
    uint64_t step;           /* steps done at the start of round r */
    uint8_t state_hash[32];  /* digest of S_r */
    int state_hash_known;
    uint8_t prev_hash[32];   /* digest of S_{round-1}, for nodes that must apply the last commit */
    int prev_known;
    uint64_t round_open_ms;  /* monotonic, like started_ms and last_tick_ms */
    int validating;
    int val_idx[COORD_MAX_MEMBERS]; /* members whose contributions are being validated, id order */
    int nval;
    uint8_t *last_commit;    /* encoded Commit envelope of round - 1 */
    size_t last_commit_len;
    /* last round, for status */
    uint32_t last_contributors;
    int last_merge;
    char last_refused[8][256];
    int nlast_refused;
    uint32_t mismatch[COORD_MAX_MEMBERS];
    int nmismatch;
    uint64_t last_commit_ms;
    char state_path[600];
    char *saved; /* what coord_save last wrote there (an unchanged state is not rewritten) */
    coord_ckpt ckpts[COORD_MAX_CKPTS];
    int nckpt;
    char pending_ckpt[32];   /* goes into the next commit */
    coord_waiter waiters[COORD_MAX_WAITERS];
    int nwaiters;
    int restored_active;     /* members active before a coordinator restart */
    uint64_t started_ms;
    uint64_t last_tick_ms;   /* when spes_coord_tick last ran: a longer gap is a stall of this daemon */
};

/* coord_save writes the coordinator's state durably (state_dir/coordinator.json). */
int coord_save(spes_coord *c);

/* coord_load reads it back; SPES_ENOENT if there is none yet. */
int coord_load(spes_coord *c);

/* coord_find returns the member with this name, or NULL. */
coord_member *coord_find(spes_coord *c, const char *name);

/* coord_find_id returns the member with this id, or NULL. */
coord_member *coord_find_id(spes_coord *c, uint32_t id);

/* coord_reply_msg encodes m as an envelope of the given type and replies with it. */
void coord_reply_msg(spes_reply_fn reply, void *ctx, int type, const ProtobufCMessage *m);

/* coord_reply_ack replies with an Ack carrying text. */
void coord_reply_ack(spes_reply_fn reply, void *ctx, const char *text);

/* coord_member_seen records that m was heard from now. */
void coord_member_seen(coord_member *m);

/* coord_member_active says whether m takes part in the run (active or joining). */
int coord_member_active(const coord_member *m);

/* coord_rebalance deals the next round's columns over the active members. */
void coord_rebalance(spes_coord *c);

/* coord_open_round fixes the participants and columns of round c->round. */
void coord_open_round(spes_coord *c);

/* coord_cols_fill writes the set columns' indices to out (room for E) and returns their count. */
size_t coord_cols_fill(const uint8_t *cols, int E, uint32_t *out);

/* coord_peer_is_operator says whether peer may change the run: an operator
 * certificate, or the local control socket (no certificate, no name). */
int coord_peer_is_operator(const spes_pki_identity *peer);

/* coord_cols_list returns the set columns as a malloc'd list of *n entries. */
uint32_t *coord_cols_list(const uint8_t *cols, int E, size_t *n);

/* coord_any_announced says whether a participant announced in the open round. */
int coord_any_announced(const spes_coord *c);

/* coord_fill_member fills a MemberInfo from a member (columns malloc'd into cols). */
void coord_fill_member(const spes_coord *c, const coord_member *m, Spes__Wire__MemberInfo *mi, uint32_t *cols);

/* coord_status answers a StatusRequest. */
void coord_status(spes_coord *c, spes_reply_fn reply, void *ctx);

/* coord_members answers a MembersRequest (changes need the operator role). */
void coord_members(spes_coord *c, const Spes__Wire__MembersRequest *r, const spes_pki_identity *peer,
                   spes_reply_fn reply, void *ctx);

/* coord_checkpoint answers a CheckpointRequest (save, list, restore, export). */
void coord_checkpoint(spes_coord *c, const Spes__Wire__CheckpointRequest *r, const spes_pki_identity *peer,
                      spes_reply_fn reply, void *ctx);

/* coord_checkpoint_saved records that node m saved checkpoint id with state digest hash. */
void coord_checkpoint_saved(spes_coord *c, coord_member *m, const char *id, const uint8_t *hash);

/* coord_ckpt_json / coord_ckpt_load persist the checkpoint records (coord_store.c). */
struct json_t;
struct json_t *coord_ckpt_json(const spes_coord *c);
int coord_ckpt_load(spes_coord *c, struct json_t *arr);

#endif
