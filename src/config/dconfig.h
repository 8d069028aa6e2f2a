/* dconfig.h: the daemon's own configuration file (`spesd run --config FILE`),
 * distinct from the run config that the coordinator hands to every node.
 * One table of fields (name, type, bounds, default, validator) read by the
 * table engine (cfgtab.h); `spesd run -n` loads, validates and prints it. */
#ifndef SPES_CONFIG_DCONFIG_H
#define SPES_CONFIG_DCONFIG_H

#define SPES_DCONFIG_STR 512

/* spes_dconfig is a daemon's settings. */
typedef struct spes_dconfig {
    char name[64];                      /* node identity; must equal the certificate's name */
    char listen[SPES_DCONFIG_STR];      /* tls+tcp://HOST:PORT this node serves on */
    char advertise[SPES_DCONFIG_STR];   /* the URL other nodes use to reach this daemon; default: listen */
    char coordinator[SPES_DCONFIG_STR]; /* the coordinator's URL; empty: this node is the coordinator */
    char coordinator_name[64]; /* the name the coordinator's certificate must carry; empty: any node's */
    char ca[SPES_DCONFIG_STR], cert[SPES_DCONFIG_STR], key[SPES_DCONFIG_STR], crl[SPES_DCONFIG_STR];
    char run_config[SPES_DCONFIG_STR]; /* coordinator only: the run config JSON */
    char data[SPES_DCONFIG_STR];       /* this node's token file(s), comma-separated; overrides the run's */
    char state_dir[SPES_DCONFIG_STR];  /* persistent state; one daemon per directory */
    char control_socket[SPES_DCONFIG_STR]; /* unix socket for spesctl; default STATE_DIR/control.sock */
    char metrics[128];                     /* HOST:PORT of the Prometheus/HTTP listener; empty: none */
    char admission[16];                    /* "auto" or "approve" (coordinator) */
    char codec[8];                         /* ignored (the run config's spes.codec); kept so old files load */
    char log_level[8];
    char fault[16]; /* tests only (docs/config.md, fault): "nan" or "wrong-hash" poisons its contributions;
                                            * "diverge" changes its state of round 3 once */
    int threads;
    int heartbeat_ms;
    int commit_poll_ms; /* heartbeat period while the node waits for its round's commit */
    int failure_timeout_ms;
    int round_deadline_ms;     /* the round deadline's ceiling */
    int round_deadline_min_ms; /* its floor (at or above the ceiling: a fixed deadline) */
    int data_parts;    /* the data is split into this many parts; a node reads part (id mod data_parts) */
    int min_nodes;     /* coordinator: round 0 opens once this many nodes have joined */
    int plain;         /* tests only: tcp:// without TLS */
    int keep_blobs;    /* keep every round's blobs (audits, tests); default: the last 3 rounds */
    int reachable;     /* 0: nobody can dial this daemon (NAT); it pushes what it publishes (default 1) */
    int blob_quota_mb; /* blob store quota: the oldest blobs beyond it are removed (0: none) */
} spes_dconfig;

/* spes_dconfig_defaults fills every field with its default. */
void spes_dconfig_defaults(spes_dconfig *c);

/* spes_dconfig_load reads defaults then FILE; errors name the file and the field. */
int spes_dconfig_load(spes_dconfig *c, const char *path);

/* spes_dconfig_validate checks cross-field rules and that the files exist. */
int spes_dconfig_validate(const spes_dconfig *c);

/* spes_dconfig_print writes the effective configuration as JSON to stdout. */
void spes_dconfig_print(const spes_dconfig *c);

/* spes_dconfig_is_coordinator says whether this daemon coordinates the run. */
int spes_dconfig_is_coordinator(const spes_dconfig *c);

/* spes_dconfig_outbound_only says whether this daemon cannot be dialled (no listen, or
 * reachable false): it advertises no URL and pushes its contributions to the coordinator. */
int spes_dconfig_outbound_only(const spes_dconfig *c);

#endif
