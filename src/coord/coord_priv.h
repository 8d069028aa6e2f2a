/* coord_priv.h: the coordinator's tables and the helpers its files share
 * (internal to src/coord). Nothing here does I/O: replies, persists and log
 * lines are queued as actions (coord.c). */
#ifndef SPES_COORD_COORD_PRIV_H
#define SPES_COORD_COORD_PRIV_H

#include <stdint.h>

#include "coord/coord.h"
#include "proto/spes.pb-c.h"

#include "core/nodestate.h"

/* coord_member is one row of the membership table. */
typedef struct coord_member {
    uint32_t id;
    char name[64];
    char url[512];
    int state;             /* Spes__Wire__NodeState */
    uint8_t *cols;         /* (E) columns from the next round on */
    uint8_t *cur;          /* (E) columns in the round now open (0 if not participating) */
    int participant;       /* expected to contribute to the open round */
    uint64_t round, step;  /* last reported */
    uint64_t last_seen_ms; /* wall clock, for status */
    uint64_t seen_mono_ms; /* the same on the monotonic clock, for failure detection (0: not seen yet) */
    double loss, tps;
    uint8_t digest[32];
    uint64_t digest_round; /* round the digest is for (S_{digest_round}); 0 = none */
    int announced;         /* for the open round */
    uint32_t announced_ms; /* when, in ms after the round opened */
    uint8_t blob[32], manifest[32];
    uint64_t blob_size, tokens;
    double blob_loss;
    Spes__Wire__NodeCounters counters; /* last reported in a heartbeat (docs/counters.md) */
    int have_counters;
    struct coord_group *shards; /* (SPES_COORD_MAX_SHARDS, allocated at its first sharded announcement)
                                 * the shards of its contribution to the open round */
    int out;       /* sharded round being checked: 0 still in, COORD_OUT_REFUSED, COORD_OUT_LATE */
    char why[256]; /* COORD_OUT_REFUSED: why */
} coord_member;

/* SPES_COORD_MAX_SHARDS bounds a round's shards (so that an Announce stays a small message). */
#define SPES_COORD_MAX_SHARDS 128
enum { COORD_OUT_REFUSED = 1, COORD_OUT_LATE = 2 };

/* coord_group is a blob of a sharded round: a contribution's shard or an aggregate. */
typedef struct coord_group {
    uint8_t hash[32], manifest[32];
    uint64_t size;
} coord_group;

/* coord_shard is one shard of the open round's shared block while the round is checked. */
typedef struct coord_shard {
    int agg;            /* member index of its aggregator now */
    int tries;          /* aggregators tried before it (the next is the backup) */
    int reported;       /* for the current attempt */
    uint64_t issued_ms; /* monotonic: when agg was given it */
    coord_group out;    /* the aggregate, once reported with every input passed */
    int aud;            /* member index of its auditor (-1: not audited this round) */
    int aud_reported;   /* for the current attempt */
    uint64_t aud_issued_ms;
    coord_group aud_out; /* the auditor's aggregate */
    int ref;             /* the coordinator's own node, asked when the two differ (-1: not asked) */
    int ref_reported;
    uint64_t ref_issued_ms;
    coord_group ref_out;
} coord_shard;

/* coord_straggler is a participant that announced far behind its round's median, or not at all. */
typedef struct coord_straggler {
    uint32_t id;
    uint32_t behind_ms;
    int missed;
} coord_straggler;

#define SPES_COORD_DEADLINE_SAMPLES 256 /* announcements the adaptive deadline looks at */
/* SPES_COORD_COMMIT_HISTORY: Commits a node behind may still get (the last and 2 older), as many as
 * SPES_NODE_KEEP_ROUNDS, the rounds whose blobs nodes keep. */
#define SPES_COORD_COMMIT_HISTORY 3
#define SPES_COORD_ACCEPT_PEERS 8 /* members an Accept names as sources of the agreed state */
#define SPES_COORD_DEADLINE_MIN_SAMPLES 8
#define SPES_COORD_MAX_STRAGGLERS 8

/* coord_barred is an evicted member whose slot was reclaimed: its name may not join again. */
typedef struct coord_barred {
    uint32_t id;
    char name[64];
} coord_barred;

/* coord_departed is what status keeps of a member whose slot was reclaimed. */
typedef struct coord_departed {
    uint32_t id;
    char name[64];
    int state;             /* LEFT, FAILED or EVICTED */
    uint64_t round;        /* the last round it reported */
    uint64_t last_seen_ms; /* wall clock */
} coord_departed;

/* coord_ckpt records one checkpoint of the run. */
typedef struct coord_ckpt {
    char id[SPES_COORD_ID_LEN];
    uint64_t round, step; /* the checkpoint holds S_round, after `step` steps */
    uint8_t hash[32];
    int hash_known;
    uint64_t created_ms;
    uint32_t *holders; /* (nholders) node ids that saved their state with it */
    int nholders;
    int complete; /* the coordinator's own node holds it: restorable */
} coord_ckpt;

/* coord_waiter is an operator waiting for a checkpoint (`save --wait`). */
typedef struct coord_waiter {
    spes_coord_to to;
    char id[SPES_COORD_ID_LEN];
} coord_waiter;

/* spes_coord_sm is the coordinator (see coord.h). */
struct spes_coord_sm {
    spes_coord_settings set;
    spes_run_config run;
    char *run_json;
    char run_id[40];
    int E;
    uint64_t shared_numel, column_numel; /* the model's layout sizes */
    int nmem, cap;
    coord_member *mem; /* (cap) the table, in id order */
    int *val_idx;      /* (cap) members whose contributions are being validated, id order */
    int nval;
    uint32_t *mismatch; /* (cap) ids whose digest of the last round differs */
    int nmismatch;
    uint32_t next_id;
    coord_barred *barred; /* (nbarred) evicted members whose slots were reclaimed, oldest first */
    int nbarred;
    coord_departed departed[SPES_COORD_MAX_DEPARTED]; /* members whose slots were reclaimed, oldest first */
    int ndeparted;
    uint64_t round;         /* the open round r: contributions make S_{r+1} */
    uint64_t step;          /* steps done at the start of round r */
    uint8_t state_hash[32]; /* digest of S_r */
    int state_hash_known;
    uint8_t prev_hash[32]; /* digest of S_{round-1}, for nodes that must apply the last commit */
    int prev_known;
    uint64_t round_open_ms; /* monotonic, like started_ms and last_tick_ms */
    int validating;
    /* the sharded round (docs/design.md, "The sharded round"; coord_shard.c) */
    int nshards; /* the open round's shards (0: not sharded) */
    coord_shard shard[SPES_COORD_MAX_SHARDS];
    uint32_t attempt; /* the contributor list being checked and averaged (it only shrinks) */
    int attempt_nin;  /* contributions in that list */
    int checking;     /* closed: its shards are being checked and averaged */
    int own_checked;  /* the own node's check of the contributions' columns came back */
    int last_audited; /* the last round's shards that a second node recomputed */
    uint32_t last_audit_mismatch[SPES_COORD_MAX_SHARDS]; /* (nlast_audit_mismatch) their aggregators */
    int nlast_audit_mismatch;
    uint64_t deadline_ms; /* the open round's deadline (coord_deadline.c) */
    uint32_t
        ann_ms[SPES_COORD_DEADLINE_SAMPLES]; /* recent announcements, ms after their round opened (a ring) */
    int nann, ann_next;
    coord_straggler strag[SPES_COORD_MAX_STRAGGLERS]; /* the last round's, the worst first */
    int nstrag;
    uint32_t last_median_ms; /* the last round's median announcement */
    uint64_t val_said_round; /* the round and count "checking N contribution(s)" was last logged for */
    int val_said_n;          /* (-1: never): asking again while our node is late says nothing new */
    uint8_t *last_commit;    /* encoded Commit envelope of round - 1 */
    size_t last_commit_len;
    /* the Commits of the rounds before it (in memory only), for a node catching up: the
     * contributions they name are still held, as nodes keep SPES_NODE_KEEP_ROUNDS rounds */
    struct {
        uint64_t round;
        uint8_t *data; /* NULL: empty slot */
        size_t len;
    } older[SPES_COORD_COMMIT_HISTORY - 1];
    /* last round, for status */
    uint32_t last_contributors;
    int last_merge;
    char last_refused[SPES_COORD_MAX_REFUSED][256];
    uint32_t last_refused_id[SPES_COORD_MAX_REFUSED];
    int nlast_refused;
    uint64_t last_commit_ms;
    char *saved; /* the state text last persisted (an unchanged state is not rewritten) */
    coord_ckpt ckpts[SPES_COORD_MAX_CKPTS];
    int nckpt;
    char pending_ckpt[SPES_COORD_ID_LEN]; /* goes into the next commit */
    coord_waiter waiters[SPES_COORD_MAX_WAITERS];
    int nwaiters;
    int restored_active; /* members active before a coordinator restart */
    uint64_t started_ms;
    uint64_t last_tick_ms; /* when the tick last ran: a longer gap is a stall of the caller */
    spes_coord_action *q;  /* (qcap) queued actions, qhead..qhead+qlen */
    size_t qhead, qlen, qcap;
};

/* coord_push queues a copy of a (its owned pointers move into the queue); on failure a is finished. */
int coord_push(spes_coord_sm *c, spes_coord_action *a);

/* coord_log queues a log line. */
void coord_log(spes_coord_sm *c, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* coord_reply_raw queues a reply of these bytes (copied; NULL: drop the request). */
void coord_reply_raw(spes_coord_sm *c, spes_coord_to to, const uint8_t *data, size_t len);

/* coord_reply_msg encodes m as an envelope of the given type and queues it as the reply. */
void coord_reply_msg(spes_coord_sm *c, spes_coord_to to, int type, const ProtobufCMessage *m);

/* coord_reply_ack replies with an Ack carrying text. */
void coord_reply_ack(spes_coord_sm *c, spes_coord_to to, const char *text);

/* coord_reply_error replies with an Error envelope (code err, in reply to a message type). */
void coord_reply_error(spes_coord_sm *c, spes_coord_to to, int err, int in_reply_to, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* coord_save queues the persisted state if it changed since the last one. */
void coord_save(spes_coord_sm *c);

/* coord_state_json returns the persisted state as malloc'd JSON text (coord_store.c). */
char *coord_state_json(const spes_coord_sm *c);

/* coord_state_load reads the persisted state from JSON text into an empty coordinator (coord_store.c). */
int coord_state_load(spes_coord_sm *c, const char *json, const char *origin);

/* coord_add_member appends a cleared member row (columns allocated), growing the table; NULL when full. */
coord_member *coord_add_member(spes_coord_sm *c);

/* coord_reclaim frees the slot of the departed member (left, failed or evicted, not in the open
 * round) heard from longest ago, keeping an evicted one's name barred; 0, or -1 if none may go. */
int coord_reclaim(spes_coord_sm *c);

/* coord_is_barred says whether name is an evicted member whose slot was reclaimed. */
int coord_is_barred(const spes_coord_sm *c, const char *name);

/* coord_departed_add keeps a summary of member m, whose slot is reclaimed, for status (the oldest
 * goes beyond SPES_COORD_MAX_DEPARTED). */
void coord_departed_add(spes_coord_sm *c, const coord_departed *d);

/* coord_bar remembers an evicted member's id and name (the oldest goes beyond SPES_COORD_MAX_BARRED). */
int coord_bar(spes_coord_sm *c, uint32_t id, const char *name);

/* coord_find returns the member with this name, or NULL. */
coord_member *coord_find(spes_coord_sm *c, const char *name);

/* coord_find_id returns the member with this id, or NULL. */
coord_member *coord_find_id(spes_coord_sm *c, uint32_t id);

/* coord_member_seen records that m was heard from now. */
void coord_member_seen(coord_member *m, spes_coord_now now);

/* coord_member_active says whether m takes part in the run (active or joining). */
int coord_member_active(const coord_member *m);

/* coord_deal_columns deals the next round's columns over the active members. */
void coord_deal_columns(spes_coord_sm *c);

/* coord_rotate_columns hands every active member's columns to the next active
 * member in table order (the last's to the first): spes.rotate_interval, so
 * that each expert trains on every member's data in turn (docs/convergence.md). */
void coord_rotate_columns(spes_coord_sm *c);

/* coord_train_columns writes to out (E bytes) the columns member i trains: its
 * dealt ones and, with spes.column_owners R > 1, those dealt to the next R - 1
 * active members in table order (cyclic), so that every column has R owners
 * when there are R members (docs/design.md, "Columns"). */
void coord_train_columns(const spes_coord_sm *c, int i, uint8_t *out);

/* coord_train_cols_fill writes the indices of the columns member i trains
 * (coord_train_columns) to out (room for E) and returns their count. */
size_t coord_train_cols_fill(const spes_coord_sm *c, int i, uint32_t *out);

/* coord_commit_for finds the encoded Commit of round r in the history (NULL if not held). */
const uint8_t *coord_commit_for(const spes_coord_sm *c, uint64_t r, size_t *len);

/* coord_commits_forget drops the history of Commits (the last one included). */
void coord_commits_forget(spes_coord_sm *c);

/* coord_shards_count is how many shards a round opened now would have. */
int coord_shards_count(const spes_coord_sm *c);

/* coord_shards_announce checks and keeps an Announce's shards for member m; 0, or an error replied. */
int coord_shards_announce(spes_coord_sm *c, coord_member *m, const Spes__Wire__Announce *a, spes_coord_to to);

/* coord_shards_start closes the open round of a sharded run: the own node checks the contributions'
 * columns (VALIDATE) while aggregators check and average the shards. */
void coord_shards_start(spes_coord_sm *c, spes_coord_now now);

/* coord_shards_task replies to member m's heartbeat with its aggregation tasks, if it has any (1). */
int coord_shards_task(spes_coord_sm *c, const coord_member *m, spes_coord_to to);

/* coord_shards_checked takes the own node's check of the columns (spes_coord_sm_validated's arguments). */
void coord_shards_checked(spes_coord_sm *c, spes_coord_now now, const int *ok, char (*reasons)[256]);

/* coord_aggregate_report takes an aggregator's results. */
void coord_aggregate_report(spes_coord_sm *c, spes_coord_now now, const Spes__Wire__AggregateReport *r,
                            const spes_pki_identity *peer, spes_coord_to to);

/* coord_shards_tick hands the shards whose aggregators missed their deadline to their backups. */
void coord_shards_tick(spes_coord_sm *c, spes_coord_now now);

/* coord_commit_round commits the open round: ok[k] for contribution k of val_idx is 1 (in), 0
 * (refused: reasons[k]) or -1 (left out, late); the commit carries the shards' aggregates. */
void coord_commit_round(spes_coord_sm *c, spes_coord_now now, const int *ok, char (*reasons)[256]);

/* coord_deadline is the open round's deadline in ms after it opened (coord_deadline.c). */
uint64_t coord_deadline(const spes_coord_sm *c);

/* coord_round_timing, as the open round commits, records its participants'
 * announcements, finds its stragglers and sets the next round's deadline. */
void coord_round_timing(spes_coord_sm *c);

/* coord_open_round deals the columns and fixes the participants of round c->round. */
void coord_open_round(spes_coord_sm *c, spes_coord_now now);

/* coord_cols_fill writes the set columns' indices to out (room for E) and returns their count. */
size_t coord_cols_fill(const uint8_t *cols, int E, uint32_t *out);

/* coord_peer_is_operator says whether peer may change the run: an operator
 * certificate, the local control socket (the operator role, no name), or a
 * peer of a plain test run (no identity at all). */
int coord_peer_is_operator(const spes_pki_identity *peer);

/* coord_peer_is_local says whether peer is the local control socket (the operator role, no name). */
int coord_peer_is_local(const spes_pki_identity *peer);

/* coord_any_announced says whether a participant announced in the open round. */
int coord_any_announced(const spes_coord_sm *c);

/* coord_fill_member fills a MemberInfo from a member (cols: room for E). */
void coord_fill_member(const spes_coord_sm *c, const coord_member *m, Spes__Wire__MemberInfo *mi,
                       uint32_t *cols);

/* coord_announce handles an Announce (coord_round.c). */
void coord_announce(spes_coord_sm *c, spes_coord_now now, const Spes__Wire__Announce *a,
                    const spes_pki_identity *peer, spes_coord_to to);

/* coord_digest handles a Digest (coord_round.c). */
void coord_digest(spes_coord_sm *c, spes_coord_now now, const Spes__Wire__Digest *g,
                  const spes_pki_identity *peer, spes_coord_to to);

/* coord_status answers a StatusRequest (coord_ops.c). */
void coord_status(spes_coord_sm *c, spes_coord_to to);

/* coord_members answers a MembersRequest; changes need the operator role (coord_ops.c). */
void coord_members(spes_coord_sm *c, const Spes__Wire__MembersRequest *r, const spes_pki_identity *peer,
                   spes_coord_to to);

/* coord_checkpoint answers a CheckpointRequest: save, list, restore, export (coord_ckpt.c). */
void coord_checkpoint(spes_coord_sm *c, spes_coord_now now, const Spes__Wire__CheckpointRequest *r,
                      const spes_pki_identity *peer, spes_coord_to to);

/* coord_checkpoint_saved records that node m saved checkpoint id with state digest hash (coord_ckpt.c). */
void coord_checkpoint_saved(spes_coord_sm *c, coord_member *m, const char *id, const uint8_t *hash);

/* coord_ckpt_clear frees a checkpoint record's holders and clears it. */
void coord_ckpt_clear(coord_ckpt *k);

/* coord_ckpt_add_holder adds node id to k's holders (once). */
int coord_ckpt_add_holder(coord_ckpt *k, uint32_t id);

/* coord_ckpt_json / coord_ckpt_load persist the checkpoint records (coord_ckpt.c). */
struct json_t;
struct json_t *coord_ckpt_json(const spes_coord_sm *c);
int coord_ckpt_load(spes_coord_sm *c, struct json_t *arr, const char *origin);

#endif
