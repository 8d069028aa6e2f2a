/* coord_glue.c: the daemon's side of the coordinator (src/coord does the
 * deciding, docs/protocol.md): reads the run config and the persisted state at
 * start, feeds the state machine requests, ticks and validation results with
 * the clocks' readings, and carries out the actions it returns: replies,
 * durable writes of coordinator.json and last_commit.bin, validation on the
 * own node, checkpoint file work, log lines. Runs on the loop thread only. */
#include "checkpoint/checkpoint.h"
#include "checkpoint/outer_file.h"
#include "coord/coord.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/fileio.h"
#include "core/log.h"
#include "core/rng.h"
#include "daemon/coord.h"
#include "daemon/node.h"
#include "model/model.h"
#include "sync/outer.h"
#include "sync/sync.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* spes_coord is the glue: the daemon, its coordinator state machine and the files it writes. */
struct spes_coord {
    spes_daemon *d;
    spes_coord_sm *sm;
    spes_run_config run; /* the run config as loaded (the digest of S_0, exports) */
    char state_path[600];
    char commit_path[600];
};

static spes_coord_now now_ms(void)
{
    return (spes_coord_now){spes_mono_ms(), spes_now_ms()};
}

/* node_dir writes STATE_DIR/node/<sub> to out. */
static void node_dir(const spes_coord *c, char *out, size_t cap, const char *sub)
{
    snprintf(out, cap, "%.600s/node/%.100s", c->d->cfg.state_dir, sub);
}

/* load_momentum reads the outer momentum saved beside the state in dir when
 * the run keeps one (*mom stays NULL when it does not; docs/convergence.md). */
static int load_momentum(const spes_coord *c, const char *dir, size_t numel, int64_t round, float **mom)
{
    *mom = NULL;
    if (c->run.spes.outer_momentum == 0)
        return 0;
    if (!(*mom = malloc(numel * sizeof **mom)))
        return SPES_ENOMEM;
    int rc = spes_outer_load(dir, *mom, numel, round);
    if (rc) {
        free(*mom);
        *mom = NULL;
    }
    return rc;
}

/* ckpt_final copies the own node's agreed state of the ended run to checkpoint id. */
static int ckpt_final(spes_coord *c, const spes_coord_action *a)
{
    char src[800], dst[800], sub[64];
    node_dir(c, src, sizeof src, "state");
    snprintf(sub, sizeof sub, "checkpoints/%s", a->id);
    node_dir(c, dst, sizeof dst, sub);
    spes_ckpt ck;
    int rc = spes_ckpt_load(src, &ck);
    if (rc)
        return rc;
    if ((uint64_t)ck.round != a->round)
        rc = spes_errf(SPES_ESTATE, "this node holds round %lld, the run ended at round %llu",
                       (long long)ck.round, (unsigned long long)a->round);
    else
        rc = spes_ckpt_save(dst, &ck);
    float *mom = NULL; /* the outer momentum goes with the state it belongs to */
    if (!rc && (rc = load_momentum(c, src, ck.nparams, ck.round, &mom)) == 0 && mom)
        rc = spes_outer_save(dst, mom, ck.nparams, ck.round);
    free(mom);
    spes_ckpt_fini(&ck);
    return rc;
}

/* ckpt_restore republishes checkpoint id's state as a blob (peers without their own copy fetch it). */
static int ckpt_restore(spes_coord *c, const spes_coord_action *a)
{
    char dir[800], sub[64];
    snprintf(sub, sizeof sub, "checkpoints/%s", a->id);
    node_dir(c, dir, sizeof dir, sub);
    spes_ckpt ck;
    uint8_t h[32];
    int rc = spes_ckpt_load(dir, &ck);
    if (rc)
        return rc;
    float *mom = NULL;
    if ((rc = load_momentum(c, dir, ck.nparams, (int64_t)a->round, &mom)) == 0)
        rc = spes_node_put_state_outer(c->d->node, ck.params, mom, ck.nparams, a->round, h);
    if (!rc && memcmp(h, a->hash, 32))
        rc = spes_errf(SPES_ESTATE, "%s: its state does not match the recorded digest", dir);
    free(mom);
    spes_ckpt_fini(&ck);
    return rc;
}

/* export_dir resolves an export's out_dir: exports/NAME goes under the state
 * directory (made if missing), an absolute path (local operators) stays. */
static int export_dir(const spes_coord *c, const char *out_dir, char *out, size_t cap)
{
    if (out_dir[0] == '/') {
        snprintf(out, cap, "%s", out_dir);
        return 0;
    }
    char exports[700];
    snprintf(exports, sizeof exports, "%.600s/exports", c->d->cfg.state_dir);
    snprintf(out, cap, "%.600s/%.200s", c->d->cfg.state_dir, out_dir);
    return spes_mkdir_p(exports, 0750);
}

/* ckpt_export writes checkpoint id as Hugging Face files to out (export_dir). */
static int ckpt_export(spes_coord *c, const spes_coord_action *a, const char *out)
{
    char dir[800], sub[64];
    snprintf(sub, sizeof sub, "checkpoints/%s", a->id);
    node_dir(c, dir, sizeof dir, sub);
    spes_ckpt ck;
    spes_layout lo;
    int rc = spes_ckpt_load(dir, &ck);
    if (rc)
        return rc;
    if ((rc = spes_layout_build(&lo, &c->run.model)) == 0) {
        rc = spes_hf_export(out, &c->run.model, &lo, ck.params, 0);
        spes_layout_fini(&lo);
    }
    spes_ckpt_fini(&ck);
    return rc;
}

/* carry_out does one action of the state machine. */
static void carry_out(spes_coord *c, spes_coord_action *a)
{
    int rc;
    char out[900];
    switch (a->kind) {
    case SPES_COORD_REPLY: a->to.fn(a->to.ctx, a->data, a->len); break;
    case SPES_COORD_LOG: spes_log(a->level, 0, "%s", (const char *)a->data); break;
    case SPES_COORD_PERSIST_STATE:
        if (spes_write_file_atomic(c->state_path, a->data, a->len) != 0) {
            log_error("coordinator state not saved: %s", spes_errmsg());
            spes_coord_sm_persist_failed(c->sm);
        }
        break;
    case SPES_COORD_PERSIST_COMMIT:
        if (spes_write_file_atomic(c->commit_path, a->data, a->len) != 0)
            log_error("the commit of round %llu is not saved: %s", (unsigned long long)a->round,
                      spes_errmsg());
        break;
    case SPES_COORD_VALIDATE:
        if ((rc = spes_node_validate(c->d->node, a->round, a->n, (const uint8_t(*)[32])a->hashes,
                                     (const uint8_t(*)[32])a->manifests, (const char **)a->urls,
                                     (const char **)a->names, a->ids, a->cols)) != 0) {
            /* before our own node has joined (it was late) the coordinator simply asks again */
            spes_log(rc == SPES_ESTATE ? SPES_LOG_DEBUG : SPES_LOG_ERROR, 0,
                     "round %llu: cannot start validation: %s", (unsigned long long)a->round, spes_errmsg());
            spes_coord_sm_validation_failed(c->sm, a->round);
        }
        break;
    case SPES_COORD_CKPT_FINAL:
        rc = ckpt_final(c, a);
        spes_coord_sm_final_saved(c->sm, now_ms(), a->to, a->id, rc, rc ? spes_errmsg() : "");
        break;
    case SPES_COORD_CKPT_RESTORE:
        rc = ckpt_restore(c, a);
        spes_coord_sm_restored(c->sm, now_ms(), a->to, a->id, rc, rc ? spes_errmsg() : "");
        break;
    case SPES_COORD_CKPT_EXPORT:
        if ((rc = export_dir(c, a->out_dir, out, sizeof out)) == 0)
            rc = ckpt_export(c, a, out);
        spes_coord_sm_exported(c->sm, a->to, a->id, out, rc, rc ? spes_errmsg() : "");
        break;
    default: log_error("coordinator: unknown action %d", a->kind);
    }
}

/* drain carries out every queued action, including those that carrying out queues. */
static void drain(spes_coord *c)
{
    spes_coord_action a;
    while (spes_coord_sm_next_action(c->sm, &a)) {
        carry_out(c, &a);
        spes_coord_action_fini(&a);
    }
}

/* initial_digest computes the digest of S_0 (weights from the seed). */
static int initial_digest(spes_coord *c, uint8_t out[32])
{
    spes_model *m;
    int rc = spes_model_alloc(&m, &c->run.model, NULL, 1, 1, 0, NULL);
    if (rc)
        return rc;
    spes_model_init_weights(m, (uint64_t)c->run.train.seed);
    float *mom = NULL; /* outer momentum: zero at S_0, part of the state when the run keeps one */
    if (c->run.spes.outer_momentum != 0 && !(mom = calloc(m->layout.total_numel, sizeof *mom)))
        rc = SPES_ENOMEM;
    if (!rc)
        rc = spes_state_digest2(m->params, mom, m->layout.total_numel, 0, out);
    free(mom);
    spes_model_free(m);
    return rc;
}

/* recover_state_hash: the own node persists the agreed state after each
 * round; if the coordinator died before it reported the digest, read it here. */
static void recover_state_hash(spes_coord *c)
{
    uint64_t round = spes_coord_sm_round(c->sm);
    char dir[800];
    node_dir(c, dir, sizeof dir, "state");
    spes_ckpt ck;
    if (spes_ckpt_load(dir, &ck) != 0) {
        log_warnx("coordinator: the agreed state of round %llu is unknown (%s)", (unsigned long long)round,
                  spes_errmsg());
        return;
    }
    uint8_t h[32];
    float *mom = NULL; /* a run with outer momentum: its digest covers the momentum saved beside the state */
    if (load_momentum(c, dir, ck.nparams, ck.round, &mom) != 0)
        ck.round = -1; /* its digest cannot be formed */
    if ((uint64_t)ck.round == round && spes_state_digest2(ck.params, mom, ck.nparams, ck.round, h) == 0) {
        spes_coord_sm_set_state_hash(c->sm, round, h);
        log_info("coordinator: agreed state of round %llu recovered from this node's state",
                 (unsigned long long)round);
    } else {
        log_warnx("coordinator: this node holds round %lld, the run is at round %llu", (long long)ck.round,
                  (unsigned long long)round);
    }
    free(mom);
    spes_ckpt_fini(&ck);
}

/* resume loads the persisted state (SPES_ENOENT if there is none) and what belongs with it. */
static int resume(spes_coord *c)
{
    char *text;
    size_t len;
    int rc = spes_read_file(c->state_path, 64u << 20, &text, &len);
    if (rc)
        return access(c->state_path, F_OK) == 0 ? rc : SPES_ENOENT;
    rc = spes_coord_sm_load(c->sm, text, c->state_path);
    free(text);
    if (rc)
        return rc;
    uint8_t h[32];
    if (!spes_coord_sm_state_hash(c->sm, h))
        recover_state_hash(c);
    if (spes_read_file(c->commit_path, 64u << 20, &text, &len) == 0) { /* for nodes still waiting for it */
        rc = spes_coord_sm_set_last_commit(c->sm, (const uint8_t *)text, len);
        free(text);
    }
    log_info("coordinator: resumed run %s at round %llu (%d members known)", spes_coord_sm_run_id(c->sm),
             (unsigned long long)spes_coord_sm_round(c->sm), spes_coord_sm_members(c->sm));
    return rc;
}

/* new_run starts a run with a fresh id at S_0. */
static int new_run(spes_coord *c)
{
    uint8_t h[32];
    int rc = initial_digest(c, h);
    if (rc)
        return rc;
    spes_rng r;
    spes_rng_seed(&r, spes_now_ms() ^ (uint64_t)(uintptr_t)c);
    char id[40];
    snprintf(id, sizeof id, "%016llx", (unsigned long long)spes_rng_u64(&r));
    if ((rc = spes_coord_sm_new_run(c->sm, id, h)) != 0)
        return rc;
    spes_coord_action a;
    while (spes_coord_sm_next_action(c->sm, &a)) { /* the first persist must succeed */
        if (a.kind == SPES_COORD_PERSIST_STATE && !rc)
            rc = spes_write_file_atomic(c->state_path, a.data, a.len);
        else
            carry_out(c, &a);
        spes_coord_action_fini(&a);
    }
    if (rc)
        spes_coord_sm_persist_failed(c->sm);
    return rc;
}

static void settings_from(const spes_dconfig *cfg, spes_coord_settings *s)
{
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", cfg->name);
    snprintf(s->listen, sizeof s->listen, "%s", cfg->advertise);
    s->approve = !strcmp(cfg->admission, "approve");
    s->min_nodes = cfg->min_nodes;
    s->failure_timeout_ms = cfg->failure_timeout_ms;
    s->round_deadline_ms = cfg->round_deadline_ms;
    s->round_deadline_min_ms = cfg->round_deadline_min_ms;
    s->tick_ms = spes_daemon_tick_ms(cfg);
}

int spes_coord_alloc(spes_coord **out, spes_daemon *d)
{
    spes_coord *c = calloc(1, sizeof *c);
    if (!c)
        return SPES_ENOMEM;
    c->d = d;
    snprintf(c->state_path, sizeof c->state_path, "%.500s/coordinator.json", d->cfg.state_dir);
    snprintf(c->commit_path, sizeof c->commit_path, "%.500s/last_commit.bin", d->cfg.state_dir);
    spes_config_defaults(&c->run);
    int rc = spes_config_load(&c->run, d->cfg.run_config);
    if (!rc)
        rc = spes_config_validate(&c->run);
    spes_coord_settings s;
    settings_from(&d->cfg, &s);
    if (!rc)
        rc = spes_coord_sm_alloc(&c->sm, &c->run, &s);
    if (!rc && (rc = resume(c)) == SPES_ENOENT)
        rc = new_run(c);
    if (rc)
        goto fail;
    spes_coord_sm_start(c->sm, now_ms());
    drain(c);
    *out = c;
    return 0;
fail:
    spes_coord_free(c);
    return rc;
}

void spes_coord_free(spes_coord *c)
{
    if (!c)
        return;
    spes_coord_sm_free(c->sm);
    spes_config_fini(&c->run);
    free(c);
}

void spes_coord_handle(spes_coord *c, int type, const ProtobufCMessage *msg, const spes_pki_identity *peer,
                       spes_reply_fn reply, void *ctx)
{
    spes_coord_sm_request(c->sm, now_ms(), type, msg, peer, (spes_coord_to){reply, ctx});
    drain(c);
}

void spes_coord_tick(spes_coord *c)
{
    spes_coord_sm_tick(c->sm, now_ms());
    drain(c);
}

void spes_coord_validated(spes_coord *c, uint64_t round, int n, const int *ok, char (*reasons)[256])
{
    spes_coord_sm_validated(c->sm, now_ms(), round, n, ok, reasons);
    drain(c);
}
