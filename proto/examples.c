/* examples.c: one representative, fully populated message of every type.
 * Used by the codec tests, the fuzz seed generator and documentation; it
 * exercises every field of every schema so a round trip covers them all.
 * Built on the stack from constants; never reads outside input. */
#include "proto/examples.h"

#include <string.h>

#include "core/error.h"

static uint8_t hash_a[32] = {0xa1, 0xa2, 0xa3, [31] = 0xaf};
static uint8_t hash_b[32] = {0xb1, 0xb2, 0xb3, [31] = 0xbf};
static uint32_t cols_a[] = {0, 3, 7};
static uint32_t cols_b[] = {1, 2};
static uint8_t bitmap[] = {0xff, 0x0f};

#define HASH(h) ((ProtobufCBinaryData){32, (h)})
static const uint8_t piece_bytes[] = "SPMF\0\0\0\1 pushed bytes";

/* examples_t holds every sub-message so pointers stay valid while encoding. */
typedef struct examples_t {
    Spes__Wire__Capabilities caps;
    Spes__Wire__NodeCounters counters;
    Spes__Wire__StateRef state;
    Spes__Wire__Peer peer[2];
    Spes__Wire__Peer *peers[2];
    Spes__Wire__ColumnAssignment asg[2];
    Spes__Wire__ColumnAssignment *asgs[2];
    Spes__Wire__LossStats loss;
    Spes__Wire__Contribution contrib[2];
    Spes__Wire__Contribution *contribs[2];
    Spes__Wire__Refusal refusal;
    Spes__Wire__Refusal *refusals[1];
    Spes__Wire__MemberInfo member[2];
    Spes__Wire__MemberInfo *members[2];
    Spes__Wire__Straggler strag;
    Spes__Wire__Straggler *strags[1];
    Spes__Wire__LastRound last;
    Spes__Wire__CheckpointInfo ckpt;
    Spes__Wire__CheckpointInfo *ckpts[1];
    Spes__Wire__BlobInfo blob[2];
    Spes__Wire__BlobInfo *blobs[2];
    Spes__Wire__Codec codecs[2];
    Spes__Wire__Group group[2];
    Spes__Wire__Group *groups[2];
    Spes__Wire__Aggregate agg;
    Spes__Wire__Aggregate *aggs[1];
    Spes__Wire__ShardInput input[2];
    Spes__Wire__ShardInput *inputs[2];
    Spes__Wire__ShardTask task;
    Spes__Wire__ShardTask *tasks[1];
    Spes__Wire__InputVerdict verdict[2];
    Spes__Wire__InputVerdict *verdicts[2];
    Spes__Wire__ShardResult result;
    Spes__Wire__ShardResult *results[1];
} examples_t;

/* fill_shards fills the parts of the sharded round's messages. */
static void fill_shards(examples_t *x)
{
    for (int i = 0; i < 2; i++) {
        x->group[i] = (Spes__Wire__Group)SPES__WIRE__GROUP__INIT;
        x->group[i].blob_hash = HASH(i ? hash_b : hash_a);
        x->group[i].size = 270400u + (uint64_t)i, x->group[i].manifest_hash = HASH(hash_b);
        x->groups[i] = &x->group[i];
        x->input[i] = (Spes__Wire__ShardInput)SPES__WIRE__SHARD_INPUT__INIT;
        x->input[i].node_id = (uint32_t)i + 1, x->input[i].blob = &x->group[i];
        x->input[i].name = x->peer[i].name, x->input[i].listen_url = x->peer[i].listen_url;
        x->inputs[i] = &x->input[i];
        x->verdict[i] = (Spes__Wire__InputVerdict)SPES__WIRE__INPUT_VERDICT__INIT;
        x->verdict[i].node_id = (uint32_t)i + 1, x->verdict[i].ok = !i, x->verdict[i].missing = i;
        x->verdict[i].reason = i ? "not fetched from node-1 in time" : "";
        x->verdicts[i] = &x->verdict[i];
    }
    x->agg = (Spes__Wire__Aggregate)SPES__WIRE__AGGREGATE__INIT;
    x->agg.shard = 1, x->agg.node_id = 2, x->agg.blob = &x->group[0];
    x->aggs[0] = &x->agg;
    x->task = (Spes__Wire__ShardTask)SPES__WIRE__SHARD_TASK__INIT;
    x->task.shard = 1, x->task.attempt = 2, x->task.n_inputs = 2, x->task.inputs = x->inputs;
    x->tasks[0] = &x->task;
    x->result = (Spes__Wire__ShardResult)SPES__WIRE__SHARD_RESULT__INIT;
    x->result.shard = 1, x->result.attempt = 2, x->result.n_verdicts = 2, x->result.verdicts = x->verdicts;
    x->result.aggregate = &x->group[1];
    x->results[0] = &x->result;
}

static void fill_parts(examples_t *x)
{
    x->codecs[0] = SPES__WIRE__CODEC__CODEC_FP32;
    x->codecs[1] = SPES__WIRE__CODEC__CODEC_BF16;
    x->caps = (Spes__Wire__Capabilities)SPES__WIRE__CAPABILITIES__INIT;
    x->caps.threads = 8, x->caps.memory_bytes = 1ull << 34;
    x->caps.n_codecs = 2, x->caps.codecs = x->codecs;
    x->counters = (Spes__Wire__NodeCounters)SPES__WIRE__NODE_COUNTERS__INIT;
    x->counters.control_sent_bytes = 51234, x->counters.control_received_bytes = 40960;
    x->counters.blob_sent_bytes = 3ull << 30, x->counters.blob_received_bytes = 5ull << 30;
    x->counters.sent_messages = 7001, x->counters.received_messages = 7002;
    x->counters.train_s = 1234.5, x->counters.wait_s = 321.25, x->counters.rounds = 41;
    x->state = (Spes__Wire__StateRef)SPES__WIRE__STATE_REF__INIT;
    x->state.round = 41, x->state.step = 410, x->state.state_hash = HASH(hash_a);
    for (int i = 0; i < 2; i++) {
        x->peer[i] = (Spes__Wire__Peer)SPES__WIRE__PEER__INIT;
        x->peer[i].node_id = (uint32_t)i + 1;
        x->peer[i].name = i ? "node-1" : "node-0";
        x->peer[i].listen_url = i ? "tls+tcp://[::1]:7001" : "tls+tcp://127.0.0.1:7000";
        x->peers[i] = &x->peer[i];
        x->asg[i] = (Spes__Wire__ColumnAssignment)SPES__WIRE__COLUMN_ASSIGNMENT__INIT;
        x->asg[i].node_id = (uint32_t)i + 1;
        x->asg[i].n_columns = i ? 2 : 3, x->asg[i].columns = i ? cols_b : cols_a;
        x->asgs[i] = &x->asg[i];
        x->contrib[i] = (Spes__Wire__Contribution)SPES__WIRE__CONTRIBUTION__INIT;
        x->contrib[i].node_id = (uint32_t)i + 1;
        x->contrib[i].blob_hash = HASH(i ? hash_b : hash_a);
        x->contrib[i].size = 123456789u + (uint64_t)i;
        x->contrib[i].manifest_hash = HASH(hash_b);
        x->contrib[i].tokens_trained = 65536;
        x->contrib[i].codec = x->codecs[i];
        x->contribs[i] = &x->contrib[i];
        x->member[i] = (Spes__Wire__MemberInfo)SPES__WIRE__MEMBER_INFO__INIT;
        x->member[i].node_id = (uint32_t)i + 1;
        x->member[i].name = i ? "node-1" : "node-0";
        x->member[i].state =
            i ? SPES__WIRE__NODE_STATE__NODE_STATE_DRAINING : SPES__WIRE__NODE_STATE__NODE_STATE_ACTIVE;
        x->member[i].n_columns = 2, x->member[i].columns = cols_b;
        x->member[i].round = 41;
        x->member[i].digest = i ? (ProtobufCBinaryData){0, NULL} : HASH(hash_a);
        x->member[i].last_seen_unix_ms = 1795000000000ull;
        x->member[i].tokens_per_s = 12345.5, x->member[i].loss = 3.25;
        x->member[i].listen_url = x->peer[i].listen_url;
        x->member[i].counters = i ? NULL : &x->counters;
        x->members[i] = &x->member[i];
        x->blob[i] = (Spes__Wire__BlobInfo)SPES__WIRE__BLOB_INFO__INIT;
        x->blob[i].blob_hash = HASH(i ? hash_b : hash_a);
        x->blob[i].size = 5000000, x->blob[i].manifest_hash = HASH(hash_b);
        if (i)
            x->blob[i].chunk_bitmap = (ProtobufCBinaryData){sizeof bitmap, bitmap};
        x->blobs[i] = &x->blob[i];
    }
    x->loss = (Spes__Wire__LossStats)SPES__WIRE__LOSS_STATS__INIT;
    x->loss.mean = 3.5, x->loss.min = 3.0, x->loss.max = 4.25, x->loss.last = 3.125;
    x->loss.count = 10;
    x->refusal = (Spes__Wire__Refusal)SPES__WIRE__REFUSAL__INIT;
    x->refusal.node_id = 3, x->refusal.reason = "contribution has NaN in layers.0.mlp";
    x->refusals[0] = &x->refusal;
    x->last = (Spes__Wire__LastRound)SPES__WIRE__LAST_ROUND__INIT;
    x->last.round = 40, x->last.contributors = 2, x->last.merge_applied = 1;
    x->last.digest = HASH(hash_b), x->last.n_refused = 1, x->last.refused = x->refusals;
    x->last.n_digest_mismatch = 1, x->last.digest_mismatch = cols_a + 2;
    x->last.committed_unix_ms = 1795000000001ull;
    x->strag = (Spes__Wire__Straggler)SPES__WIRE__STRAGGLER__INIT;
    x->strag.node_id = 2, x->strag.behind_ms = 4100, x->strag.missed = 0;
    x->strags[0] = &x->strag;
    x->last.n_stragglers = 1, x->last.stragglers = x->strags, x->last.median_announce_ms = 9800;
    x->last.audited = 2, x->last.n_audit_mismatch = 1, x->last.audit_mismatch = cols_a + 1;
    x->ckpt = (Spes__Wire__CheckpointInfo)SPES__WIRE__CHECKPOINT_INFO__INIT;
    x->ckpt.id = "ckpt-000040", x->ckpt.round = 40, x->ckpt.step = 400;
    x->ckpt.state_hash = HASH(hash_a), x->ckpt.created_unix_ms = 1795000000002ull;
    x->ckpt.n_holders = 2, x->ckpt.holders = cols_b, x->ckpt.complete = 1;
    x->ckpts[0] = &x->ckpt;
    fill_shards(x);
}

/* The top-level message, one union member per type. */
typedef union example_msg {
    ProtobufCMessage base;
    Spes__Wire__Join join;
    Spes__Wire__Accept accept;
    Spes__Wire__Reject reject;
    Spes__Wire__Heartbeat heartbeat;
    Spes__Wire__Leave leave;
    Spes__Wire__Announce announce;
    Spes__Wire__Commit commit;
    Spes__Wire__Digest digest;
    Spes__Wire__StatusRequest status_req;
    Spes__Wire__StatusReply status;
    Spes__Wire__MembersRequest members_req;
    Spes__Wire__MembersReply members;
    Spes__Wire__CheckpointRequest ckpt_req;
    Spes__Wire__CheckpointReply ckpt;
    Spes__Wire__BlobHave have;
    Spes__Wire__BlobWant want;
    Spes__Wire__ChunkRequest chunk;
    Spes__Wire__Error error;
    Spes__Wire__Ack ack;
    Spes__Wire__BlobPush push;
    Spes__Wire__BlobPiece piece;
    Spes__Wire__AggregateTask agg_task;
    Spes__Wire__AggregateReport agg_report;
} example_msg;

static void fill_control(int type, example_msg *u, examples_t *x)
{
    switch (type) {
    case SPES_MSG_JOIN:
        u->join = (Spes__Wire__Join)SPES__WIRE__JOIN__INIT;
        u->join.node_name = "node-1", u->join.listen_url = x->peer[1].listen_url;
        u->join.software_version = "spes 0.1.0", u->join.protocol_version = SPES_PROTO_VERSION;
        u->join.capabilities = &x->caps, u->join.have_state = &x->state;
        break;
    case SPES_MSG_ACCEPT:
        u->accept = (Spes__Wire__Accept)SPES__WIRE__ACCEPT__INIT;
        u->accept.node_id = 2, u->accept.n_columns = 3, u->accept.columns = cols_a;
        u->accept.run_config_json = "{\"spes\": {\"sync_interval\": 10}}\n";
        u->accept.round = 41, u->accept.step = 410, u->accept.state_hash = HASH(hash_a);
        u->accept.n_peers = 2, u->accept.peers = x->peers;
        u->accept.round_deadline_ms = 60000, u->accept.run_id = "run-ünïcode-1";
        u->accept.shards = 4;
        break;
    case SPES_MSG_REJECT:
        u->reject = (Spes__Wire__Reject)SPES__WIRE__REJECT__INIT;
        u->reject.code = SPES__WIRE__ERROR_CODE__ERROR_UNAUTHORIZED;
        u->reject.reason = "waiting for operator approval", u->reject.retry_after_ms = 5000;
        break;
    case SPES_MSG_HEARTBEAT:
        u->heartbeat = (Spes__Wire__Heartbeat)SPES__WIRE__HEARTBEAT__INIT;
        u->heartbeat.node_id = 2, u->heartbeat.round = 41, u->heartbeat.step = 415;
        u->heartbeat.loss = 3.75, u->heartbeat.tokens_per_s = 20480.25;
        u->heartbeat.state = SPES__WIRE__NODE_STATE__NODE_STATE_ACTIVE;
        u->heartbeat.counters = &x->counters;
        break;
    case SPES_MSG_LEAVE:
        u->leave = (Spes__Wire__Leave)SPES__WIRE__LEAVE__INIT;
        u->leave.node_id = 2, u->leave.reason = "SIGTERM";
        break;
    default: break;
    }
}

static void fill_round(int type, example_msg *u, examples_t *x)
{
    switch (type) {
    case SPES_MSG_ANNOUNCE:
        u->announce = (Spes__Wire__Announce)SPES__WIRE__ANNOUNCE__INIT;
        u->announce.node_id = 2, u->announce.round = 41, u->announce.blob_hash = HASH(hash_a);
        u->announce.size = 123456789, u->announce.manifest_hash = HASH(hash_b);
        u->announce.tokens_trained = 655360, u->announce.loss = &x->loss;
        u->announce.codec = SPES__WIRE__CODEC__CODEC_BF16;
        u->announce.n_shards = 2, u->announce.shards = x->groups;
        break;
    case SPES_MSG_COMMIT:
        u->commit = (Spes__Wire__Commit)SPES__WIRE__COMMIT__INIT;
        u->commit.round = 41, u->commit.base_hash = HASH(hash_a);
        u->commit.n_contributions = 2, u->commit.contributions = x->contribs;
        u->commit.merge_applied = 1, u->commit.next_step = 420;
        u->commit.n_assignment = 2, u->commit.assignment = x->asgs;
        u->commit.n_peers = 2, u->commit.peers = x->peers;
        u->commit.n_refused = 1, u->commit.refused = x->refusals;
        u->commit.next_deadline_ms = 60000;
        u->commit.shards = 2, u->commit.n_aggregates = 1, u->commit.aggregates = x->aggs;
        u->commit.next_shards = 3;
        break;
    case SPES_MSG_AGGREGATE_TASK:
        u->agg_task = (Spes__Wire__AggregateTask)SPES__WIRE__AGGREGATE_TASK__INIT;
        u->agg_task.round = 41, u->agg_task.shards = 2, u->agg_task.base_hash = HASH(hash_a);
        u->agg_task.n_tasks = 1, u->agg_task.tasks = x->tasks;
        break;
    case SPES_MSG_AGGREGATE_REPORT:
        u->agg_report = (Spes__Wire__AggregateReport)SPES__WIRE__AGGREGATE_REPORT__INIT;
        u->agg_report.node_id = 2, u->agg_report.round = 41;
        u->agg_report.n_results = 1, u->agg_report.results = x->results;
        break;
    case SPES_MSG_DIGEST:
        u->digest = (Spes__Wire__Digest)SPES__WIRE__DIGEST__INIT;
        u->digest.node_id = 2, u->digest.round = 41, u->digest.state_hash = HASH(hash_b);
        break;
    case SPES_MSG_BLOB_HAVE:
        u->have = (Spes__Wire__BlobHave)SPES__WIRE__BLOB_HAVE__INIT;
        u->have.node_id = 2, u->have.n_blobs = 2, u->have.blobs = x->blobs;
        break;
    case SPES_MSG_BLOB_WANT:
        u->want = (Spes__Wire__BlobWant)SPES__WIRE__BLOB_WANT__INIT;
        u->want.blob_hash = HASH(hash_a), u->want.want_manifest = 1;
        break;
    case SPES_MSG_CHUNK_REQUEST:
        u->chunk = (Spes__Wire__ChunkRequest)SPES__WIRE__CHUNK_REQUEST__INIT;
        u->chunk.blob_hash = HASH(hash_a), u->chunk.first_chunk = 16, u->chunk.chunk_count = 8;
        break;
    case SPES_MSG_BLOB_PUSH: /* a manifest's bytes; the envelope does not look inside */
        u->push = (Spes__Wire__BlobPush)SPES__WIRE__BLOB_PUSH__INIT;
        u->push.manifest = (ProtobufCBinaryData){sizeof piece_bytes, (uint8_t *)piece_bytes};
        break;
    case SPES_MSG_BLOB_PIECE:
        u->piece = (Spes__Wire__BlobPiece)SPES__WIRE__BLOB_PIECE__INIT;
        u->piece.blob_hash = HASH(hash_a), u->piece.offset = 2 * SPES_PROTO_PUSH_PIECE;
        u->piece.data = (ProtobufCBinaryData){sizeof piece_bytes, (uint8_t *)piece_bytes};
        break;
    default: break;
    }
}

static void fill_operator(int type, example_msg *u, examples_t *x)
{
    switch (type) {
    case SPES_MSG_STATUS_REQUEST:
        u->status_req = (Spes__Wire__StatusRequest)SPES__WIRE__STATUS_REQUEST__INIT;
        u->status_req.verbose = 1;
        break;
    case SPES_MSG_STATUS_REPLY:
        u->status = (Spes__Wire__StatusReply)SPES__WIRE__STATUS_REPLY__INIT;
        u->status.run_id = "run-1", u->status.round = 41, u->status.step = 415;
        u->status.loss = 3.5, u->status.tokens_per_s = 40960;
        u->status.n_members = 2, u->status.members = x->members;
        u->status.last_round = &x->last, u->status.coordinator = "tls+tcp://127.0.0.1:7000";
        u->status.round_deadline_ms = 21000;
        break;
    case SPES_MSG_MEMBERS_REQUEST:
        u->members_req = (Spes__Wire__MembersRequest)SPES__WIRE__MEMBERS_REQUEST__INIT;
        u->members_req.action = SPES__WIRE__MEMBERS_ACTION__MEMBERS_EVICT;
        u->members_req.target = "node-2";
        break;
    case SPES_MSG_MEMBERS_REPLY:
        u->members = (Spes__Wire__MembersReply)SPES__WIRE__MEMBERS_REPLY__INIT;
        u->members.n_members = 2, u->members.members = x->members;
        u->members.message = "node-2 evicted";
        break;
    case SPES_MSG_CHECKPOINT_REQUEST:
        u->ckpt_req = (Spes__Wire__CheckpointRequest)SPES__WIRE__CHECKPOINT_REQUEST__INIT;
        u->ckpt_req.action = SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_EXPORT;
        u->ckpt_req.wait = 1, u->ckpt_req.id = "ckpt-000040", u->ckpt_req.out_dir = "/tmp/hf";
        break;
    case SPES_MSG_CHECKPOINT_REPLY:
        u->ckpt = (Spes__Wire__CheckpointReply)SPES__WIRE__CHECKPOINT_REPLY__INIT;
        u->ckpt.n_checkpoints = 1, u->ckpt.checkpoints = x->ckpts;
        u->ckpt.message = "saved", u->ckpt.pending = 1;
        break;
    case SPES_MSG_ERROR:
        u->error = (Spes__Wire__Error)SPES__WIRE__ERROR__INIT;
        u->error.code = SPES__WIRE__ERROR_CODE__ERROR_WRONG_ROUND;
        u->error.message = "announce for round 40, but round 41 is open";
        u->error.in_reply_to = SPES_MSG_ANNOUNCE;
        break;
    case SPES_MSG_ACK:
        u->ack = (Spes__Wire__Ack)SPES__WIRE__ACK__INIT;
        u->ack.message = "ok";
        break;
    default: break;
    }
}

int spes_proto_example_encode(int type, uint8_t **out, size_t *len)
{
    examples_t x;
    example_msg u;
    if (spes_proto_type_name(type) == NULL)
        return spes_errf(SPES_EINVAL, "example: unknown message type %d", type);
    memset(&u, 0, sizeof u);
    fill_parts(&x);
    fill_control(type, &u, &x);
    fill_round(type, &u, &x);
    fill_operator(type, &u, &x);
    return spes_proto_encode(type, &u.base, out, len);
}
