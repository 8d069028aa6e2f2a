/* test_cli.c: the shared option parser (cli/opts.h): values, bounds, positionals,
 * the error messages that name the option and the value, and the help. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/opts.h"
#include "core/error.h"

typedef struct args {
    const char *out, *name;
    long steps;
    double p;
    int check, quiet;
    spes_opt_list sets;
} args;

static int parse(args *a, const char **pos, int *npos, const char *const *argv)
{
    const spes_opt opts[] = {
        {"out", 0, SPES_OPT_STR, &a->out, 0, 0, "DIR", "where it goes"},
        {"name", 0, SPES_OPT_STR, &a->name, 0, 0, "NAME", "a name"},
        {"steps", 0, SPES_OPT_LONG, &a->steps, 1, 1L << 40, "N", "how many"},
        {"top-p", 0, SPES_OPT_DOUBLE, &a->p, 0, 1, "P", "a fraction"},
        {"check", 'n', SPES_OPT_FLAG, &a->check, 0, 0, NULL, "check only"},
        {"quiet", 0, SPES_OPT_FLAG, &a->quiet, 0, 0, NULL, "say less"},
        {"set", 0, SPES_OPT_LIST, &a->sets, 0, 0, "S.F=V", "override"},
        {NULL, 0, 0, NULL, 0, 0, NULL, NULL},
    };
    const spes_opt_cmd cmd = {"spesd demo", "[options] INPUT...", opts, 1, 3, "notes\n"};
    char *v[32];
    int argc = 0;
    while (argv[argc]) {
        v[argc] = (char *)argv[argc];
        argc++;
    }
    *a = (args){.steps = -1};
    return spes_opts_parse(&cmd, argc, v, pos, npos);
}

START_TEST(values_and_positionals)
{
    args a;
    const char *pos[3];
    int n = 0;
    const char *argv[] = {"demo", "in1",   "--out", "d",       "--steps=12", "-n", "--set",   "a.b=1",
                          "in2",  "--set", "c.d=2", "--top-p", "0.5",        "--", "--quiet", NULL};
    ck_assert_int_eq(parse(&a, pos, &n, argv), 0);
    ck_assert_str_eq(a.out, "d");
    ck_assert_int_eq(a.steps, 12);
    ck_assert_int_eq(a.check, 1);
    ck_assert_int_eq(a.quiet, 0); /* after --: a positional */
    ck_assert_double_eq(a.p, 0.5);
    ck_assert_int_eq(a.sets.n, 2);
    ck_assert_str_eq(a.sets.v[0], "a.b=1");
    ck_assert_str_eq(a.sets.v[1], "c.d=2");
    ck_assert_int_eq(n, 3);
    ck_assert_str_eq(pos[0], "in1");
    ck_assert_str_eq(pos[1], "in2");
    ck_assert_str_eq(pos[2], "--quiet");
    ck_assert_ptr_null(a.name);
    const char *dash[] = {"demo", "-", NULL};
    ck_assert_int_eq(parse(&a, pos, &n, dash), 0);
    ck_assert_int_eq(n, 1);
    ck_assert_str_eq(pos[0], "-");
}
END_TEST

static void refused(const char *const *argv, const char *msg)
{
    args a;
    const char *pos[3];
    int n = 0;
    ck_assert_int_eq(parse(&a, pos, &n, argv), SPES_EINVAL);
    ck_assert_str_eq(spes_errmsg(), msg);
}

START_TEST(errors_name_option_and_value)
{
    refused((const char *[]){"demo", "x", "--steps", "x", NULL},
            "--steps: expected a positive integer, got 'x'");
    refused((const char *[]){"demo", "x", "--steps", "0", NULL},
            "--steps: expected a positive integer, got '0'");
    refused((const char *[]){"demo", "x", "--steps", "12abc", NULL},
            "--steps: expected a positive integer, got '12abc'");
    refused((const char *[]){"demo", "x", "--top-p", "2", NULL},
            "--top-p: expected a number in 0..1, got '2'");
    refused((const char *[]){"demo", "x", "--top-p", "nan", NULL},
            "--top-p: expected a number in 0..1, got 'nan'");
    refused((const char *[]){"demo", "x", "--bogus", NULL}, "unknown option '--bogus'");
    refused((const char *[]){"demo", "x", "-q", NULL}, "unknown option '-q'");
    refused((const char *[]){"demo", "x", "--out", NULL}, "--out: needs a value");
    refused((const char *[]){"demo", "x", "--quiet=1", NULL}, "--quiet: takes no value");
    refused((const char *[]){"demo", "a", "b", "c", "d", NULL}, "unexpected argument 'd'");
    refused((const char *[]){"demo", "--quiet", NULL},
            "expected at least 1 argument after the options ([options] INPUT...)");
    long v = 7;
    ck_assert_int_eq(spes_opts_long("--days", "99999", 1, 36500, &v), SPES_EINVAL);
    ck_assert_str_eq(spes_errmsg(), "--days: expected an integer in 1..36500, got '99999'");
    ck_assert_int_eq(v, 7);
    ck_assert_int_eq(spes_opts_long("--days", "-3", 0, 1L << 50, &v), SPES_EINVAL);
    ck_assert_str_eq(spes_errmsg(), "--days: expected a non-negative integer, got '-3'");
    ck_assert_int_eq(spes_opts_long("--days", "30", 1, 36500, &v), 0);
    ck_assert_int_eq(v, 30);
}
END_TEST

START_TEST(help_lists_every_option)
{
    args a;
    const char *pos[3];
    int n = 0;
    ck_assert_int_eq(parse(&a, pos, &n, (const char *[]){"demo", "--steps", "3", "--help", "--bogus", NULL}),
                     SPES_OPTS_HELP);
    ck_assert_int_eq(parse(&a, pos, &n, (const char *[]){"demo", "-h", NULL}), SPES_OPTS_HELP);
    const spes_opt opts[] = {
        {"steps", 0, SPES_OPT_LONG, &a.steps, 1, 10, "N", "how many"},
        {"check", 'n', SPES_OPT_FLAG, &a.check, 0, 0, NULL, "check only"},
        {NULL, 0, 0, NULL, 0, 0, NULL, NULL},
    };
    const spes_opt_cmd cmd = {"spesd demo", "--steps N", opts, 0, 0, "a note\n"};
    char buf[1024] = "";
    FILE *fp = fmemopen(buf, sizeof buf - 1, "w");
    ck_assert_ptr_nonnull(fp);
    spes_opts_usage(&cmd, fp);
    fclose(fp);
    ck_assert_str_eq(buf, "usage: spesd demo --steps N\n"
                          "options:\n"
                          "  --steps N              how many\n"
                          "  -n, --check            check only\n"
                          "a note\n");
}
END_TEST

static Suite *cli_suite(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("opts");
    tcase_add_test(tc, values_and_positionals);
    tcase_add_test(tc, errors_name_option_and_value);
    tcase_add_test(tc, help_lists_every_option);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(cli_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
