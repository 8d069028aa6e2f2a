/* test_config.c: run-config parsing, validation, overrides and serialisation. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
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
                               "\"sha256\":\"" "0123456789012345678901234567890123456789012345678901234567890123" "\"}],"
                               "\"dtype\":\"uint32\"}}"), 0);
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

Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_defaults_valid);
    tcase_add_test(tc, test_parse_fields);
    tcase_add_test(tc, test_errors_name_field);
    tcase_add_test(tc, test_validate_cross_fields);
    tcase_add_test(tc, test_override_and_round_trip);
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
