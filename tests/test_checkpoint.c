/* test_checkpoint.c: the resume checkpoint and the Hugging Face export/import.
 * Round trips are compared bit for bit; every truncation length and many
 * single-byte corruptions must be refused with the right message; a crash in
 * the middle of a save (a child killed by SIGXFSZ) must leave the previous
 * checkpoint loadable. Run as `test_checkpoint --export-sample DIR` it writes
 * an HF export plus a raw dump for the independent Python reader
 * (tests/checkpoint_hf_check.py). */
#include "checkpoint/checkpoint.h"
#include "checkpoint/outer_file.h"

#include "core/error.h"
#include "core/fileio.h"
#include "core/rng.h"
#include "core/sha256.h"
#include "safetensors/safetensors.h"

#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[64];

static void setup(void)
{
    strcpy(tmpdir, "/tmp/spes-ckpt-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

static char *sub(const char *name)
{
    char *p = spes_path_join(tmpdir, name);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* small_config: V=32 H=16 I=8 L=2 NH=4 NKV=2 E=4 K=2, untied unless tie. */
static void small_config(spes_run_config *rc, int tie)
{
    spes_config_defaults(rc);
    rc->model.vocab_size = 32;
    rc->model.hidden_size = 16;
    rc->model.intermediate_size = 8;
    rc->model.num_hidden_layers = 2;
    rc->model.num_attention_heads = 4;
    rc->model.num_key_value_heads = 2;
    rc->model.num_experts = 4;
    rc->model.num_experts_per_tok = 2;
    rc->model.tie_word_embeddings = tie;
    rc->model.rms_norm_eps = 1e-6;
}

static void fill_random(float *p, size_t n, uint64_t seed)
{
    spes_rng r;
    spes_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)spes_rng_u64(&r);
        memcpy(&p[i], &u, 4); /* arbitrary bit patterns, NaNs included: must survive unchanged */
    }
}

/* make_ckpt builds a consistent state for the small config (columns 0 and 2 trained). */
static void make_ckpt(spes_ckpt *ck, int with_moments, uint64_t seed)
{
    spes_run_config rc;
    spes_layout lo;
    small_config(&rc, 0);
    ck_assert_int_eq(spes_layout_build(&lo, &rc.model), 0);
    memset(ck, 0, sizeof *ck);
    ck->config_json = spes_config_to_json(&rc);
    ck->E = 4;
    ck->trained = calloc(4, 1);
    ck->trained[0] = ck->trained[2] = 1;
    ck->nparams = lo.total_numel;
    ck->params = malloc(ck->nparams * sizeof(float));
    fill_random(ck->params, ck->nparams, seed);
    if (with_moments) {
        ck->nmoments = lo.shared_numel + 2 * lo.column_numel;
        ck->adam_m = malloc(ck->nmoments * sizeof(float));
        ck->adam_v = malloc(ck->nmoments * sizeof(float));
        fill_random(ck->adam_m, ck->nmoments, seed + 1);
        fill_random(ck->adam_v, ck->nmoments, seed + 2);
    }
    ck->adam_t = 123;
    ck->step = 124;
    ck->round = -1;
    ck->data_pos = 0x123456789abcdefULL;
    ck->data_file = 3;
    for (int i = 0; i < 4; i++)
        ck->rng[i] = 0xfedcba9876543210ULL ^ (uint64_t)i;
    spes_layout_fini(&lo);
    spes_config_fini(&rc);
}

static void assert_same(const spes_ckpt *a, const spes_ckpt *b)
{
    ck_assert_str_eq(a->config_json, b->config_json);
    ck_assert_int_eq(a->E, b->E);
    ck_assert_int_eq(memcmp(a->trained, b->trained, (size_t)a->E), 0);
    ck_assert_uint_eq(a->nparams, b->nparams);
    ck_assert_int_eq(memcmp(a->params, b->params, a->nparams * sizeof(float)), 0);
    ck_assert_uint_eq(a->nmoments, b->nmoments);
    ck_assert_int_eq(!a->adam_m, !b->adam_m);
    if (a->adam_m) {
        ck_assert_int_eq(memcmp(a->adam_m, b->adam_m, a->nmoments * sizeof(float)), 0);
        ck_assert_int_eq(memcmp(a->adam_v, b->adam_v, a->nmoments * sizeof(float)), 0);
    }
    ck_assert(a->adam_t == b->adam_t && a->step == b->step && a->round == b->round);
    ck_assert(a->data_pos == b->data_pos && a->data_file == b->data_file);
    ck_assert_int_eq(memcmp(a->rng, b->rng, sizeof a->rng), 0);
}

static uint8_t *slurp(const char *path, size_t *len)
{
    char *buf;
    ck_assert_int_eq(spes_read_file(path, 1u << 30, &buf, len), 0);
    return (uint8_t *)buf;
}

START_TEST(round_trip)
{
    spes_ckpt a, b;
    make_ckpt(&a, 1, 42);
    char *dir = sub("ck/nested");
    ck_assert_int_eq(spes_ckpt_save(dir, &a), 0);
    ck_assert_int_eq(spes_ckpt_load(dir, &b), 0);
    assert_same(&a, &b);
    spes_ckpt_fini(&b);

    /* two-phase reader: arrays straight into caller memory, moments skipped */
    spes_ckpt_reader *r;
    spes_ckpt meta;
    ck_assert_int_eq(spes_ckpt_reader_open(&r, dir, &meta), 0);
    ck_assert_uint_eq(meta.nparams, a.nparams);
    ck_assert_ptr_null(meta.params);
    float *p = malloc(a.nparams * sizeof(float));
    ck_assert_int_eq(spes_ckpt_reader_read(r, p, NULL, NULL), 0);
    ck_assert_int_eq(memcmp(p, a.params, a.nparams * sizeof(float)), 0);
    ck_assert_int_eq(spes_ckpt_reader_read(r, p, NULL, NULL), SPES_ESTATE);
    spes_ckpt_reader_close(r);
    spes_ckpt_fini(&meta);
    free(p);

    /* inference-only: no moments */
    spes_ckpt c;
    make_ckpt(&c, 0, 7);
    ck_assert_int_eq(spes_ckpt_save(dir, &c), 0);
    ck_assert_int_eq(spes_ckpt_load(dir, &b), 0);
    assert_same(&c, &b);
    ck_assert_ptr_null(b.adam_m);
    spes_ckpt_fini(&b);
    spes_ckpt_fini(&c);
    spes_ckpt_fini(&a);

    char *absent = sub("absent");
    ck_assert_int_eq(spes_ckpt_load(absent, &b), SPES_ENOENT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "absent/spes.ckpt: cannot open checkpoint"));
    free(absent);
    free(dir);
}
END_TEST

/* header_end returns the offset just after the header digest of a saved file. */
static size_t header_end(const uint8_t *f)
{
    size_t n = 128 + (size_t)f[16] + ((size_t)f[17] << 8) + ((size_t)f[18] << 16) + f[24];
    return (n + 7) / 8 * 8 + 32;
}

START_TEST(truncation_and_corruption)
{
    spes_ckpt a, b;
    make_ckpt(&a, 1, 5);
    char *dir = sub("ck");
    ck_assert_int_eq(spes_ckpt_save(dir, &a), 0);
    char *path = spes_path_join(dir, SPES_CKPT_FILE);
    size_t len;
    uint8_t *f = slurp(path, &len);
    ck_assert_uint_eq(len, header_end(f) + (a.nparams + 2 * a.nmoments) * 4 + 32);

    for (size_t cut = 0; cut < len; cut++) { /* every truncation length */
        int rc = spes_ckpt_parse(&b, f, cut, "cut");
        ck_assert_msg(rc == SPES_EFORMAT && strstr(spes_errmsg(), "truncated"), "cut %zu: %d %s", cut, rc,
                      spes_errmsg());
        ck_assert_ptr_null(b.params);
    }
    uint8_t *g = malloc(len + 1);
    memcpy(g, f, len);
    g[len] = 0;
    ck_assert_int_eq(spes_ckpt_parse(&b, g, len + 1, "long"), SPES_EFORMAT);
    ck_assert_str_eq(spes_errmsg(), "long: 1 unexpected bytes after the end of the checkpoint");

    size_t he = header_end(f);
    for (size_t pos = 0; pos < len; pos += (pos < he || pos + 64 > len) ? 1 : 61) {
        memcpy(g, f, len);
        g[pos] ^= (uint8_t)(1u << (pos % 8));
        int rc = spes_ckpt_parse(&b, g, len, "flip");
        ck_assert_msg(rc != 0, "flip at %zu accepted", pos);
        const char *m = spes_errmsg();
        if (pos >= 128 && pos < he)
            ck_assert_msg(!strcmp(m, "flip: header checksum mismatch: the file is corrupted"), "%zu: %s", pos,
                          m);
        else if (pos >= he)
            ck_assert_msg(!strcmp(m, "flip: whole-file checksum mismatch: the file is corrupted"), "%zu: %s",
                          pos, m);
        else
            ck_assert_msg(!strncmp(m, "flip: ", 6), "%zu: %s", pos, m);
    }
    ck_assert_int_eq(spes_ckpt_parse(&b, f, len, "ok"), 0);
    spes_ckpt_fini(&b);
    memcpy(g, f, len);
    g[8] = 2;
    ck_assert_int_eq(spes_ckpt_parse(&b, g, len, "v2"), SPES_EFORMAT);
    ck_assert_str_eq(spes_errmsg(), "v2: checkpoint format version 2, this build reads version 1");
    memcpy(g, f, len);
    g[3] = 'x';
    ck_assert_int_eq(spes_ckpt_parse(&b, g, len, "magic"), SPES_EFORMAT);
    ck_assert_str_eq(spes_errmsg(), "magic: not a spes checkpoint (bad magic)");

    /* a truncated file on disk names the path */
    ck_assert_int_eq(truncate(path, (off_t)(len - 1)), 0);
    ck_assert_int_eq(spes_ckpt_load(dir, &b), SPES_EFORMAT);
    ck_assert_int_eq(strncmp(spes_errmsg(), path, strlen(path)), 0);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "truncated"));
    free(g);
    free(f);
    free(path);
    free(dir);
    spes_ckpt_fini(&a);
}
END_TEST

/* rehash recomputes both digests of a checkpoint image after a deliberate edit. */
static void rehash(uint8_t *f, size_t len)
{
    size_t he = header_end(f);
    ck_assert_int_eq(spes_sha256(f, he - 32, f + he - 32), 0);
    ck_assert_int_eq(spes_sha256(f, len - 32, f + len - 32), 0);
}

START_TEST(sizes_checked_against_config)
{
    spes_ckpt a, b;
    make_ckpt(&a, 1, 9);
    char *dir = sub("ck");
    /* save refuses inconsistent state */
    a.nparams--;
    ck_assert_int_eq(spes_ckpt_save(dir, &a), SPES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "parameters, but the config's layout has 5888"));
    a.nparams++;
    a.trained[1] = 1;
    ck_assert_int_eq(spes_ckpt_save(dir, &a), SPES_EFORMAT);
    ck_assert_ptr_nonnull(
        strstr(spes_errmsg(), "AdamW moments, but the layout with 3 trained columns needs"));
    a.trained[1] = 2;
    ck_assert_int_eq(spes_ckpt_save(dir, &a), SPES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "trained[1] is 2, not 0 or 1"));
    a.trained[1] = 0;
    a.E = 3;
    ck_assert_int_eq(spes_ckpt_save(dir, &a), SPES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "the config has 4 experts but the trained mask has 3"));
    a.E = 4;
    float *v = a.adam_v;
    a.adam_v = NULL;
    ck_assert_int_eq(spes_ckpt_save(dir, &a), SPES_EINVAL);
    a.adam_v = v;
    struct stat st;
    ck_assert_int_ne(stat(dir, &st), 0); /* nothing was written */

    /* load refuses a well-formed file whose config does not fit its arrays */
    ck_assert_int_eq(spes_ckpt_save(dir, &a), 0);
    char *path = spes_path_join(dir, SPES_CKPT_FILE);
    size_t len;
    uint8_t *f = slurp(path, &len);
    char *h = memmem(f, len, "\"hidden_size\": 16", 17);
    ck_assert_ptr_nonnull(h);
    memcpy(h, "\"hidden_size\": 32", 17);
    rehash(f, len);
    ck_assert_int_eq(spes_ckpt_parse(&b, f, len, "edited"), SPES_EFORMAT);
    ck_assert_str_eq(spes_errmsg(), "edited: 5888 parameters, but the config's layout has 14848");
    memcpy(h, "\"hidden_size\": 1x", 17);
    rehash(f, len);
    ck_assert_int_eq(spes_ckpt_parse(&b, f, len, "edited"), SPES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "edited (embedded config)"));
    free(f);
    free(path);
    free(dir);
    spes_ckpt_fini(&a);
}
END_TEST

static int count_entries(const char *dir)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "exit $(ls -A '%s' | wc -l)", dir);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* save_in_child saves ck under a 4 KiB file-size limit: SIGXFSZ kills the child mid-write
 * (a crash), or with SIGXFSZ ignored the write fails (an error). Returns the wait status. */
static int save_in_child(const char *dir, const spes_ckpt *ck, int ignore_sigxfsz)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct rlimit rl = {4096, 4096};
        signal(SIGXFSZ, ignore_sigxfsz ? SIG_IGN : SIG_DFL);
        setrlimit(RLIMIT_FSIZE, &rl);
        int rc = spes_ckpt_save(dir, ck);
        _exit(rc == SPES_EIO ? 0 : 1);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    return st;
}

START_TEST(atomicity)
{
    spes_ckpt a, b, c;
    make_ckpt(&a, 1, 11);
    make_ckpt(&b, 1, 12);
    char *dir = sub("ck");
    ck_assert_int_eq(spes_ckpt_save(dir, &a), 0);

    /* a crash in the middle of a save leaves its temp file and the old checkpoint */
    int st = save_in_child(dir, &b, 0);
    ck_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGXFSZ);
    ck_assert_int_eq(count_entries(dir), 2);
    ck_assert_int_eq(spes_ckpt_load(dir, &c), 0);
    assert_same(&a, &c);
    spes_ckpt_fini(&c);

    /* the next good save replaces the checkpoint and clears the dead process's temp file */
    ck_assert_int_eq(spes_ckpt_save(dir, &b), 0);
    ck_assert_int_eq(count_entries(dir), 1);
    ck_assert_int_eq(spes_ckpt_load(dir, &c), 0);
    assert_same(&b, &c);
    spes_ckpt_fini(&c);

    /* a failing save reports the error, removes its temp file, keeps the old checkpoint */
    st = save_in_child(dir, &a, 1);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ck_assert_int_eq(count_entries(dir), 1);
    ck_assert_int_eq(spes_ckpt_load(dir, &c), 0);
    assert_same(&b, &c);
    spes_ckpt_fini(&c);
    free(dir);
    spes_ckpt_fini(&a);
    spes_ckpt_fini(&b);
}
END_TEST

/* The fuzz seeds were encoded by a Python script from checkpoint.h's format description alone;
 * loading them checks that the documented layout is the implemented one. */
START_TEST(documented_format_loads)
{
    char here[2048];
    const char *src = getenv("SPES_SOURCE_DIR");
    if (!src) { /* run by hand: CMake compiled this file by its absolute path, <src>/tests/x.c */
        snprintf(here, sizeof here, "%s", __FILE__);
        char *slash = strrchr(here, '/');
        ck_assert_ptr_nonnull(slash);
        strcpy(slash, "/..");
        src = here;
    }
    static const struct {
        const char *name;
        size_t nparams, nmoments;
    } seeds[] = {{"tiny_adam", 186, 162}, {"tiny_infer", 186, 0}, {"tiny_tied_all", 154, 154}};
    for (int i = 0; i < 3; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/fuzz/corpus/fuzz_checkpoint_read/%s", src, seeds[i].name);
        size_t len;
        uint8_t *f = slurp(path, &len);
        spes_ckpt ck;
        ck_assert_msg(spes_ckpt_parse(&ck, f, len, path) == 0, "%s", spes_errmsg());
        ck_assert_uint_eq(ck.nparams, seeds[i].nparams);
        ck_assert_uint_eq(ck.nmoments, seeds[i].nmoments);
        ck_assert_int_eq(!ck.adam_m, !seeds[i].nmoments);
        ck_assert(ck.step == 5 && ck.adam_t == 5 && ck.round == 2 && ck.data_pos == 1000 &&
                  ck.data_file == 0);
        ck_assert(ck.rng[0] == 1 && ck.rng[3] == 4);
        ck_assert_int_eq(ck.E, 2);
        spes_ckpt_fini(&ck);
        free(f);
    }
}
END_TEST

/* export_small writes an HF export of the small model with random weights; returns the params. */
static float *export_small(const char *dir, int tie, int bf16, spes_layout *lo, spes_model_config *mc)
{
    spes_run_config rc;
    small_config(&rc, tie);
    *mc = rc.model;
    ck_assert_int_eq(spes_layout_build(lo, mc), 0);
    float *p = malloc(lo->total_numel * sizeof(float));
    spes_rng r;
    spes_rng_seed(&r, 77);
    for (size_t i = 0; i < lo->total_numel; i++)
        p[i] = (float)spes_rng_normal(&r) * 0.02f;
    p[0] = 1.0f + 0x1p-8f;           /* a BF16 tie that rounds down to even */
    p[1] = 1.0f + 0x1p-7f + 0x1p-8f; /* a BF16 tie that rounds up to even */
    ck_assert_int_eq(spes_hf_export(dir, mc, lo, p, bf16), 0);
    return p;
}

START_TEST(hf_round_trip)
{
    char *dir = sub("hf");
    for (int bf16 = 0; bf16 < 2; bf16++) {
        spes_layout lo, lo2;
        spes_model_config mc, mc2;
        float *p = export_small(dir, 0, bf16, &lo, &mc), *q;
        ck_assert_int_eq(spes_hf_load(dir, &mc2, &lo2, &q), 0);
        ck_assert_int_eq(memcmp(&mc, &mc2, sizeof mc), 0);
        ck_assert_uint_eq(lo2.total_numel, lo.total_numel);
        for (size_t i = 0; i < lo.total_numel; i++) {
            float want = bf16 ? spes_st_bf16_to_f32(spes_st_f32_to_bf16(p[i])) : p[i];
            ck_assert_msg(memcmp(&want, &q[i], 4) == 0, "param %zu: %g vs %g", i, want, q[i]);
        }
        if (bf16) {
            ck_assert(q[0] == 1.0f);
            ck_assert(q[1] == 1.0f + 0x1p-6f);
        }
        free(p);
        free(q);
        spes_layout_fini(&lo);
        spes_layout_fini(&lo2);
    }
    /* config.json carries the HF identity and an explicit rms_norm_eps */
    char *cpath = spes_path_join(dir, "config.json");
    json_t *cfg = json_load_file(cpath, 0, NULL);
    ck_assert_ptr_nonnull(cfg);
    ck_assert_str_eq(json_string_value(json_object_get(cfg, "model_type")), "olmoe");
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(cfg, "architectures"), 0)),
                     "OlmoeForCausalLM");
    ck_assert(json_real_value(json_object_get(cfg, "rms_norm_eps")) == 1e-6);
    ck_assert_str_eq(json_string_value(json_object_get(cfg, "torch_dtype")), "bfloat16");
    json_decref(cfg);
    free(cpath);
    free(dir);
}
END_TEST

START_TEST(hf_export_from_checkpoint)
{
    spes_ckpt a;
    make_ckpt(&a, 1, 21);
    for (size_t i = 0; i < a.nparams; i++)
        a.params[i] = (float)i * 1e-3f - 1.0f; /* finite values: NaN != NaN would hide nothing here */
    char *dir = sub("ck"), *out = sub("hf");
    ck_assert_int_eq(spes_ckpt_save(dir, &a), 0);
    ck_assert_int_eq(spes_hf_export_ckpt(dir, out, 0), 0);
    spes_model_config mc;
    spes_layout lo;
    float *q;
    ck_assert_int_eq(spes_hf_load(out, &mc, &lo, &q), 0);
    ck_assert_uint_eq(lo.total_numel, a.nparams);
    ck_assert_int_eq(memcmp(q, a.params, a.nparams * sizeof(float)), 0);
    ck_assert_int_eq(mc.hidden_size, 16);
    free(q);
    spes_layout_fini(&lo);
    /* a corrupted checkpoint exports nothing */
    char *path = spes_path_join(dir, SPES_CKPT_FILE), *out2 = sub("hf2");
    FILE *fp = fopen(path, "r+b");
    fseek(fp, -40, SEEK_END);
    fputc(0x5a, fp);
    fclose(fp);
    ck_assert_int_eq(spes_hf_export_ckpt(dir, out2, 1), SPES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "whole-file checksum mismatch"));
    struct stat st;
    ck_assert_int_ne(stat(out2, &st), 0);
    free(path);
    free(out2);
    free(out);
    free(dir);
    spes_ckpt_fini(&a);
}
END_TEST

START_TEST(hf_tied_has_no_lm_head)
{
    char *dir = sub("tied");
    spes_layout lo;
    spes_model_config mc;
    float *p = export_small(dir, 1, 0, &lo, &mc);
    char *spath = spes_path_join(dir, "model.safetensors");
    spes_st_file *f;
    ck_assert_int_eq(spes_st_open(&f, spath), 0);
    ck_assert_ptr_null(spes_st_find(f, "lm_head.weight"));
    ck_assert_ptr_nonnull(spes_st_find(f, "model.embed_tokens.weight"));
    ck_assert_ptr_nonnull(spes_st_find(f, "model.layers.1.mlp.experts.3.down_proj.weight"));
    ck_assert_int_eq(f->ntensors, lo.ntensors);
    ck_assert_str_eq(spes_st_meta(f, "format"), "pt");
    spes_st_close(f);
    free(spath);
    free(p);
    spes_layout_fini(&lo);
    free(dir);
}
END_TEST

/* write_variant writes model.safetensors for lo's tensors with one change: tensor `drop` left out,
 * tensor `reshape` transposed, or an extra tensor `extra` appended. */
static void write_variant(const char *dir, const spes_layout *lo, const char *drop, const char *reshape,
                          const char *extra)
{
    spes_st_desc d[128];
    int n = 0;
    size_t total = 0;
    for (int i = 0; i < lo->ntensors; i++) {
        const spes_tensor *t = &lo->tensors[i];
        if (drop && !strcmp(t->name, drop))
            continue;
        d[n] = (spes_st_desc){
            .name = t->name, .dtype = SPES_ST_F32, .ndim = t->ndim, .shape = {t->shape[0], t->shape[1]}};
        if (reshape && !strcmp(t->name, reshape)) {
            d[n].shape[0] = t->shape[1];
            d[n].shape[1] = t->shape[0];
        }
        total += t->numel;
        n++;
    }
    if (extra) {
        d[n++] = (spes_st_desc){.name = extra, .dtype = SPES_ST_F32, .ndim = 1, .shape = {3}};
        total += 3;
    }
    ck_assert_int_lt(n, 128);
    char *path = spes_path_join(dir, "model.safetensors");
    float *zeros = calloc(total, sizeof(float));
    spes_st_writer w;
    ck_assert_int_eq(spes_st_writer_open(&w, path, d, n, NULL), 0);
    ck_assert_int_eq(spes_st_writer_put(&w, zeros, total), 0);
    ck_assert_int_eq(spes_st_writer_commit(&w), 0);
    free(zeros);
    free(path);
}

START_TEST(hf_import_refusals)
{
    char *dir = sub("hf");
    spes_layout lo;
    spes_model_config mc;
    float *p = export_small(dir, 0, 0, &lo, &mc);
    const char *q = "model.layers.1.self_attn.q_proj.weight";
    write_variant(dir, &lo, q, NULL, NULL);
    ck_assert_int_eq(spes_hf_import(dir, &lo, p), SPES_EFORMAT);
    ck_assert_str_eq(strstr(spes_errmsg(), "model.safetensors"),
                     "model.safetensors: tensor 'model.layers.1.self_attn.q_proj.weight' is missing");
    write_variant(dir, &lo, NULL, "model.layers.0.mlp.experts.2.up_proj.weight", NULL);
    ck_assert_int_eq(spes_hf_import(dir, &lo, p), SPES_EFORMAT);
    ck_assert_str_eq(
        strstr(spes_errmsg(), "model.safetensors"),
        "model.safetensors: tensor 'model.layers.0.mlp.experts.2.up_proj.weight' has shape [16, 8], "
        "the config needs [8, 16]");
    write_variant(dir, &lo, NULL, NULL, "model.rotary_emb.inv_freq");
    ck_assert_int_eq(spes_hf_import(dir, &lo, p), SPES_EFORMAT);
    ck_assert_str_eq(
        strstr(spes_errmsg(), "model.safetensors"),
        "model.safetensors: unexpected tensor 'model.rotary_emb.inv_freq' (not in this configuration)");
    write_variant(dir, &lo, NULL, NULL, NULL);
    ck_assert_int_eq(spes_hf_import(dir, &lo, p), 0);
    ck_assert(p[0] == 0.0f && p[lo.total_numel - 1] == 0.0f);
    free(p);
    spes_layout_fini(&lo);
    free(dir);
}
END_TEST

static char sample_dir[4096];

/* export_sample writes DIR/f32 and DIR/bf16 exports plus DIR/params.f32 (raw) and DIR/layout.json. */
START_TEST(export_sample)
{
    const char *dir = sample_dir;
    spes_layout lo;
    spes_model_config mc;
    char *f32 = spes_path_join(dir, "f32"), *bf = spes_path_join(dir, "bf16");
    float *p = export_small(f32, 0, 0, &lo, &mc);
    ck_assert_int_eq(spes_hf_export(bf, &mc, &lo, p, 1), 0);
    char *raw = spes_path_join(dir, "params.f32"), *lj = spes_path_join(dir, "layout.json");
    ck_assert_int_eq(spes_write_file_atomic(raw, p, lo.total_numel * sizeof(float)), 0);
    json_t *arr = json_array();
    for (int i = 0; i < lo.ntensors; i++) {
        const spes_tensor *t = &lo.tensors[i];
        json_t *shape = t->ndim == 2 ? json_pack("[I,I]", (json_int_t)t->shape[0], (json_int_t)t->shape[1])
                                     : json_pack("[I]", (json_int_t)t->shape[0]);
        json_array_append_new(arr, json_pack("{s:s,s:o,s:I}", "name", t->name, "shape", shape, "offset",
                                             (json_int_t)t->offset));
    }
    ck_assert_int_eq(json_dump_file(arr, lj, JSON_INDENT(1)), 0);
    json_decref(arr);
    free(p);
    spes_layout_fini(&lo);
    free(f32);
    free(bf);
    free(raw);
    free(lj);
}
END_TEST

START_TEST(outer_momentum_file)
{
    enum { N = 37 };
    float m[N], back[N];
    for (int i = 0; i < N; i++)
        m[i] = 0.01f * (float)i - 0.1f;
    ck_assert_int_eq(spes_outer_load(tmpdir, back, N, 3), SPES_ENOENT); /* no file: no momentum */
    ck_assert_int_eq(spes_outer_save(tmpdir, m, N, 3), 0);
    ck_assert_int_eq(spes_outer_load(tmpdir, back, N, 3), 0);
    ck_assert_mem_eq(back, m, sizeof m);
    ck_assert_int_eq(spes_outer_load(tmpdir, back, N, 4), SPES_ESTATE); /* another round */
    ck_assert_int_ne(spes_outer_load(tmpdir, back, N - 1, 3), 0);       /* another size */
    char *path = sub(SPES_OUTER_FILE), *buf;
    size_t len;
    ck_assert_int_eq(spes_read_file(path, 1 << 20, &buf, &len), 0);
    ck_assert_uint_eq(len, 32 + N * 4 + 32);
    ck_assert_mem_eq(buf, "SPESOUTR", 8);
    for (size_t at = 0; at < len; at += 13) { /* any flipped byte is refused */
        buf[at] ^= 0x20;
        ck_assert_int_eq(spes_write_file_atomic(path, buf, len), 0);
        ck_assert_int_ne(spes_outer_load(tmpdir, back, N, 3), 0);
        buf[at] ^= 0x20;
    }
    ck_assert_int_eq(spes_write_file_atomic(path, buf, len - 1), 0); /* truncated */
    ck_assert_int_ne(spes_outer_load(tmpdir, back, N, 3), 0);
    free(buf);
    ck_assert_int_eq(spes_outer_remove(tmpdir), 0);
    ck_assert_int_eq(access(path, F_OK), -1);
    ck_assert_int_eq(spes_outer_remove(tmpdir), 0);
    free(path);
}
END_TEST

/* The file of the round before stays as FILE.prev: a node killed after writing round R's files but
 * before its trainer state of R (written after them) resumes R - 1 with its own momentum and
 * residual. */
START_TEST(outer_file_generations)
{
    enum { N = 5 };
    float m3[N] = {1, 2, 3, 4, 5}, m4[N] = {6, 7, 8, 9, 10}, back[N];
    ck_assert_int_eq(spes_outer_save(tmpdir, m3, N, 3), 0);
    ck_assert_int_eq(spes_outer_save(tmpdir, m4, N, 4), 0);
    ck_assert_int_eq(spes_outer_load(tmpdir, back, N, 4), 0);
    ck_assert_mem_eq(back, m4, sizeof back);
    ck_assert_int_eq(spes_outer_load(tmpdir, back, N, 3), 0); /* the generation before */
    ck_assert_mem_eq(back, m3, sizeof back);
    ck_assert_int_eq(spes_outer_save(tmpdir, m3, N, 5), 0);
    ck_assert_int_eq(spes_outer_load(tmpdir, back, N, 3), SPES_ESTATE); /* two generations only */
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "of round 5, expected 3"));
    uint8_t cols[3] = {1, 0, 1}, got[3];
    float r1[2 + 2 * 2] = {1, 2, 3, 4, 5, 6}, *v = NULL;
    size_t numel = 0;
    ck_assert_int_eq(spes_resid_save(tmpdir, cols, 3, r1, 6, 7), 0);
    ck_assert_int_eq(spes_resid_save(tmpdir, cols, 3, r1, 6, 8), 0);
    ck_assert_int_eq(spes_resid_load(tmpdir, 3, 2, 2, 7, got, &v, &numel), 0);
    ck_assert_uint_eq(numel, 6);
    ck_assert_mem_eq(v, r1, sizeof r1);
    free(v);
    ck_assert_int_eq(spes_resid_remove(tmpdir), 0);
    ck_assert_int_eq(spes_resid_load(tmpdir, 3, 2, 2, 7, got, &v, &numel), SPES_ENOENT);
    ck_assert_int_eq(spes_outer_remove(tmpdir), 0);
    char *prev = sub(SPES_OUTER_FILE ".prev");
    ck_assert_int_eq(access(prev, F_OK), -1);
    free(prev);
}
END_TEST

static Suite *suite(int sample)
{
    if (sample) {
        Suite *s = suite_create("checkpoint export sample");
        TCase *tc = tcase_create("sample");
        tcase_add_test(tc, export_sample);
        suite_add_tcase(s, tc);
        return s;
    }
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("resume");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, round_trip);
    tcase_add_test(tc, truncation_and_corruption);
    tcase_add_test(tc, sizes_checked_against_config);
    tcase_add_test(tc, atomicity);
    tcase_add_test(tc, documented_format_loads);
    tcase_add_test(tc, outer_momentum_file);
    tcase_add_test(tc, outer_file_generations);
    suite_add_tcase(s, tc);
    TCase *th = tcase_create("huggingface");
    tcase_add_checked_fixture(th, setup, teardown);
    tcase_add_test(th, hf_round_trip);
    tcase_add_test(th, hf_export_from_checkpoint);
    tcase_add_test(th, hf_tied_has_no_lm_head);
    tcase_add_test(th, hf_import_refusals);
    suite_add_tcase(s, th);
    return s;
}

int main(int argc, char **argv)
{
    int sample = argc == 3 && !strcmp(argv[1], "--export-sample");
    if (sample)
        snprintf(sample_dir, sizeof sample_dir, "%s", argv[2]);
    SRunner *sr = srunner_create(suite(sample));
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
