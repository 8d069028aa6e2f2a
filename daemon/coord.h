/* coord.h: the coordinator role of the daemon: glue (daemon/coord_glue.c)
 * around the state machine of src/coord, which decides everything; this part
 * reads the clocks and the files and carries out the decisions. Runs on the
 * daemon's loop only. */
#ifndef SPES_DAEMON_COORD_H
#define SPES_DAEMON_COORD_H

#include <protobuf-c/protobuf-c.h>

#include "daemon/daemon.h"

typedef struct spes_coord spes_coord;

/* spes_coord_alloc loads the run config and the persisted state (or starts a new run). */
int spes_coord_alloc(spes_coord **out, spes_daemon *d);

/* spes_coord_free releases the coordinator (its state is already on disk). */
void spes_coord_free(spes_coord *c);

/* spes_coord_handle answers one coordinator request of the given type from peer. */
void spes_coord_handle(spes_coord *c, int type, const ProtobufCMessage *msg, const spes_pki_identity *peer,
                       spes_reply_fn reply, void *ctx);

/* spes_coord_tick runs failure detection and round deadlines. */
void spes_coord_tick(spes_coord *c);

/* spes_coord_validated is called on the loop when the coordinator's own node
 * has fetched and checked the announced contributions of round r: ok[i] says
 * whether announcement i passed, reasons[i] why not. */
void spes_coord_validated(spes_coord *c, uint64_t round, int n, const int *ok, char (*reasons)[256]);

#endif
