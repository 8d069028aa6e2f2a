/* dmetrics.h: the daemon's side of the operator's view: a metrics snapshot
 * that the loop refreshes on every tick (from the node, the counters, the
 * blob store, the coordinator's status and what the worker noted) and
 * publishes as a copy; the HTTP listener (dmetrics_http.c, its own thread)
 * renders that copy on request: /metrics, /api/status, and the dashboard.
 * Exists only when the daemon config sets "metrics"; every hook accepts NULL
 * and then does nothing. */
#ifndef SPES_DAEMON_DMETRICS_H
#define SPES_DAEMON_DMETRICS_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/daemon.h"
#include "model/model.h"

typedef struct spes_dmetrics spes_dmetrics;

/* spes_dmetrics_open starts the listener on d->cfg.metrics (HOST:PORT); *out
 * stays NULL when that is empty. */
int spes_dmetrics_open(spes_dmetrics **out, spes_daemon *d);

/* spes_dmetrics_close stops the listener and frees everything (after the worker has stopped). */
void spes_dmetrics_close(spes_dmetrics *m);

/* spes_dmetrics_port returns the port the listener is bound to. */
int spes_dmetrics_port(const spes_dmetrics *m);

/* spes_dmetrics_tick refreshes the snapshot and publishes a copy of it (loop). */
void spes_dmetrics_tick(spes_dmetrics *m);

/* spes_dmetrics_round_applied records that this daemon applied round r's
 * commit (loop): train_s and wait_s are its seconds training and waiting for
 * that round (negative: it did not train in it). */
void spes_dmetrics_round_applied(spes_dmetrics *m, uint64_t r, double train_s, double wait_s);

/* spes_dmetrics_note_routing adds the last training step's routed rows per
 * (layer, expert) (worker thread; reads the model only). */
void spes_dmetrics_note_routing(spes_dmetrics *m, const spes_model *model);

/* spes_dmetrics_note_delta records the L2 norm of each column's change from
 * prev to next, the states before and after a commit (worker thread). */
void spes_dmetrics_note_delta(spes_dmetrics *m, const spes_layout *lo, int E, const float *next,
                              const float *prev);

/* spes_dmetrics_get renders the published snapshot for path ("/metrics" or
 * "/api/status") into *out (malloc'd); SPES_ENOENT for another path. The
 * HTTP thread only (it renders into a copy it owns). */
int spes_dmetrics_get(spes_dmetrics *m, const char *path, char **out, size_t *len);

/* spes_dmetrics_http_start / _stop run the HTTP listener (dmetrics_http.c). */
int spes_dmetrics_http_start(spes_dmetrics *m, const char *addr, void **handle, int *port);
void spes_dmetrics_http_stop(void *handle);

/* spes_dashboard_file returns the embedded dashboard file for path ("/",
 * "/app.js", "/style.css") and its content type, or NULL. */
const unsigned char *spes_dashboard_file(const char *path, size_t *len, const char **type);

#endif
