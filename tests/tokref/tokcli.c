/* tokcli.c: a test-only executable that runs the `spesd tokenize` / `spesd detokenize`
 * command code (tools/cmd_tokenize.c, tools/cmd_detokenize.c) without the rest of spesd,
 * so the tokenizer's reference test and bench do not depend on other modules building. */
#include <stdio.h>
#include <string.h>

#include "tools/commands.h"

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "tokenize") == 0)
        return cmd_tokenize(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "detokenize") == 0)
        return cmd_detokenize(argc - 1, argv + 1);
    fprintf(stderr, "usage: tokcli tokenize|detokenize ARGS...\n");
    return 2;
}
