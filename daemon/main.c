/* main.c: spesd's entry point: dispatches to a sub-command. */
#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "tools/commands.h"
#include "kernels/kernels.h"
#include "proto/proto.h"

#ifndef SPES_VERSION
#define SPES_VERSION "0.0.0"
#endif

typedef struct command {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} command;

static const command commands[] = {
    {"run", cmd_run, "the daemon: --config DAEMON.json [-n]"},
    {"train", cmd_train, "standalone training: --config RUN.json [--data PATH] [--steps N] --out DIR"},
    {"eval", cmd_eval, "mean cross-entropy: --checkpoint DIR --data PATH --batch B --seq T"},
    {"export", cmd_export, "Hugging Face export: --checkpoint DIR --out DIR [--bf16]"},
    {"tokenize", cmd_tokenize, "text to tokens: (--tokenizer FILE | --bytes) --out FILE INPUT..."},
    {"generate", cmd_generate,
     "continue a prompt: --checkpoint DIR --prompt TEXT (--tokenizer FILE | --bytes)"},
    {"detokenize", cmd_detokenize, "tokens to text: (--tokenizer FILE | --bytes) FILE"},
};

static void usage(FILE *fp)
{
    fprintf(fp, "usage: spesd COMMAND [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(fp, "  %-11s %s\n", commands[i].name, commands[i].summary);
    fprintf(fp, "\n`spesd COMMAND --help` describes a command's options; `spesd --version` prints the\n"
                "version and the wire protocol version.\n");
}

int main(int argc, char **argv)
{
    /* Debian's OpenBLAS may not recognise a virtualised CPU and fall back to
     * slow generic kernels: restart once with the kernel the CPU supports. */
    if (spes_blas_reexec_if_generic(argv) != 0)
        fprintf(stderr, "spesd: warning: %s\n", spes_errmsg());
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("spesd %s (protocol %d)\n", SPES_VERSION, SPES_PROTO_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "spesd: unknown command \"%s\" (try spesd --help)\n", argv[1]);
    return 2;
}
