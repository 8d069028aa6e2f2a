/* test_safetensors.c: the safetensors writer and strict reader.
 * Round trips (F32 bit-exact, BF16 with known rounding cases, F16 decoding),
 * the exact bytes of the header, and one refusal per malformed case with the
 * message the user would see. */
#include "safetensors/safetensors.h"

#include "core/error.h"

#include <check.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[64];

static void setup(void)
{
    strcpy(tmpdir, "/tmp/spes-st-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

static uint32_t bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static float fbits(uint32_t u)
{
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    ck_assert_ptr_nonnull(fp);
    fseek(fp, 0, SEEK_END);
    *len = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = malloc(*len + 1);
    ck_assert_uint_eq(fread(b, 1, *len, fp), *len);
    fclose(fp);
    return b;
}

START_TEST(f32_round_trip)
{
    char path[128];
    snprintf(path, sizeof path, "%s/model.safetensors", tmpdir);
    spes_st_desc d[4] = {
        {.name = "a.weight", .dtype = SPES_ST_F32, .ndim = 2, .shape = {3, 5}},
        {.name = "empty", .dtype = SPES_ST_F32, .ndim = 2, .shape = {0, 7}},
        {.name = "scalar", .dtype = SPES_ST_F32, .ndim = 0},
        {.name = "b \"quoted\"", .dtype = SPES_ST_F32, .ndim = 1, .shape = {4}},
    };
    float vals[20];
    for (int i = 0; i < 20; i++)
        vals[i] = (float)i * 0.37f - 3.1f;
    vals[3] = fbits(0x7fc00123u); /* a NaN payload survives F32 */
    vals[4] = -0.0f;
    spes_st_writer w;
    const char *meta[] = {"producer", "spes", NULL};
    ck_assert_int_eq(spes_st_writer_open(&w, path, d, 4, meta), 0);
    ck_assert_int_eq(spes_st_writer_put(&w, vals, 7), 0); /* split across calls and tensors */
    ck_assert_int_eq(spes_st_writer_put(&w, vals + 7, 13), 0);
    ck_assert_int_eq(spes_st_writer_commit(&w), 0);

    size_t len;
    uint8_t *raw = slurp(path, &len);
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n |= (uint64_t)raw[i] << (8 * i);
    ck_assert_uint_eq(n % 8, 0);
    ck_assert_uint_eq(len, 8 + n + 20 * 4);
    const char *head =
        "{\"__metadata__\":{\"format\":\"pt\",\"producer\":\"spes\"},\"a.weight\":{\"dtype\":\"F32\","
        "\"shape\":[3,5],\"data_offsets\":[0,60]},";
    ck_assert_int_eq(memcmp(raw + 8, head, strlen(head)), 0);
    size_t close = n;
    while (close > 0 && raw[8 + close - 1] == ' ')
        close--;
    ck_assert_int_eq(raw[8 + close - 1], '}'); /* JSON, then only spaces up to the multiple of 8 */
    ck_assert_uint_lt(n - close, 8);
    ck_assert_int_eq(memcmp(raw + 8 + n, vals, 80), 0); /* tensors tiled in order, no padding */
    free(raw);

    spes_st_file *f;
    ck_assert_int_eq(spes_st_open(&f, path), 0);
    ck_assert_int_eq(f->ntensors, 4);
    ck_assert_str_eq(spes_st_meta(f, "format"), "pt");
    const spes_st_tensor *t = spes_st_find(f, "a.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_int_eq(t->shape[0], 3);
    ck_assert_int_eq(t->shape[1], 5);
    float back[15];
    ck_assert_int_eq(spes_st_read_f32(f, t, back, 15), 0);
    ck_assert_int_eq(memcmp(back, vals, 60), 0);
    ck_assert_int_eq(spes_st_read_f32(f, t, back, 14), SPES_EINVAL);
    t = spes_st_find(f, "b \"quoted\"");
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(t->begin, 64);
    ck_assert_int_eq(spes_st_read_f32(f, t, back, 4), 0);
    ck_assert_int_eq(memcmp(back, vals + 16, 16), 0);
    t = spes_st_find(f, "scalar");
    ck_assert_int_eq(t->ndim, 0);
    ck_assert_uint_eq(t->numel, 1);
    ck_assert_int_eq(spes_st_read_f32(f, t, back, 1), 0);
    ck_assert_uint_eq(bits(back[0]), bits(vals[15]));
    ck_assert_uint_eq(spes_st_find(f, "empty")->numel, 0);
    ck_assert_ptr_null(spes_st_find(f, "missing"));
    spes_st_close(f);
}
END_TEST

START_TEST(bf16_rounding)
{
    static const struct {
        uint32_t in;
        uint16_t out;
    } cases[] = {
        {0x3f800000u, 0x3f80}, /* 1.0 exact */
        {0x3f808000u, 0x3f80}, /* tie, lower half even: stays */
        {0x3f818000u, 0x3f82}, /* tie, lower half odd: rounds up to even */
        {0x3f808001u, 0x3f81}, /* just above the tie: up */
        {0x3f807fffu, 0x3f80}, /* just below the tie: down */
        {0xbf818000u, 0xbf82}, /* negative tie */
        {0x7f7fffffu, 0x7f80}, /* FLT_MAX overflows to inf, as torch does */
        {0x7f800000u, 0x7f80}, /* inf */
        {0xff800000u, 0xff80}, /* -inf */
        {0x80000000u, 0x8000}, /* -0 */
        {0x00000001u, 0x0000}, /* tiny subnormal rounds to 0 */
        {0x7fc00000u, 0x7fc0}, /* quiet NaN */
        {0x7f800001u, 0x7fc0}, /* signalling NaN must not become inf */
        {0xffffffffu, 0xffff}, /* negative NaN with payload stays NaN */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ck_assert_msg(spes_st_f32_to_bf16(fbits(cases[i].in)) == cases[i].out,
                      "case %zu: 0x%08x -> 0x%04x, want 0x%04x", i, cases[i].in,
                      spes_st_f32_to_bf16(fbits(cases[i].in)), cases[i].out);

    char path[128];
    snprintf(path, sizeof path, "%s/bf16.safetensors", tmpdir);
    enum { N = 14 };
    float in[N];
    for (int i = 0; i < N; i++)
        in[i] = fbits(cases[i].in);
    spes_st_desc d = {.name = "x", .dtype = SPES_ST_BF16, .ndim = 2, .shape = {2, 7}};
    spes_st_writer w;
    ck_assert_int_eq(spes_st_writer_open(&w, path, &d, 1, NULL), 0);
    ck_assert_int_eq(spes_st_writer_put(&w, in, N), 0);
    ck_assert_int_eq(spes_st_writer_commit(&w), 0);
    spes_st_file *f;
    ck_assert_int_eq(spes_st_open(&f, path), 0);
    const spes_st_tensor *t = spes_st_find(f, "x");
    ck_assert_int_eq(t->dtype, SPES_ST_BF16);
    ck_assert_uint_eq(t->end - t->begin, 2 * N);
    float out[N];
    ck_assert_int_eq(spes_st_read_f32(f, t, out, N), 0);
    for (int i = 0; i < N; i++)
        ck_assert_uint_eq(bits(out[i]), (uint32_t)cases[i].out << 16);
    spes_st_close(f);
}
END_TEST

/* build assembles a file: 8-byte size, header text, then data_len bytes of 0x11. */
static uint8_t *build(const char *header, size_t data_len, size_t *len)
{
    size_t n = strlen(header);
    *len = 8 + n + data_len;
    uint8_t *b = malloc(*len + 1);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(b + 8, header, n);
    memset(b + 8 + n, 0x11, data_len);
    return b;
}

START_TEST(f16_decode)
{
    static const struct {
        uint16_t h;
        uint32_t f;
    } cases[] = {
        {0x3c00, 0x3f800000u}, {0xc000, 0xc0000000u}, {0x7bff, 0x477fe000u}, /* 65504 */
        {0x0001, 0x33800000u},                                               /* 2^-24 subnormal */
        {0x03ff, 0x387fc000u},                                               /* largest subnormal */
        {0x0400, 0x38800000u},                                               /* smallest normal */
        {0x7c00, 0x7f800000u}, {0xfc00, 0xff800000u}, {0x8000, 0x80000000u},
    };
    enum { N = 9 };
    size_t len;
    uint8_t *b = build("{\"h\":{\"dtype\":\"F16\",\"shape\":[9],\"data_offsets\":[0,18]}}", 2 * N, &len);
    uint8_t *data = b + len - 2 * N;
    for (int i = 0; i < N; i++) {
        data[2 * i] = (uint8_t)cases[i].h;
        data[2 * i + 1] = (uint8_t)(cases[i].h >> 8);
    }
    spes_st_file *f;
    ck_assert_int_eq(spes_st_parse(&f, b, len, "h.safetensors"), 0);
    ck_assert_ptr_null(spes_st_meta(f, "format")); /* absent __metadata__ is tolerated, as HF does */
    float out[N];
    ck_assert_int_eq(spes_st_read_f32(f, spes_st_find(f, "h"), out, N), 0);
    for (int i = 0; i < N; i++)
        ck_assert_msg(bits(out[i]) == cases[i].f, "f16 0x%04x -> 0x%08x", cases[i].h, bits(out[i]));
    ck_assert(isnan(spes_st_f16_to_f32(0x7e00)));
    spes_st_close(f);
    free(b);
}
END_TEST

/* refuse parses a header + data and expects SPES_EFORMAT with this exact message. */
static void refuse(const char *header, size_t data_len, const char *want)
{
    size_t len;
    uint8_t *b = build(header, data_len, &len);
    spes_st_file *f = (spes_st_file *)1;
    spes_errclear();
    int rc = spes_st_parse(&f, b, len, "model.safetensors");
    ck_assert_msg(rc == SPES_EFORMAT, "accepted: %s", header);
    ck_assert_ptr_null(f);
    ck_assert_str_eq(spes_errmsg(), want);
    free(b);
}

#define T1(off, shape, dt) "\"x\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":" off "}"
#define T2(off, shape, dt) "\"y\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":" off "}"

START_TEST(refusals)
{
    refuse("{" T1("[8,16]", "[2]", "F32") "," T2("[0,12]", "[3]", "F32") "}", 16,
           "model.safetensors: tensor 'x': data_offsets [8, 16] overlap the previous tensor ending at 12");
    refuse("{" T1("[0,4]", "[1]", "F32") "," T2("[8,12]", "[1]", "F32") "}", 12,
           "model.safetensors: tensor 'y': data_offsets [8, 12] leave a gap after the previous tensor ending "
           "at 4");
    refuse(
        "{" T1("[4,8]", "[1]", "F32") "}", 8,
        "model.safetensors: tensor 'x': data_offsets [4, 8] leave a gap: the first tensor must start at 0");
    refuse("{" T1("[0,4]", "[1]", "F32") "}", 8,
           "model.safetensors: the tensors cover 4 bytes of data but the data region is 8 bytes");
    refuse("{" T1("[0,8]", "[2]", "F32") "}", 4,
           "model.safetensors: the tensors cover 8 bytes of data but the data region is 4 bytes");
    refuse("{" T1("[0,6]", "[2]", "F32") "}", 6,
           "model.safetensors: tensor 'x': data_offsets [0, 6] hold 6 bytes but 2 elements of F32 need 8");
    refuse("{" T1("[0,4]", "[1]", "F128") "}", 4, "model.safetensors: tensor 'x': unknown dtype 'F128'");
    refuse("{" T1("[0,4]", "[-1]", "F32") "}", 4,
           "model.safetensors: tensor 'x': shape[0] is not a non-negative integer");
    refuse("{" T1("[0,4]", "[1.0]", "F32") "}", 4,
           "model.safetensors: tensor 'x': shape[0] is not a non-negative integer");
    refuse("{" T1("[0,4]", "[4294967296,4294967296,16]", "F32") "}", 4,
           "model.safetensors: tensor 'x': shape product overflows 64 bits");
    refuse("{" T1("[0,4]", "[4611686018427387904]", "F32") "}", 4, /* numel fits, bytes do not */
           "model.safetensors: tensor 'x': 4611686018427387904 elements of F32 overflow a 64-bit byte size");
    refuse("{" T1("[0,4]", "[1,1,1,1,1,1,1,1,1]", "F32") "}", 4,
           "model.safetensors: tensor 'x': shape has 9 dimensions, more than 8");
    refuse("{" T1("[4,0]", "[1]", "F32") "}", 4,
           "model.safetensors: tensor 'x': data_offsets [4, 0] end before they begin");
    refuse("{" T1("[0]", "[1]", "F32") "}", 4,
           "model.safetensors: tensor 'x': data_offsets is not [begin, end] with two non-negative integers");
    refuse("{" T1("[0,-4]", "[1]", "F32") "}", 4,
           "model.safetensors: tensor 'x': data_offsets is not [begin, end] with two non-negative integers");
    refuse("{\"x\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
           "model.safetensors: tensor 'x': missing field 'dtype'");
    refuse("{\"x\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4,
           "model.safetensors: tensor 'x': missing field 'shape'");
    refuse("{\"x\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4,
           "model.safetensors: tensor 'x': missing field 'data_offsets'");
    refuse("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"extra\":1}}", 4,
           "model.safetensors: tensor 'x': unexpected field 'extra'");
    refuse("{\"x\":[]}", 0, "model.safetensors: tensor 'x': entry is not an object");
    refuse("{\"__metadata__\":{\"format\":1}}", 0,
           "model.safetensors: __metadata__ 'format' is not a string");
    refuse("{\"__metadata__\":[]}", 0, "model.safetensors: __metadata__ is not an object");
    refuse("[]", 0, "model.safetensors: header does not start with '{'");
    refuse("{\"x\":", 0,
           "model.safetensors: header is not valid JSON: unexpected token near end of file"
           " (byte 5)");
    refuse("{" T1("[0,4]", "[1]", "F32") "," T1("[0,4]", "[1]", "F32") "}", 4,
           "model.safetensors: header is not valid JSON: duplicate object key near '\"x\"' (byte 57)");
    refuse(
        "{" T1("[0,99999999999999999999]", "[1]", "F32") "}", 4,
        "model.safetensors: header is not valid JSON: too big integer near '99999999999999999999' (byte 70)");
}
END_TEST

START_TEST(size_refusals)
{
    uint8_t b[64] = {0};
    spes_st_file *f;
    ck_assert_int_eq(spes_st_parse(&f, b, 5, "m.st"), SPES_EFORMAT);
    ck_assert_str_eq(spes_errmsg(),
                     "m.st: file is 5 bytes, too short for the 8-byte header size (truncated?)");
    b[0] = 57; /* header size 57 > the 56 bytes after it */
    ck_assert_int_eq(spes_st_parse(&f, b, 64, "m.st"), SPES_EFORMAT);
    ck_assert_str_eq(spes_errmsg(), "m.st: header size 57 is larger than the 56 bytes after it (truncated?)");
    uint64_t big = 100000001;
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(big >> (8 * i));
    ck_assert_int_eq(spes_st_parse(&f, b, 64, "m.st"), SPES_EFORMAT);
    ck_assert_str_eq(spes_errmsg(), "m.st: header size 100000001 exceeds the limit of 100000000 bytes");
    memset(b, 0xff, 8);
    ck_assert_int_eq(spes_st_parse(&f, b, 64, "m.st"), SPES_EFORMAT);
    ck_assert_str_eq(spes_errmsg(),
                     "m.st: header size 18446744073709551615 exceeds the limit of 100000000 bytes");

    /* a real file truncated at every length is refused, never crashes, names the path */
    char path[128];
    snprintf(path, sizeof path, "%s/t.safetensors", tmpdir);
    spes_st_desc d = {.name = "w", .dtype = SPES_ST_F32, .ndim = 1, .shape = {6}};
    float v[6] = {1, 2, 3, 4, 5, 6};
    spes_st_writer w;
    ck_assert_int_eq(spes_st_writer_open(&w, path, &d, 1, NULL), 0);
    ck_assert_int_eq(spes_st_writer_put(&w, v, 6), 0);
    ck_assert_int_eq(spes_st_writer_commit(&w), 0);
    size_t len;
    uint8_t *raw = slurp(path, &len);
    for (size_t cut = 0; cut < len; cut++) {
        ck_assert_int_eq(truncate(path, (off_t)cut), 0);
        ck_assert_int_ne(spes_st_open(&f, path), 0);
        ck_assert_ptr_null(f);
        ck_assert_int_eq(strncmp(spes_errmsg(), path, strlen(path)), 0);
    }
    free(raw);
    snprintf(path, sizeof path, "%s/absent.safetensors", tmpdir);
    ck_assert_int_eq(spes_st_open(&f, path), SPES_ENOENT);
}
END_TEST

START_TEST(writer_contract)
{
    char path[128];
    snprintf(path, sizeof path, "%s/w.safetensors", tmpdir);
    FILE *fp = fopen(path, "wb");
    fputs("old", fp);
    fclose(fp);
    spes_st_desc d[2] = {{.name = "a", .dtype = SPES_ST_F32, .ndim = 1, .shape = {3}},
                         {.name = "b", .dtype = SPES_ST_BF16, .ndim = 1, .shape = {2}}};
    float v[6] = {1, 2, 3, 4, 5, 6};
    spes_st_writer w;
    /* an incomplete write is never committed and the old file stays */
    ck_assert_int_eq(spes_st_writer_open(&w, path, d, 2, NULL), 0);
    ck_assert_int_eq(spes_st_writer_put(&w, v, 4), 0);
    ck_assert_int_eq(spes_st_writer_commit(&w), SPES_ESTATE);
    ck_assert_str_eq(spes_errmsg() + strlen(path), ": tensor 'b' has 1 of 2 values; nothing committed");
    size_t len;
    uint8_t *raw = slurp(path, &len);
    ck_assert_uint_eq(len, 3);
    free(raw);
    /* too many values */
    ck_assert_int_eq(spes_st_writer_open(&w, path, d, 2, NULL), 0);
    ck_assert_int_eq(spes_st_writer_put(&w, v, 6), SPES_EINVAL);
    ck_assert_int_eq(spes_st_writer_commit(&w), SPES_ESTATE);
    /* bad descriptions */
    spes_st_desc bad = {.name = "x", .dtype = SPES_ST_I32, .ndim = 1, .shape = {1}};
    ck_assert_int_eq(spes_st_writer_open(&w, path, &bad, 1, NULL), SPES_EINVAL);
    bad.dtype = SPES_ST_F32;
    bad.shape[0] = -2;
    ck_assert_int_eq(spes_st_writer_open(&w, path, &bad, 1, NULL), SPES_EINVAL);
    spes_st_desc dup[2] = {d[0], d[0]};
    ck_assert_int_eq(spes_st_writer_open(&w, path, dup, 2, NULL), SPES_EINVAL);
    /* no temp files left behind */
    char cmd[160];
    snprintf(cmd, sizeof cmd, "test $(ls '%s' | wc -l) -eq 1", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("format");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, f32_round_trip);
    tcase_add_test(tc, bf16_rounding);
    tcase_add_test(tc, f16_decode);
    tcase_add_test(tc, writer_contract);
    suite_add_tcase(s, tc);
    TCase *tr = tcase_create("refusals");
    tcase_add_checked_fixture(tr, setup, teardown);
    tcase_add_test(tr, refusals);
    tcase_add_test(tr, size_refusals);
    suite_add_tcase(s, tr);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
