/* commands.h: the spesd sub-commands: the offline tools in tools/, the daemon (cmd_run) in
 * daemon/. Each takes the arguments after its name (argv[0] is the sub-command) and returns
 * the process exit status, having printed a one-line reason on stderr when it fails. */
#ifndef SPES_TOOLS_COMMANDS_H
#define SPES_TOOLS_COMMANDS_H

/* cmd_train is `spesd train`: standalone training. */
int cmd_train(int argc, char **argv);
/* cmd_eval is `spesd eval`: mean cross-entropy of a checkpoint on data. */
int cmd_eval(int argc, char **argv);
/* cmd_export is `spesd export`: Hugging Face config.json + model.safetensors. */
int cmd_export(int argc, char **argv);
/* cmd_tokenize is `spesd tokenize`: text to token files. */
int cmd_tokenize(int argc, char **argv);
/* cmd_detokenize is `spesd detokenize`: token files back to text. */
int cmd_detokenize(int argc, char **argv);

/* cmd_generate is `spesd generate`: continue a prompt with a model. */
int cmd_generate(int argc, char **argv);

/* cmd_run is `spesd run`: the daemon. */
int cmd_run(int argc, char **argv);

#endif
