/* ops.h: spesctl's operator verbs (status, members, checkpoint): how spesctl
 * reaches a daemon (unix control socket or mutual TLS) and how it prints the
 * replies. One request envelope out, one reply envelope back; every reply is
 * checked (header, length, type, semantic limits) by the proto codec before
 * any field is read. Never links the model, never talks to more than the
 * daemon it was pointed at plus one coordinator redirect. */
#ifndef SPES_CLIENT_OPS_H
#define SPES_CLIENT_OPS_H

#include "client/spesctl.h"

#include <protobuf-c/protobuf-c.h>

/* spesctl_ops_cmds is the operator verb group (status, members, checkpoint and
 * the leading connection flags `spesctl --socket PATH VERB ...`). */
extern const spesctl_cmd spesctl_ops_cmds[];

/* spesctl_conn is where and how to reach a daemon; every field may be NULL. */
typedef struct spesctl_conn {
    const char *socket; /* unix control socket path */
    const char *url;    /* tls+tcp://HOST:PORT */
    const char *ca, *cert, *key;
    int url_from_flag;    /* --url given on the command line (wins over SPES_SOCKET) */
    int socket_from_flag; /* --socket given on the command line */
    int timeout_ms;
} spesctl_conn;

/* SPESCTL_DEFAULT_SOCKET is the control socket of a systemd-installed daemon. */
#define SPESCTL_DEFAULT_SOCKET "/var/lib/spes/control.sock"

/* spesctl_conn_resolve fills unset fields of c from SPES_SOCKET, SPES_URL,
 * SPES_CA, SPES_CERT, SPES_KEY (flags win) and picks the default socket. */
void spesctl_conn_resolve(spesctl_conn *c);

/* spesctl_ops_call sends msg (of envelope type req_type) and waits for one
 * reply whose type must be want_type, SPES_MSG_ACK or SPES_MSG_ERROR. A
 * "not the coordinator; it is at URL" Error is retried once at URL over TLS
 * when TLS material is configured. On success *rep_type and *rep are set and
 * the caller frees *rep with spes_proto_free(); an Error reply is returned as
 * success with *rep_type == SPES_MSG_ERROR. */
int spesctl_ops_call(const spesctl_conn *c, int req_type, const ProtobufCMessage *msg, int want_type,
                     int *rep_type, ProtobufCMessage **rep);

/* spesctl_ops_print prints a decoded reply (StatusReply, MembersReply,
 * CheckpointReply or Ack) as a human table, or as JSON when json is set;
 * now_ms is the clock used for "3s ago". Returns 0, or -1 if out of memory. */
int spesctl_ops_print(int type, const ProtobufCMessage *msg, int json, unsigned long long now_ms);

/* spesctl_top runs `spesctl top` (cmd_top.c) with the leading connection flags lead. */
int spesctl_top(int argc, char **argv, const spesctl_conn *lead);

/* spesctl_ops_state_name returns "active" etc. for a NodeState value. */
const char *spesctl_ops_state_name(int state);

#endif
