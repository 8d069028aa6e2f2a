/* fuzz_coord_requests.c: the coordinator state machine under any sequence of
 * well-formed requests (what a node, an operator or a stranger may send),
 * ticks at any pace, and any validation and checkpoint outcomes. Each input
 * byte picks a step; the following bytes fill it. Raw steps go through the
 * envelope decoder as the daemon's do. Checks: no crash, no leak, no
 * undefined behaviour, every reply is a decodable envelope, and every state
 * the coordinator persists loads back into a fresh coordinator. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord/coord.h"
#include "proto/proto.h"
#include "proto/spes.pb-c.h"

typedef struct fz {
    const uint8_t *p;
    size_t n;
    spes_coord_sm *c;
    spes_coord_now now;
    spes_coord_action pending[64]; /* VALIDATE and CKPT_* actions not answered yet */
    int npending;
    char *saved; /* the last persisted state */
} fz;

static uint8_t next(fz *f)
{
    if (!f->n)
        return 0;
    f->n--;
    return *f->p++;
}

static void no_reply(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx, (void)data, (void)len;
}

/* drain takes every action: replies must decode, persists are kept, work is parked. */
static void drain(fz *f)
{
    spes_coord_action a;
    while (spes_coord_sm_next_action(f->c, &a)) {
        if (a.kind == SPES_COORD_REPLY && a.data) {
            int type;
            ProtobufCMessage *m;
            if (spes_proto_decode(a.data, a.len, &type, &m) != 0)
                abort(); /* the coordinator sent bytes its peers cannot read */
            spes_proto_free(m);
        }
        if (a.kind == SPES_COORD_PERSIST_STATE) {
            free(f->saved);
            f->saved = (char *)a.data;
            a.data = NULL;
        }
        if ((a.kind == SPES_COORD_VALIDATE || a.kind >= SPES_COORD_CKPT_FINAL) && f->npending < 64) {
            f->pending[f->npending++] = a;
            continue;
        }
        spes_coord_action_fini(&a);
    }
}

static spes_pki_identity peer_of(uint8_t b)
{
    spes_pki_identity p = {.role = SPES_ROLE_NONE}, control = SPES_COORD_LOCAL_OPERATOR;
    if (b % 4 == 3)
        return control; /* the local control socket */
    if (b % 4 == 1 || b % 4 == 2) {
        p.role = b % 4 == 1 ? SPES_ROLE_NODE : SPES_ROLE_OPERATOR;
        snprintf(p.name, sizeof p.name, "node-%d", (b / 4) % 6);
    }
    return p;
}

/* answer completes the oldest parked action with outcomes from the input. */
static void answer(fz *f)
{
    if (!f->npending)
        return;
    spes_coord_action a = f->pending[0];
    memmove(f->pending, f->pending + 1, sizeof a * (size_t)--f->npending);
    uint8_t b = next(f);
    int rc = (b & 1) ? -8 : 0;
    if (a.kind == SPES_COORD_VALIDATE) {
        int ok[SPES_COORD_MAX_MEMBERS];
        char(*reasons)[256] = calloc((size_t)(a.n ? a.n : 1), 256);
        for (int i = 0; i < a.n && reasons; i++) {
            ok[i] = (b >> (i % 8)) & 1;
            snprintf(reasons[i], 256, "refused %d", i);
        }
        if (reasons && (b & 0x80))
            spes_coord_sm_validation_failed(f->c, a.round);
        else if (reasons)
            spes_coord_sm_validated(f->c, f->now, a.round + (b == 0x7f), a.n, ok, reasons);
        free(reasons);
    } else if (a.kind == SPES_COORD_CKPT_FINAL) {
        spes_coord_sm_final_saved(f->c, f->now, a.to, a.id, rc, "no");
    } else if (a.kind == SPES_COORD_CKPT_RESTORE) {
        spes_coord_sm_restored(f->c, f->now, a.to, a.id, rc, "no");
    } else {
        spes_coord_sm_exported(f->c, a.to, a.id, a.out_dir, rc, "no");
    }
    spes_coord_action_fini(&a);
}

static void request(fz *f, int type, ProtobufCMessage *m, uint8_t who)
{
    spes_pki_identity p = peer_of(who);
    spes_coord_sm_request(f->c, f->now, type, m, &p, (spes_coord_to){no_reply, NULL});
}

/* step runs one input step. */
static void step(fz *f)
{
    uint8_t op = next(f), a = next(f), b = next(f), who = next(f);
    char name[16], id[32];
    uint8_t h1[32], h2[32];
    snprintf(name, sizeof name, "node-%d", a % 6);
    snprintf(id, sizeof id, "ckpt-%06d", b % 12);
    memset(h1, b, 32);
    memset(h2, a, 32);
    switch (op % 13) {
    case 0:
        f->now.mono_ms += (uint64_t)a * 20;
        f->now.wall_ms += (uint64_t)a * 20;
        spes_coord_sm_tick(f->c, f->now);
        break;
    case 1: {
        Spes__Wire__Join j = SPES__WIRE__JOIN__INIT;
        j.node_name = name;
        j.listen_url = "tcp://127.0.0.1:1";
        j.protocol_version = b % 5 ? SPES_PROTO_VERSION : SPES_PROTO_VERSION - 1;
        request(f, SPES_MSG_JOIN, &j.base, who);
        break;
    }
    case 2: {
        Spes__Wire__Heartbeat h = SPES__WIRE__HEARTBEAT__INIT;
        h.node_id = a % 7;
        h.round = b % 12;
        h.state = who % 8;
        h.loss = b;
        request(f, SPES_MSG_HEARTBEAT, &h.base, who);
        break;
    }
    case 3: {
        Spes__Wire__Announce n = SPES__WIRE__ANNOUNCE__INIT;
        n.node_id = a % 7;
        n.round = b % 12;
        n.blob_hash = (ProtobufCBinaryData){32, h1};
        n.manifest_hash = (ProtobufCBinaryData){32, h2};
        n.size = (uint64_t)who << (who % 40);
        request(f, SPES_MSG_ANNOUNCE, &n.base, who);
        break;
    }
    case 4: {
        Spes__Wire__Digest g = SPES__WIRE__DIGEST__INIT;
        g.node_id = a % 7;
        g.round = b % 12;
        g.state_hash = (ProtobufCBinaryData){32, h2};
        g.checkpoint_id = who & 1 ? id : "";
        request(f, SPES_MSG_DIGEST, &g.base, who);
        break;
    }
    case 5: {
        Spes__Wire__MembersRequest r = SPES__WIRE__MEMBERS_REQUEST__INIT;
        r.action = b % 5;
        r.target = b & 8 ? name : "3";
        request(f, SPES_MSG_MEMBERS_REQUEST, &r.base, who);
        break;
    }
    case 6: {
        Spes__Wire__CheckpointRequest r = SPES__WIRE__CHECKPOINT_REQUEST__INIT;
        r.action = a % 5;
        r.id = id;
        r.wait = who & 8;
        r.out_dir = "/nonexistent";
        request(f, SPES_MSG_CHECKPOINT_REQUEST, &r.base, who);
        break;
    }
    case 7: {
        Spes__Wire__Leave l = SPES__WIRE__LEAVE__INIT;
        l.node_id = a % 7;
        l.reason = "";
        request(f, SPES_MSG_LEAVE, &l.base, who);
        break;
    }
    case 8: {
        size_t len = (size_t)a | ((size_t)b << 8);
        if (len > f->n)
            len = f->n;
        int type;
        ProtobufCMessage *m;
        if (spes_proto_decode(f->p, len, &type, &m) == 0) {
            request(f, type, m, who);
            spes_proto_free(m);
        }
        f->p += len;
        f->n -= len;
        break;
    }
    case 9: { /* an aggregator's report (sharded runs), its verdicts from the input */
        Spes__Wire__InputVerdict vv[4], *vp[4];
        Spes__Wire__Group g = SPES__WIRE__GROUP__INIT;
        Spes__Wire__ShardResult res = SPES__WIRE__SHARD_RESULT__INIT, *rp = &res;
        for (int k = 0; k < 4; k++) {
            spes__wire__input_verdict__init(&vv[k]);
            vv[k].node_id = (uint32_t)k;
            vv[k].ok = (who >> k) & 1;
            vv[k].missing = (b >> k) & 1;
            vv[k].reason = "fuzz";
            vp[k] = &vv[k];
        }
        g.blob_hash = g.manifest_hash = (ProtobufCBinaryData){32, h1};
        g.size = (uint64_t)b << (a % 24);
        res.shard = a % 3;
        res.attempt = b % 4;
        res.verdicts = vp;
        res.n_verdicts = who % 5;
        res.aggregate = a & 0x80 ? NULL : &g;
        Spes__Wire__AggregateReport r = SPES__WIRE__AGGREGATE_REPORT__INIT;
        r.node_id = a % 7;
        r.round = b % 12;
        r.results = &rp;
        r.n_results = who & 0x40 ? 0 : 1;
        request(f, SPES_MSG_AGGREGATE_REPORT, &r.base, who);
        break;
    }
    case 10: { /* an announcement with shards */
        Spes__Wire__Group gv[3], *gp[3];
        for (int k = 0; k < 3; k++) {
            spes__wire__group__init(&gv[k]);
            gv[k].blob_hash = gv[k].manifest_hash = (ProtobufCBinaryData){32, k ? h2 : h1};
            gv[k].size = (uint64_t)who << (who % 30);
            gp[k] = &gv[k];
        }
        Spes__Wire__Announce n = SPES__WIRE__ANNOUNCE__INIT;
        n.node_id = a % 7;
        n.round = b % 12;
        n.blob_hash = (ProtobufCBinaryData){32, h1};
        n.manifest_hash = (ProtobufCBinaryData){32, h2};
        n.size = 100;
        n.shards = gp;
        n.n_shards = who % 4;
        request(f, SPES_MSG_ANNOUNCE, &n.base, who);
        break;
    }
    default: answer(f); break;
    }
    drain(f);
}

static int make(spes_coord_sm **out, int min_nodes)
{
    spes_run_config run;
    spes_config_defaults(&run);
    run.model.num_experts = 4;
    run.model.num_experts_per_tok = 2;
    run.spes.sync_interval = 5;
    run.spes.merge_topk = 1;
    run.train.max_steps = 40;
    run.train.warmup_steps = 0;
    run.spes.sharded = min_nodes == 2; /* the sharded round's tasks and reports too */
    run.spes.audit_fraction = 0.5;
    spes_coord_settings s = {.name = "node-0",
                             .listen = "tcp://127.0.0.1:7000",
                             .min_nodes = min_nodes,
                             .failure_timeout_ms = 1000,
                             .round_deadline_ms = 3000,
                             .tick_ms = 50,
                             .approve = min_nodes == 3};
    int rc = spes_coord_sm_alloc(out, &run, &s);
    spes_config_fini(&run);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz f = {.p = data, .n = size, .now = {1000, 1700000000000ull}};
    uint8_t s0[32];
    memset(s0, 0x50, 32);
    if (make(&f.c, 1 + next(&f) % 3) != 0)
        abort();
    spes_coord_sm_new_run(f.c, "fuzz", s0);
    spes_coord_sm_start(f.c, f.now);
    drain(&f);
    while (f.n)
        step(&f);
    for (int i = 0; i < f.npending; i++)
        spes_coord_action_fini(&f.pending[i]);
    spes_coord_sm_free(f.c);
    if (f.saved) { /* whatever it persisted, a restarted coordinator reads back */
        spes_coord_sm *g;
        if (make(&g, 1) != 0 || spes_coord_sm_load(g, f.saved, "fuzz") != 0)
            abort();
        spes_coord_sm_free(g);
        free(f.saved);
    }
    return 0;
}
