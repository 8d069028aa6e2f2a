/* test_config.c: run-config parsing, validation, overrides and serialisation. */
#include <check.h>
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "config/cfgtab.h"
#include "config/config.h"
#include "config/dconfig.h"
#include "core/error.h"

static int parse(spes_run_config *c, const char *json)
{
    spes_config_defaults(c);
    return spes_config_parse_json(c, json, "run.json");
}

START_TEST(test_defaults_valid)
{
    spes_run_config c;
    spes_config_defaults(&c);
    ck_assert_int_eq(spes_config_validate(&c), 0);
    ck_assert_double_eq(c.train.beta2, 0.95);
    ck_assert_double_eq(c.spes.lb_factor_start, 0.7);
    ck_assert_str_eq(c.data.dtype, "uint16");
}
END_TEST

START_TEST(test_parse_fields)
{
    spes_run_config c;
    ck_assert_int_eq(parse(&c, "{\"model\":{\"hidden_size\":64,\"norm_topk_prob\":true},"
                               "\"train\":{\"lr\":0.001,\"seed\":7},"
                               "\"data\":{\"files\":[\"a.bin\",{\"url\":\"https://x/y.bin\",\"size\":10,"
                               "\"sha256\":\""
                               "0123456789012345678901234567890123456789012345678901234567890123"
                               "\"}],"
                               "\"dtype\":\"uint32\"}}"),
                     0);
    ck_assert_int_eq(c.model.hidden_size, 64);
    ck_assert_int_eq(c.model.norm_topk_prob, 1);
    ck_assert_double_eq(c.train.lr, 0.001);
    ck_assert_int_eq(c.train.seed, 7);
    ck_assert_int_eq(c.data.nfiles, 2);
    ck_assert_str_eq(c.data.files[1].path, "https://x/y.bin");
    ck_assert_int_eq(c.data.files[1].size, 10);
    ck_assert_str_eq(c.data.dtype, "uint32");
    spes_config_fini(&c);
}
END_TEST

START_TEST(test_errors_name_field)
{
    spes_run_config c;
    ck_assert_int_eq(parse(&c, "{\"model\":{\"hiden_size\":64}}"), SPES_EINVAL);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "model.hiden_size"));
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "run.json"));
    ck_assert_int_eq(parse(&c, "{\"train\":{\"beta1\":1.5}}"), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "train.beta1"));
    ck_assert_int_eq(parse(&c, "{\"model\":{\"hidden_size\":6.5}}"), SPES_EINVAL);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "integer"));
    ck_assert_int_eq(parse(&c, "{\"model\":{\"hidden_size\":\"64\"}}"), SPES_EINVAL);
    ck_assert_int_eq(parse(&c, "{\"model\":{"), SPES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "invalid JSON"));
    ck_assert_int_eq(parse(&c, "{\"bogus\":{}}"), SPES_EINVAL);
    ck_assert_int_eq(parse(&c, "{\"data\":{\"dtype\":\"int8\"}}"), SPES_EINVAL);
    ck_assert_int_eq(parse(&c, "{\"model\":{\"hidden_size\":64,\"hidden_size\":32}}"), SPES_EFORMAT);
}
END_TEST

START_TEST(test_validate_cross_fields)
{
    spes_run_config c;
    ck_assert_int_eq(parse(&c, "{\"model\":{\"hidden_size\":30,\"num_attention_heads\":4}}"), 0);
    ck_assert_int_eq(spes_config_validate(&c), SPES_EINVAL);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "divisible"));
    ck_assert_int_eq(parse(&c, "{\"model\":{\"num_experts\":2,\"num_experts_per_tok\":3}}"), 0);
    ck_assert_int_eq(spes_config_validate(&c), SPES_EINVAL);
}
END_TEST

START_TEST(test_override_and_round_trip)
{
    spes_run_config c, d;
    spes_config_defaults(&c);
    ck_assert_int_eq(spes_config_set(&c, "train.lr=0.5"), 0);
    ck_assert_int_eq(spes_config_set(&c, "model.tie_word_embeddings=true"), 0);
    ck_assert_int_eq(spes_config_set(&c, "train.seq_len=abc"), SPES_EINVAL);
    ck_assert_int_eq(spes_config_set(&c, "nodot=1"), SPES_EINVAL);
    ck_assert_int_eq(spes_config_set_data(&c, "x.bin"), 0);
    ck_assert_double_eq(c.train.lr, 0.5);
    char *js = spes_config_to_json(&c);
    ck_assert_int_eq(parse(&d, js), 0);
    ck_assert_mem_eq(&d.model, &c.model, sizeof c.model);
    ck_assert_mem_eq(&d.train, &c.train, sizeof c.train);
    ck_assert_mem_eq(&d.spes, &c.spes, sizeof c.spes);
    ck_assert_str_eq(d.data.files[0].path, "x.bin");
    /* plain averaging writes no outer-optimizer fields (nodes that predate them must read it) */
    ck_assert_ptr_null(strstr(js, "outer_"));
    /* and the poisoning defences at their defaults write nothing either */
    ck_assert_ptr_null(strstr(js, "norm_bound"));
    ck_assert_ptr_null(strstr(js, "aggregation"));
    ck_assert_ptr_null(strstr(js, "\"trim\""));
    ck_assert_ptr_null(strstr(js, "\"clip\""));
    ck_assert_str_eq(c.spes.aggregation, "mean");
    ck_assert(c.spes.norm_bound == 10.0);
    free(js);
    ck_assert_int_eq(spes_config_set(&c, "spes.aggregation=median"), SPES_EINVAL);
    ck_assert_int_eq(spes_config_set(&c, "spes.trim=0.5"), SPES_ERANGE);
    ck_assert_int_eq(spes_config_set(&c, "spes.aggregation=trimmed_mean"), 0);
    ck_assert_int_eq(spes_config_set(&c, "spes.trim=0.34"), 0);
    ck_assert_int_eq(spes_config_set(&c, "spes.norm_bound=0"), 0);
    js = spes_config_to_json(&c);
    ck_assert_ptr_nonnull(strstr(js, "\"trimmed_mean\""));
    ck_assert_ptr_nonnull(strstr(js, "\"norm_bound\""));
    spes_config_fini(&d);
    ck_assert_int_eq(parse(&d, js), 0);
    ck_assert_mem_eq(&d.spes, &c.spes, sizeof c.spes);
    free(js);
    ck_assert_int_eq(spes_config_set(&c, "spes.outer_momentum=0.9"), 0);
    js = spes_config_to_json(&c);
    ck_assert_ptr_nonnull(strstr(js, "\"outer_lr\""));
    spes_config_fini(&d);
    ck_assert_int_eq(parse(&d, js), 0);
    ck_assert_mem_eq(&d.spes, &c.spes, sizeof c.spes);
    free(js);
    char *hf = spes_config_hf_json(&c.model);
    ck_assert_ptr_nonnull(strstr(hf, "\"OlmoeForCausalLM\""));
    ck_assert_ptr_nonnull(strstr(hf, "\"rms_norm_eps\""));
    spes_model_config m;
    ck_assert_int_eq(spes_config_from_hf_json(&m, hf, "config.json"), 0);
    ck_assert_mem_eq(&m, &c.model, sizeof m);
    free(hf);
    spes_config_fini(&c);
    spes_config_fini(&d);
}
END_TEST

/* a small flat table of every field type, for the engine itself */
typedef struct demo {
    int n;
    int64_t big;
    double x;
    int on;
    char mode[8];
    char addr[16];
} demo;

static int check_even(const void *v, char *why, size_t n)
{
    if (*(const int *)v % 2 == 0)
        return 0;
    snprintf(why, n, "%d is odd", *(const int *)v);
    return 1;
}

static const char *const modes[] = {"fast", "slow", NULL};
static const spes_cfg_field demo_fields[] = {
    {NULL, "n", SPES_CFG_INT, offsetof(demo, n), 0, 0, 100, 4, NULL, NULL, check_even, NULL, NULL},
    {NULL, "big", SPES_CFG_I64, offsetof(demo, big), 0, 0, 1e15, 5e12, NULL, NULL, NULL, NULL, NULL},
    {NULL, "x", SPES_CFG_DBL, offsetof(demo, x), 0, -1, 1, 0.25, NULL, NULL, NULL, NULL, NULL},
    {NULL, "on", SPES_CFG_BOOL, offsetof(demo, on), 0, 0, 1, 1, NULL, NULL, NULL, NULL, NULL},
    {NULL, "mode", SPES_CFG_STR, offsetof(demo, mode), 8, 0, 0, 0, "fast", modes, NULL, NULL, NULL},
    {NULL, "addr", SPES_CFG_STR, offsetof(demo, addr), 16, 0, 0, 0, "", NULL, NULL, NULL, NULL},
};
static const spes_cfg_table demo_table = {demo_fields, 6};

static void demo_refused(const char *json, int rc, const char *msg)
{
    demo d;
    spes_cfg_defaults(&demo_table, &d);
    ck_assert_int_eq(spes_cfg_parse(&demo_table, &d, json, "demo.json"), rc);
    ck_assert_str_eq(spes_errmsg(), msg);
}

START_TEST(test_engine_flat_table)
{
    demo d;
    memset(&d, 0xff, sizeof d);
    spes_cfg_defaults(&demo_table, &d);
    ck_assert_int_eq(d.n, 4);
    ck_assert_int_eq(d.big, 5000000000000LL);
    ck_assert_double_eq(d.x, 0.25);
    ck_assert_int_eq(d.on, 1);
    ck_assert_str_eq(d.mode, "fast");
    ck_assert_str_eq(d.addr, "");
    ck_assert_int_eq(
        spes_cfg_parse(&demo_table, &d,
                       "{\"n\":8.0,\"big\":7,\"x\":-0.5,\"on\":false,\"mode\":\"slow\",\"addr\":\"a:1\"}",
                       "demo.json"),
        0);
    ck_assert_int_eq(d.n, 8);
    ck_assert_int_eq(d.big, 7);
    ck_assert_double_eq(d.x, -0.5);
    ck_assert_int_eq(d.on, 0);
    ck_assert_str_eq(d.mode, "slow");
    ck_assert_str_eq(d.addr, "a:1");
    json_t *j = spes_cfg_to_json(&demo_table, &d);
    char *txt = json_dumps(j, JSON_PRESERVE_ORDER | JSON_COMPACT);
    ck_assert_str_eq(txt, "{\"n\":8,\"big\":7,\"x\":-0.5,\"on\":false,\"mode\":\"slow\",\"addr\":\"a:1\"}");
    free(txt);
    json_decref(j);
    ck_assert_int_eq(spes_cfg_set(&demo_table, &d, "n=10"), 0);
    ck_assert_int_eq(spes_cfg_set(&demo_table, &d, "on=1"), 0);
    ck_assert_int_eq(spes_cfg_set(&demo_table, &d, "mode=fast"), 0);
    ck_assert_int_eq(d.n, 10);
    ck_assert_int_eq(d.on, 1);
    ck_assert_str_eq(d.mode, "fast");
    ck_assert_int_eq(spes_cfg_set(&demo_table, &d, "n=3"), SPES_EINVAL);
    ck_assert_str_eq(spes_errmsg(), "override: n 3 is odd");
    ck_assert_int_eq(spes_cfg_set(&demo_table, &d, "m=3"), SPES_EINVAL);
    ck_assert_str_eq(spes_errmsg(), "override: unknown field m");

    demo_refused("{\"n\":2,\"nn\":2}", SPES_EINVAL, "demo.json: unknown field nn");
    demo_refused("{\"n\":6.5}", SPES_EINVAL, "demo.json: n must be an integer");
    demo_refused("{\"n\":102}", SPES_ERANGE, "demo.json: n = 102 is outside [0, 100]");
    demo_refused("{\"n\":5}", SPES_EINVAL, "demo.json: n 5 is odd");
    demo_refused("{\"x\":1.5}", SPES_ERANGE, "demo.json: x = 1.5 is outside [-1, 1]");
    demo_refused("{\"x\":\"1\"}", SPES_EINVAL, "demo.json: x must be a number");
    demo_refused("{\"on\":1}", SPES_EINVAL, "demo.json: on must be true or false");
    demo_refused("{\"mode\":\"quick\"}", SPES_EINVAL, "demo.json: mode \"quick\" is not one of fast, slow");
    demo_refused("{\"mode\":3}", SPES_EINVAL, "demo.json: mode must be a string");
    demo_refused("{\"addr\":\"0123456789abcdef\"}", SPES_EINVAL,
                 "demo.json: addr is longer than 15 characters");
    demo_refused("[1]", SPES_EFORMAT, "demo.json: the top level must be a JSON object");
    demo_refused("{\"n\":2,\"n\":4}", SPES_EFORMAT,
                 "demo.json:1:10: invalid JSON: duplicate object key near '\"n\"'");
}
END_TEST

START_TEST(test_run_config_unknown_section_lists_sections)
{
    spes_run_config c;
    ck_assert_int_eq(parse(&c, "{\"optim\":{}}"), SPES_EINVAL);
    ck_assert_str_eq(spes_errmsg(),
                     "run.json: unknown section \"optim\" (expected model, train, spes, data)");
    ck_assert_int_eq(parse(&c, "{\"data\":{\"dtype\":\"int8\"}}"), SPES_EINVAL);
    ck_assert_str_eq(spes_errmsg(), "run.json: data.dtype \"int8\" is not one of uint16, uint32");
    ck_assert_int_eq(parse(&c, "{\"data\":{\"files\":\"a.bin\"}}"), SPES_EINVAL);
    ck_assert_str_eq(spes_errmsg(), "run.json: data.files must be an array");
    spes_config_defaults(&c);
    ck_assert_int_eq(spes_config_set(&c, "data.format=npy"), 0);
    ck_assert_str_eq(c.data.format, "npy");
    ck_assert_int_eq(spes_config_set(&c, "data.files=x"), SPES_EINVAL);
    ck_assert_str_eq(spes_errmsg(), "override: unknown field data.files");
    ck_assert_int_eq(spes_config_set(&c, "train.seed=1e16"), SPES_ERANGE);
    ck_assert_str_eq(spes_errmsg(),
                     "override: train.seed = 10000000000000000 is outside [0, 9000000000000000]");
}
END_TEST

static char dpath[64];

static int dload(spes_dconfig *d, const char *json)
{
    FILE *fp = fopen(dpath, "w");
    ck_assert_ptr_nonnull(fp);
    fputs(json, fp);
    fclose(fp);
    return spes_dconfig_load(d, dpath);
}

static void dconfig_refused(const char *json, int rc, const char *what)
{
    spes_dconfig d;
    char want[256];
    snprintf(want, sizeof want, "%s: %s", dpath, what);
    ck_assert_int_eq(dload(&d, json), rc);
    ck_assert_str_eq(spes_errmsg(), want);
}

START_TEST(test_daemon_config)
{
    strcpy(dpath, "/tmp/spes-dconfig-XXXXXX");
    int fd = mkstemp(dpath);
    ck_assert_int_ge(fd, 0);
    close(fd);
    spes_dconfig d;
    ck_assert_int_eq(dload(&d, "{\"name\":\"n0\",\"listen\":\"tcp://127.0.0.1:7600\",\"plain\":true,"
                               "\"state_dir\":\"/srv/s\",\"heartbeat_ms\":100}"),
                     0);
    ck_assert_str_eq(d.name, "n0");
    ck_assert_str_eq(d.advertise, "tcp://127.0.0.1:7600"); /* default: listen */
    ck_assert_str_eq(d.metrics, "");                       /* default: off */
    ck_assert_str_eq(d.control_socket, "/srv/s/control.sock");
    ck_assert_str_eq(d.admission, "auto");
    ck_assert_str_eq(d.codec, "fp32");
    ck_assert_int_eq(d.threads, 2);
    ck_assert_int_eq(d.heartbeat_ms, 100);
    ck_assert_int_eq(d.failure_timeout_ms, 15000);
    ck_assert_int_eq(d.plain, 1);
    ck_assert_int_eq(d.keep_blobs, 0);
    ck_assert_int_eq(dload(&d, "{\"listen\":\"tcp://0.0.0.0:7600\",\"advertise\":\"tcp://node-0.lan:7600\","
                               "\"metrics\":\"127.0.0.1:9464\",\"codec\":\"bf16\",\"fault\":\"nan\"}"),
                     0);
    ck_assert_str_eq(d.advertise, "tcp://node-0.lan:7600");
    ck_assert_str_eq(d.metrics, "127.0.0.1:9464");
    ck_assert_str_eq(d.codec, "bf16");
    ck_assert_str_eq(d.fault, "nan");
    dconfig_refused("{\"listen\":\"x\",\"lisen\":\"y\"}", SPES_EINVAL, "unknown field lisen");
    dconfig_refused("{\"threads\":\"2\"}", SPES_EINVAL, "threads must be a number");
    dconfig_refused("{\"heartbeat_ms\":10}", SPES_ERANGE, "heartbeat_ms = 10 is outside [50, 600000]");
    dconfig_refused("{\"round_deadline_ms\":100000000}", SPES_ERANGE,
                    "round_deadline_ms = 100000000 is outside [200, 86400000]");
    dconfig_refused("{\"codec\":\"fp16\"}", SPES_EINVAL, "codec \"fp16\" is not one of fp32, bf16");
    dconfig_refused("{\"admission\":\"manual\"}", SPES_EINVAL,
                    "admission \"manual\" is not one of auto, approve");
    dconfig_refused("{\"log_level\":\"trace\"}", SPES_EINVAL,
                    "log_level \"trace\" is not one of error, warn, info, debug");
    dconfig_refused("{\"fault\":\"boom\"}", SPES_EINVAL,
                    "fault \"boom\" is not one of \"\", nan, wrong-hash, diverge, other-node, all-columns, "
                    "scaled, scaled-late, late, mute-aggregator, lying-aggregate");
    dconfig_refused("{\"plain\":\"yes\"}", SPES_EINVAL, "plain must be true or false");
    dconfig_refused("{\"metrics\":\"9464\"}", SPES_EINVAL,
                    "metrics \"9464\" is not HOST:PORT (e.g. 127.0.0.1:9464)");
    dconfig_refused("{\"metrics\":\"h:70000\"}", SPES_EINVAL,
                    "metrics \"h:70000\" is not HOST:PORT (e.g. 127.0.0.1:9464)");
    dconfig_refused("{\"advertise\":\"node-0:7600\"}", SPES_EINVAL,
                    "advertise \"node-0:7600\" is not a URL of the form SCHEME://HOST:PORT");
    dconfig_refused("{\"coordinator_name\":\"Node_0\"}", SPES_EINVAL,
                    "coordinator_name \"Node_0\" is not a certificate name ([a-z0-9-]{1,63})");
    /* a coordinator's pinned name is its own; a node's names the coordinator's certificate */
    char json[512];
    snprintf(json, sizeof json,
             "{\"name\":\"node-0\",\"listen\":\"tcp://127.0.0.1:7600\",\"plain\":true,\"run_config\":\"%s\","
             "\"coordinator_name\":\"node-1\"}",
             dpath);
    ck_assert_int_eq(dload(&d, json), 0);
    ck_assert_str_eq(d.coordinator_name, "node-1");
    ck_assert_int_eq(spes_dconfig_validate(&d), SPES_EINVAL);
    ck_assert_str_eq(
        spes_errmsg(),
        "daemon config: coordinator_name \"node-1\" differs from this coordinator's name \"node-0\"");
    snprintf(d.coordinator_name, sizeof d.coordinator_name, "node-0");
    ck_assert_int_eq(spes_dconfig_validate(&d), 0);
    snprintf(d.coordinator, sizeof d.coordinator, "tcp://127.0.0.1:7601"); /* a node: any name of the run */
    snprintf(d.coordinator_name, sizeof d.coordinator_name, "node-1");
    ck_assert_int_eq(spes_dconfig_validate(&d), 0);
    ck_assert_int_eq(dload(&d, "{\"name\":\"n\",}"), SPES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), dpath));
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), ":1:13: invalid JSON:"));
    unlink(dpath);
}
END_TEST

Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_defaults_valid);
    tcase_add_test(tc, test_parse_fields);
    tcase_add_test(tc, test_errors_name_field);
    tcase_add_test(tc, test_validate_cross_fields);
    tcase_add_test(tc, test_override_and_round_trip);
    tcase_add_test(tc, test_engine_flat_table);
    tcase_add_test(tc, test_run_config_unknown_section_lists_sections);
    tcase_add_test(tc, test_daemon_config);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
