/* test_data.c: the token data layer: writer/reader round trips in every format, the
 * refusals of malformed files (messages asserted), the vocabulary scan, parts, batches
 * and the resumable cursor. With --write DIR or --read FILE DTYPE it is also the C side
 * of tests/data_numpy.py (NumPy reads our .npy files and we read NumPy's). */
#include "core/error.h"
#include "core/parallel.h"
#include "data/dataset.h"
#include "data/tokfile.h"
#include "data/tokwriter.h"

#include <check.h>
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/spes-test-data-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    char p[512];
    while (d && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
            unlink(p);
        }
    }
    if (d)
        closedir(d);
    rmdir(tmpdir);
}

static const char *tpath(const char *name)
{
    static char buf[4][512];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

static void put_file(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_uint_eq(fwrite(data, 1, len, fp), len);
    fclose(fp);
}

static size_t file_size(const char *path)
{
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    return (size_t)st.st_size;
}

/* write_ids writes ids[i] = (i * 7919 + salt) % mod in chunks of uneven sizes. */
static void write_ids(const char *path, spes_tok_format f, spes_tok_dtype d, size_t n, uint32_t mod,
                      uint32_t salt)
{
    spes_tokwriter w;
    ck_assert_int_eq(spes_tokwriter_open(&w, path, f, d), 0);
    uint32_t chunk[1000];
    size_t done = 0, step = 1;
    ck_assert_int_eq(spes_tokwriter_write(&w, chunk, 0), 0);
    while (done < n) {
        size_t k = n - done < step ? n - done : step;
        for (size_t i = 0; i < k; i++)
            chunk[i] = (uint32_t)(((done + i) * 7919u + salt) % mod);
        ck_assert_int_eq(spes_tokwriter_write(&w, chunk, k), 0);
        done += k;
        step = step * 3 % 997 + 1;
    }
    ck_assert_uint_eq(spes_tokwriter_count(&w), n);
    ck_assert_int_eq(spes_tokwriter_close(&w), 0);
}

/* expect_refused opens path and asserts the failure code and a message substring. */
static void expect_refused(const char *path, spes_tok_format f, spes_tok_dtype d, int code,
                           const char *needle)
{
    spes_tokfile tf;
    spes_errclear();
    int rc = spes_tokfile_open(&tf, path, f, d);
    ck_assert_msg(rc == code, "%s: rc %d, want %d (%s)", path, rc, code, spes_errmsg());
    ck_assert_msg(strstr(spes_errmsg(), needle) != NULL, "message '%s' lacks '%s'", spes_errmsg(), needle);
    ck_assert_msg(strstr(spes_errmsg(), path) != NULL, "message '%s' does not name the file", spes_errmsg());
}

START_TEST(roundtrip_every_format)
{
    static const spes_tok_format fmts[] = {SPES_TOK_RAW, SPES_TOK_NPY, SPES_TOK_LLMC};
    static const size_t hdr[] = {0, 128, 1024};
    for (int fi = 0; fi < 3; fi++) {
        for (int di = 0; di < 2; di++) {
            spes_tok_dtype d = di ? SPES_TOK_U32 : SPES_TOK_U16;
            uint32_t mod = di ? 4000000000u : 65536u;
            const char *p = tpath(fmts[fi] == SPES_TOK_NPY ? "rt.npy" : "rt.bin");
            size_t n = 12345;
            write_ids(p, fmts[fi], d, n, mod, 11);
            ck_assert_uint_eq(file_size(p), hdr[fi] + n * (size_t)d);
            spes_tokfile tf;
            ck_assert_int_eq(spes_tokfile_open(&tf, p, SPES_TOK_AUTO, d), 0);
            ck_assert_int_eq(tf.hdr.format, fmts[fi]);
            ck_assert_int_eq(tf.hdr.dtype, d);
            ck_assert_uint_eq(tf.hdr.ntokens, n);
            for (size_t i = 0; i < n; i++)
                ck_assert_uint_eq(spes_tokfile_get(&tf, i), (uint32_t)((i * 7919u + 11) % mod));
            spes_tokfile_close(&tf);
        }
    }
}
END_TEST

START_TEST(header_bytes_on_disk)
{
    const char *p = tpath("h.bin");
    write_ids(p, SPES_TOK_LLMC, SPES_TOK_U32, 77, 1000, 0);
    FILE *fp = fopen(p, "rb");
    int32_t h[256];
    ck_assert_uint_eq(fread(h, 4, 256, fp), 256);
    fclose(fp);
    ck_assert_int_eq(h[0], 20240801);
    ck_assert_int_eq(h[1], 7);
    ck_assert_int_eq(h[2], 77);
    for (int i = 3; i < 256; i++)
        ck_assert_int_eq(h[i], 0);
    write_ids(p, SPES_TOK_LLMC, SPES_TOK_U16, 5, 1000, 0);
    fp = fopen(p, "rb");
    ck_assert_uint_eq(fread(h, 4, 3, fp), 3);
    fclose(fp);
    ck_assert_int_eq(h[0], 20240520);
    ck_assert_int_eq(h[1], 1);
    ck_assert_int_eq(h[2], 5);
    const char *q = tpath("h.npy");
    write_ids(q, SPES_TOK_AUTO, SPES_TOK_U16, 1000, 1000, 0);
    char text[129] = {0};
    fp = fopen(q, "rb");
    ck_assert_uint_eq(fread(text, 1, 128, fp), 128);
    fclose(fp);
    ck_assert_int_eq(memcmp(text, "\x93NUMPY\x01\x00\x76\x00", 10), 0);
    ck_assert_str_eq(text + 127, "\n");
    ck_assert_ptr_nonnull(strstr(text + 10, "{'descr': '<u2', 'fortran_order': False, 'shape': (1000,), }"));
}
END_TEST

START_TEST(writer_refuses_wide_id_and_is_atomic)
{
    const char *p = tpath("w.npy");
    spes_tokwriter w;
    uint32_t ids[] = {1, 2, 3, 4, 5};
    ck_assert_int_eq(spes_tokwriter_open(&w, p, SPES_TOK_NPY, SPES_TOK_U16), 0);
    ck_assert_int_eq(spes_tokwriter_write(&w, ids, 5), 0);
    uint32_t bad[] = {9, 65535, 65536, 7};
    ck_assert_int_eq(spes_tokwriter_write(&w, bad, 4), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "token id 65536 at position 7 does not fit uint16"));
    ck_assert_int_eq(access(p, F_OK), -1);                 /* nothing at the final path before close */
    ck_assert_int_eq(spes_tokwriter_write(&w, ids, 2), 0); /* still usable, bad call wrote nothing */
    ck_assert_int_eq(spes_tokwriter_close(&w), 0);
    spes_tokfile tf;
    ck_assert_int_eq(spes_tokfile_open(&tf, p, SPES_TOK_AUTO, SPES_TOK_DTYPE_NONE), 0);
    ck_assert_uint_eq(tf.hdr.ntokens, 7);
    ck_assert_uint_eq(spes_tokfile_get(&tf, 6), 2);
    spes_tokfile_close(&tf);
    /* abort leaves neither the file nor its temp */
    const char *q = tpath("gone.bin");
    ck_assert_int_eq(spes_tokwriter_open(&w, q, SPES_TOK_LLMC, SPES_TOK_U32), 0);
    ck_assert_int_eq(spes_tokwriter_write(&w, ids, 5), 0);
    spes_tokwriter_abort(&w);
    spes_tokwriter_abort(&w);
    ck_assert_int_eq(access(q, F_OK), -1);
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    ck_assert_int_eq(n, 1); /* only w.npy */
}
END_TEST

static void llmc_file(const char *p, int32_t magic, int32_t version, int32_t count, size_t ntok,
                      unsigned width)
{
    size_t len = 1024 + ntok * width;
    uint8_t *b = calloc(1, len);
    int32_t h[3] = {magic, version, count};
    memcpy(b, h, sizeof h);
    put_file(p, b, len);
    free(b);
}

START_TEST(refuses_bad_llmc)
{
    const char *p = tpath("bad.bin");
    llmc_file(p, 20240520, 1, 100, 50, 2);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_U16, SPES_EFORMAT, "says 100 tokens (200 bytes) but 100 bytes");
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_U16, SPES_EFORMAT, "truncated file");
    llmc_file(p, 20240801, 7, 10, 11, 4);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_U16, SPES_EFORMAT, "says 10 tokens (40 bytes) but 44 bytes");
    llmc_file(p, 20240520, 3, 0, 0, 2);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_U16, SPES_EFORMAT, "unsupported version 3");
    llmc_file(p, 20240801, 1, 0, 0, 2);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_U16, SPES_EFORMAT,
                   "llm.c magic 20240801 with unsupported version 1");
    llmc_file(p, 12345, 1, 0, 0, 2);
    expect_refused(p, SPES_TOK_LLMC, SPES_TOK_U16, SPES_EFORMAT, "unknown llm.c magic 12345");
    llmc_file(p, 20240520, 1, -4, 0, 2);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_U16, SPES_EFORMAT, "negative token count -4");
    int32_t shorthdr[100] = {20240520, 1, 0};
    put_file(p, shorthdr, sizeof shorthdr);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_U16, SPES_EFORMAT, "truncated llm.c header: 400 bytes");
}
END_TEST

static void npy_file(const char *p, const char *version, const char *dict, size_t data_bytes)
{
    uint8_t b[4096] = {0};
    size_t dl = strlen(dict), pre = version[0] == 1 ? 10 : 12;
    memcpy(b, "\x93NUMPY", 6);
    memcpy(b + 6, version, 2);
    uint32_t hl = (uint32_t)dl;
    memcpy(b + 8, &hl, pre == 10 ? 2 : 4);
    memcpy(b + pre, dict, dl);
    put_file(p, b, pre + dl + data_bytes);
}

START_TEST(refuses_bad_npy)
{
    const char *p = tpath("bad.npy");
    npy_file(p, "\x01\x00", "{'descr': '<u2', 'fortran_order': False, 'shape': (4,), }\n", 8);
    spes_tokfile tf;
    ck_assert_int_eq(spes_tokfile_open(&tf, p, SPES_TOK_AUTO, SPES_TOK_DTYPE_NONE), 0); /* the control */
    ck_assert_uint_eq(tf.hdr.ntokens, 4);
    spes_tokfile_close(&tf);
    npy_file(p, "\x02\x00", "{\"descr\":\"<u4\",\"shape\":(3,),\"fortran_order\":False}", 12);
    ck_assert_int_eq(spes_tokfile_open(&tf, p, SPES_TOK_AUTO, SPES_TOK_DTYPE_NONE), 0); /* v2, reordered */
    ck_assert_uint_eq(tf.hdr.offset,
                      12 + strlen("{\"descr\":\"<u4\",\"shape\":(3,),\"fortran_order\":False}"));
    spes_tokfile_close(&tf);
    npy_file(p, "\x01\x00", "{'descr': '<u2', 'fortran_order': False, 'shape': (4,), }\n", 5);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_DTYPE_NONE, SPES_EFORMAT, "truncated file");
    npy_file(p, "\x01\x00", "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }\n", 16);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_DTYPE_NONE, SPES_EFORMAT,
                   "npy dtype '<f4' is not a token dtype");
    npy_file(p, "\x01\x00", "{'descr': '>u2', 'fortran_order': False, 'shape': (4,), }\n", 8);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_DTYPE_NONE, SPES_EFORMAT, "npy dtype '>u2'");
    npy_file(p, "\x01\x00", "{'descr': '<u2', 'fortran_order': True, 'shape': (4,), }\n", 8);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_DTYPE_NONE, SPES_EFORMAT,
                   "fortran_order True is not supported");
    npy_file(p, "\x01\x00", "{'descr': '<u2', 'fortran_order': False, 'shape': (2, 2), }\n", 8);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_DTYPE_NONE, SPES_EFORMAT, "npy shape is 2-D");
    npy_file(p, "\x01\x00", "{'descr': '<u2', 'fortran_order': False, 'shape': (), }\n", 8);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_DTYPE_NONE, SPES_EFORMAT, "npy shape is 0-D");
    npy_file(p, "\x04\x00", "{'descr': '<u2', 'fortran_order': False, 'shape': (4,), }\n", 8);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_DTYPE_NONE, SPES_EFORMAT, "unsupported npy version 4.0");
    npy_file(p, "\x01\x00", "{'descr': '<u2', 'fortran_order': False}\n", 8);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_DTYPE_NONE, SPES_EFORMAT, "npy header lacks 'shape'");
    npy_file(p, "\x01\x00", "{'descr': '<u2', 'fortran_order': False, 'shape': (4,), 'x': 1}", 8);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_DTYPE_NONE, SPES_EFORMAT, "unexpected or repeated key 'x'");
    /* a header length that runs past the end of the file */
    uint8_t b[40] = "\x93NUMPY\x01\x00\xff\x10{'descr': '<u2'";
    put_file(p, b, sizeof b);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_DTYPE_NONE, SPES_EFORMAT,
                   "npy header length 4351 runs past the end");
    put_file(p, "\x93NUMP", 5);
    expect_refused(p, SPES_TOK_NPY, SPES_TOK_DTYPE_NONE, SPES_EFORMAT, "truncated npy header");
    put_file(p, "abcdefgh", 8);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_U16, SPES_EFORMAT, "named .npy but has no NumPy magic");
}
END_TEST

START_TEST(refuses_bad_raw_and_missing)
{
    const char *p = tpath("r.bin");
    put_file(p, "abc", 3);
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_U16, SPES_EFORMAT,
                   "raw uint16 file size 3 is not a multiple of 2");
    put_file(p, "abcdefghij", 10);
    expect_refused(p, SPES_TOK_RAW, SPES_TOK_U32, SPES_EFORMAT,
                   "raw uint32 file size 10 is not a multiple of 4");
    expect_refused(p, SPES_TOK_AUTO, SPES_TOK_DTYPE_NONE, SPES_EINVAL, "needs a dtype");
    expect_refused(tpath("nope.bin"), SPES_TOK_AUTO, SPES_TOK_U16, SPES_ENOENT, "cannot open token file");
    /* a truncated shard of each format written by us */
    static const spes_tok_format fmts[] = {SPES_TOK_NPY, SPES_TOK_LLMC, SPES_TOK_RAW};
    static const char *needles[] = {"truncated file", "truncated file", "not a multiple of 4"};
    for (int i = 0; i < 3; i++) {
        write_ids(p, fmts[i], SPES_TOK_U32, 100, 1000, 0);
        ck_assert_int_eq(truncate(p, (off_t)file_size(p) - 3), 0);
        expect_refused(p, fmts[i], SPES_TOK_U32, SPES_EFORMAT, needles[i]);
    }
}
END_TEST

/* make_stream writes nfiles raw/npy/llmc files (cycling) holding ids = stream index % mod. */
static void make_stream(const char **paths, int nfiles, const size_t *lens, uint32_t mod)
{
    static const spes_tok_format fmts[] = {SPES_TOK_RAW, SPES_TOK_NPY, SPES_TOK_LLMC};
    size_t base = 0;
    for (int f = 0; f < nfiles; f++) {
        spes_tokwriter w;
        ck_assert_int_eq(spes_tokwriter_open(&w, paths[f], fmts[f % 3], SPES_TOK_U16), 0);
        for (size_t i = 0; i < lens[f]; i++) {
            uint32_t id = (uint32_t)((base + i) % mod);
            ck_assert_int_eq(spes_tokwriter_write(&w, &id, 1), 0);
        }
        ck_assert_int_eq(spes_tokwriter_close(&w), 0);
        base += lens[f];
    }
}

START_TEST(batches_wrap_and_shift)
{
    const char *paths[3] = {tpath("s0.bin"), tpath("s1.npy"), tpath("s2.bin")};
    size_t lens[3] = {7, 0, 13};
    make_stream(paths, 3, lens, 1000);
    spes_dataset ds;
    ck_assert_int_eq(spes_dataset_open(&ds, paths, 3, SPES_TOK_U16, SPES_TOK_AUTO, 1000, NULL), 0);
    ck_assert_uint_eq(spes_dataset_total(&ds), 20);
    int32_t in[6], tg[6];
    for (uint64_t s = 0; s < 12; s++) { /* B=2, T=3: step s starts at 6s mod 20 */
        ck_assert_int_eq(spes_dataset_batch_at(&ds, s, 2, 3, in, tg), 0);
        for (int i = 0; i < 6; i++) {
            ck_assert_int_eq(in[i], (int32_t)((6 * s + (uint64_t)i) % 20));
            ck_assert_int_eq(tg[i], (int32_t)((6 * s + (uint64_t)i + 1) % 20));
        }
    }
    ck_assert_int_eq(spes_dataset_batch_at(&ds, 3, 2, 3, in, tg), 0); /* straddles the end */
    int32_t want_in[6] = {18, 19, 0, 1, 2, 3}, want_tg[6] = {19, 0, 1, 2, 3, 4};
    ck_assert_int_eq(memcmp(in, want_in, sizeof in), 0);
    ck_assert_int_eq(memcmp(tg, want_tg, sizeof tg), 0);
    ck_assert_int_eq(spes_dataset_batch_at(&ds, UINT64_MAX, 2, 3, in, tg), 0); /* no overflow */
    ck_assert_int_eq(in[0], (int32_t)((unsigned __int128)UINT64_MAX * 6 % 20));
    int32_t big[20];
    ck_assert_int_eq(spes_dataset_batch_at(&ds, 0, 4, 5, big, big), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "has 20 tokens, fewer than B*T+1 = 21"));
    ck_assert_int_eq(spes_dataset_batch_at(&ds, 0, 1, 19, big, big + 1), 0); /* 20 = B*T+1 fits */
    spes_dataset_close(&ds);
}
END_TEST

START_TEST(parts_disjoint_and_covering)
{
    const char *paths[2] = {tpath("p0.bin"), tpath("p1.npy")};
    size_t lens[2] = {50, 53};
    make_stream(paths, 2, lens, 1000);
    spes_dataset ds;
    ck_assert_int_eq(spes_dataset_open(&ds, paths, 2, SPES_TOK_U16, SPES_TOK_AUTO, 1000, NULL), 0);
    for (int count = 1; count <= 7; count++) {
        int seen[103] = {0};
        for (int idx = 0; idx < count; idx++) {
            ck_assert_int_eq(spes_dataset_set_part(&ds, idx, count), 0);
            uint64_t len = spes_dataset_part_len(&ds);
            ck_assert_uint_eq(len, idx == count - 1 ? 103 - (103 / count) * (count - 1) : 103 / count);
            int32_t buf[103];
            ck_assert_int_eq(spes_dataset_read(&ds, 0, (size_t)len, buf), 0);
            for (uint64_t i = 0; i < len; i++) {
                ck_assert_int_eq(buf[i], (int32_t)(103 / count * idx + i)); /* contiguous */
                seen[buf[i]]++;
            }
            /* a batch of this part wraps inside the part, never into the next one */
            int32_t in[4], tg[4];
            if (spes_dataset_check_batch(&ds, 1, 4) == 0) {
                ck_assert_int_eq(spes_dataset_batch_at(&ds, len / 4, 1, 4, in, tg), 0);
                ck_assert_int_ge(tg[3], (int32_t)(103 / count * idx));
                ck_assert_int_lt(tg[3], (int32_t)(103 / count * idx + len));
            }
        }
        for (int t = 0; t < 103; t++)
            ck_assert_int_eq(seen[t], 1);
    }
    ck_assert_int_eq(spes_dataset_set_part(&ds, 3, 3), SPES_EINVAL);
    ck_assert_int_eq(spes_dataset_set_part(&ds, 0, 104), SPES_ERANGE);
    spes_dataset_close(&ds);
}
END_TEST

START_TEST(cursor_save_restore)
{
    const char *paths[1] = {tpath("c.bin")};
    size_t lens[1] = {101};
    make_stream(paths, 1, lens, 1000);
    spes_dataset a, b;
    ck_assert_int_eq(spes_dataset_open(&a, paths, 1, SPES_TOK_U16, SPES_TOK_RAW, 1000, NULL), 0);
    ck_assert_int_eq(spes_dataset_open(&b, paths, 1, SPES_TOK_U16, SPES_TOK_RAW, 1000, NULL), 0);
    ck_assert_int_eq(spes_dataset_set_part(&a, 1, 2), 0);
    ck_assert_int_eq(spes_dataset_set_part(&b, 1, 2), 0);
    int32_t in[12], tg[12], in2[12], tg2[12];
    for (uint64_t s = 0; s < 7; s++) {
        ck_assert_int_eq(spes_dataset_next(&a, 3, 4, in, tg), 0);
        ck_assert_int_eq(spes_dataset_batch_at(&a, s, 3, 4, in2, tg2), 0); /* next == batch_at */
        ck_assert_int_eq(memcmp(in, in2, sizeof in), 0);
        ck_assert_int_eq(memcmp(tg, tg2, sizeof tg), 0);
    }
    uint64_t saved = spes_dataset_tell(&a);
    ck_assert_uint_eq(saved, 7 * 12 % 51);
    ck_assert_int_eq(spes_dataset_seek(&b, saved), 0);
    for (int s = 0; s < 9; s++) {
        ck_assert_int_eq(spes_dataset_next(&a, 3, 4, in, tg), 0);
        ck_assert_int_eq(spes_dataset_next(&b, 3, 4, in2, tg2), 0);
        ck_assert_int_eq(memcmp(in, in2, sizeof in), 0);
        ck_assert_int_eq(memcmp(tg, tg2, sizeof tg), 0);
    }
    ck_assert_int_eq(spes_dataset_seek(&b, 51), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "cursor 51 is outside part 1 of 2"));
    spes_dataset_close(&a);
    spes_dataset_close(&b);
}
END_TEST

START_TEST(vocab_scan_names_file_and_index)
{
    const char *paths[2] = {tpath("v0.bin"), tpath("v1.npy")};
    size_t lens[2] = {10, 10};
    make_stream(paths, 2, lens, 1000);
    spes_dataset ds;
    ck_assert_int_eq(spes_dataset_open(&ds, paths, 2, SPES_TOK_U16, SPES_TOK_AUTO, 20, NULL), 0);
    spes_dataset_close(&ds);
    ck_assert_int_eq(spes_dataset_open(&ds, paths, 2, SPES_TOK_U16, SPES_TOK_AUTO, 17, NULL), SPES_ERANGE);
    char want[600];
    snprintf(want, sizeof want, "%s: token 7 has id 17, not below vocab_size 17", paths[1]);
    ck_assert_str_eq(spes_errmsg(), want);
    ck_assert_int_eq(spes_dataset_open(&ds, paths, 2, SPES_TOK_U16, SPES_TOK_AUTO, 0, NULL), SPES_EINVAL);
    const char *missing[2] = {paths[0], tpath("missing.bin")};
    ck_assert_int_eq(spes_dataset_open(&ds, missing, 2, SPES_TOK_U16, SPES_TOK_AUTO, 20, NULL), SPES_ENOENT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "missing.bin: cannot open token file"));
    /* a signed npy with a negative id */
    const char *neg = tpath("neg.npy");
    uint8_t b[128 + 16] =
        "\x93NUMPY\x01\x00\x76\x00{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }";
    size_t dl = strlen((const char *)b + 10);
    memset(b + 10 + dl, ' ', 128 - 11 - dl);
    b[127] = '\n';
    int32_t v[4] = {1, 2, -3, 4};
    memcpy(b + 128, v, 16);
    put_file(neg, b, sizeof b);
    const char *np[1] = {neg};
    ck_assert_int_eq(spes_dataset_open(&ds, np, 1, SPES_TOK_DTYPE_NONE, SPES_TOK_AUTO, 100, NULL),
                     SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "neg.npy: token 2 is negative (-3)"));
}
END_TEST

START_TEST(parallel_scan_finds_first_bad)
{
    const char *p = tpath("big.bin");
    size_t n = 3 * (1u << 20) + 5;
    uint16_t *t = malloc(n * 2);
    for (size_t i = 0; i < n; i++)
        t[i] = (uint16_t)(i % 30000);
    t[2500000] = 40000;
    t[3000000] = 40001;
    put_file(p, t, n * 2);
    free(t);
    spes_pool *pool;
    ck_assert_int_eq(spes_pool_alloc(&pool, 3), 0);
    const char *paths[1] = {p};
    spes_dataset ds;
    ck_assert_int_eq(spes_dataset_open(&ds, paths, 1, SPES_TOK_U16, SPES_TOK_RAW, 32000, pool), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "token 2500000 has id 40000"));
    ck_assert_int_eq(spes_dataset_open(&ds, paths, 1, SPES_TOK_U16, SPES_TOK_RAW, 65536, pool), 0);
    ck_assert_uint_eq(spes_dataset_total(&ds), n);
    spes_dataset_close(&ds);
    spes_pool_free(pool);
}
END_TEST

static long status_kb(const char *field)
{
    FILE *fp = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (fp && fgets(line, sizeof line, fp))
        if (strncmp(line, field, strlen(field)) == 0)
            v = strtol(line + strlen(field) + 1, NULL, 10);
    if (fp)
        fclose(fp);
    return v;
}

/* A corpus read once (the vocabulary scan, then batches) must not stay counted in the
 * process's memory: 48 MiB of tokens may raise the peak resident set by the read
 * buffers and batches only (a whole-file mapping raised it by ~48 MiB, and by ~20 MiB
 * even when the pages read were dropped from the mapping after each read). */
START_TEST(corpus_not_kept_resident)
{
    const char *p = tpath("corpus.bin");
    size_t n = 24u << 20, chunk = 1u << 19;
    static uint16_t t[1u << 19]; /* written a MiB at a time: the test's own peak stays small */
    FILE *fp = fopen(p, "wb");
    ck_assert_ptr_nonnull(fp);
    for (size_t at = 0; at < n; at += chunk) {
        for (size_t i = 0; i < chunk; i++)
            t[i] = (uint16_t)((at + i) * 7919u % 50000u);
        ck_assert_uint_eq(fwrite(t, 2, chunk, fp), chunk);
    }
    ck_assert_int_eq(fclose(fp), 0);
    spes_pool *pool;
    ck_assert_int_eq(spes_pool_alloc(&pool, 2), 0);
    const char *paths[1] = {p};
    long hwm0 = status_kb("VmHWM:");
    spes_dataset ds;
    ck_assert_int_eq(spes_dataset_open(&ds, paths, 1, SPES_TOK_U16, SPES_TOK_RAW, 50000, pool), 0);
    static int32_t in[64 * 1024], tg[64 * 1024];
    uint64_t sum = 0;
    for (int b = 0; b < 300; b++) { /* 300 batches of 64 Ki tokens: 37.5 MiB of the file */
        ck_assert_int_eq(spes_dataset_next(&ds, 64, 1024, in, tg), 0);
        sum += (uint64_t)in[b] + (uint64_t)tg[b];
    }
    ck_assert_uint_gt(sum, 0);
    long grew = status_kb("VmHWM:") - hwm0;
    ck_assert_msg(grew >= 0 && grew < 4 * 1024, "peak resident set grew by %ld KiB reading a 48 MiB corpus",
                  grew);
    spes_dataset_close(&ds);
    spes_pool_free(pool);
}
END_TEST

/* A file cut short after it was opened is an error naming it (a mapping made it SIGBUS). */
START_TEST(file_shrunk_after_open_is_an_error)
{
    const char *p = tpath("shrinks.bin");
    static uint16_t t[100000];
    for (size_t i = 0; i < 100000; i++)
        t[i] = (uint16_t)(i % 1000);
    put_file(p, t, sizeof t);
    const char *paths[1] = {p};
    spes_dataset ds;
    ck_assert_int_eq(spes_dataset_open(&ds, paths, 1, SPES_TOK_U16, SPES_TOK_RAW, 1000, NULL), 0);
    ck_assert_int_eq(truncate(p, 1000), 0);
    static int32_t in[64 * 256], tg[64 * 256];
    ck_assert_int_eq(spes_dataset_next(&ds, 64, 256, in, tg), SPES_EIO);
    ck_assert_msg(strstr(spes_errmsg(), p) && strstr(spes_errmsg(), "shrank"), "message: %s", spes_errmsg());
    spes_dataset_close(&ds);
}
END_TEST

/* --write DIR: files for tests/data_numpy.py; ids[i] = (i * 7919 + 3) % mod. */
static int cli_write(const char *dir)
{
    struct {
        const char *name;
        spes_tok_format f;
        spes_tok_dtype d;
        uint32_t mod;
    } outs[] = {{"u16.npy", SPES_TOK_NPY, SPES_TOK_U16, 65536},
                {"u32.npy", SPES_TOK_NPY, SPES_TOK_U32, 4000000000u},
                {"empty.npy", SPES_TOK_NPY, SPES_TOK_U16, 1},
                {"u16.llmc", SPES_TOK_LLMC, SPES_TOK_U16, 65536}};
    for (size_t k = 0; k < sizeof outs / sizeof outs[0]; k++) {
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, outs[k].name);
        spes_tokwriter w;
        size_t n = outs[k].mod == 1 ? 0 : 100003;
        if (spes_tokwriter_open(&w, p, outs[k].f, outs[k].d) != 0)
            return fprintf(stderr, "%s\n", spes_errmsg()), 1;
        for (size_t i = 0; i < n; i++) {
            uint32_t id = (uint32_t)((i * 7919u + 3) % outs[k].mod);
            if (spes_tokwriter_write(&w, &id, 1) != 0)
                return fprintf(stderr, "%s\n", spes_errmsg()), 1;
        }
        if (spes_tokwriter_close(&w) != 0)
            return fprintf(stderr, "%s\n", spes_errmsg()), 1;
    }
    return 0;
}

/* --read FILE DTYPE: prints the token count then every token, one per line (or the refusal). */
static int cli_read(const char *path, const char *dtype)
{
    spes_tok_dtype d = SPES_TOK_DTYPE_NONE;
    if (strcmp(dtype, "none") && spes_tok_dtype_parse(dtype, &d) != 0)
        return fprintf(stderr, "%s\n", spes_errmsg()), 2;
    spes_tokfile tf;
    if (spes_tokfile_open(&tf, path, SPES_TOK_AUTO, d) != 0)
        return printf("refused %s\n", spes_errmsg()), 1;
    printf("%s %s %" PRIu64 "\n", spes_tok_format_name(tf.hdr.format), spes_tok_dtype_name(tf.hdr.dtype),
           tf.hdr.ntokens);
    for (uint64_t i = 0; i < tf.hdr.ntokens; i++)
        printf("%" PRIu32 "\n", spes_tokfile_get(&tf, i));
    spes_tokfile_close(&tf);
    return 0;
}

static Suite *data_suite(void)
{
    Suite *s = suite_create("data");
    TCase *tc = tcase_create("data");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, roundtrip_every_format);
    tcase_add_test(tc, header_bytes_on_disk);
    tcase_add_test(tc, writer_refuses_wide_id_and_is_atomic);
    tcase_add_test(tc, refuses_bad_llmc);
    tcase_add_test(tc, refuses_bad_npy);
    tcase_add_test(tc, refuses_bad_raw_and_missing);
    tcase_add_test(tc, batches_wrap_and_shift);
    tcase_add_test(tc, parts_disjoint_and_covering);
    tcase_add_test(tc, cursor_save_restore);
    tcase_add_test(tc, vocab_scan_names_file_and_index);
    tcase_add_test(tc, parallel_scan_finds_first_bad);
    tcase_add_test(tc, corpus_not_kept_resident);
    tcase_add_test(tc, file_shrunk_after_open_is_an_error);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--write"))
        return cli_write(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "--read"))
        return cli_read(argv[2], argv[3]);
    SRunner *sr = srunner_create(data_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
