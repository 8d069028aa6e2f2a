/* daemon.c: `spesd run`: start-up (defaults, config file, validate, lock,
 * init, READY=1, loop), the inbox that other threads post to, signals, and
 * the request router. Never blocks the loop on the network or the disk for
 * long: training, fetching and aggregation run on the node's worker thread. */
#include "daemon/daemon.h"
#include "core/error.h"
#include "core/fileio.h"
#include "core/log.h"
#include "blob/blob.h"
#include "cli/opts.h"
#include "tools/commands.h"
#include "daemon/coord.h"
#include "daemon/dmetrics.h"
#include "daemon/node.h"
#include "proto/proto.h"
#include "proto/spes.pb-c.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>
#ifdef SPES_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#else
static int sd_notify(int unset, const char *state)
{
    (void)unset;
    (void)state;
    return 0;
}
#endif

uint64_t spes_daemon_tick_ms(const spes_dconfig *cfg)
{
    int every = cfg->heartbeat_ms / 2;
    if (cfg->commit_poll_ms > 0 && cfg->commit_poll_ms < every)
        every = cfg->commit_poll_ms; /* a node polls for its commit this often */
    return every > 50 ? (uint64_t)every : 50;
}

void spes_daemon_post(spes_daemon *d, spes_event *ev)
{
    ev->next = NULL;
    pthread_mutex_lock(&d->mu);
    if (d->tail)
        d->tail->next = ev;
    else
        d->head = ev;
    d->tail = ev;
    pthread_mutex_unlock(&d->mu);
    uv_async_send(&d->wake);
}

int spes_daemon_call_on_loop(spes_daemon *d, void (*fn)(void *), void *arg)
{
    spes_event *ev = calloc(1, sizeof *ev);
    if (!ev)
        return SPES_ENOMEM;
    ev->kind = SPES_EV_CALLBACK;
    ev->fn = fn;
    ev->arg = arg;
    spes_daemon_post(d, ev);
    return 0;
}

void spes_daemon_reply_error(spes_reply_fn reply, void *ctx, int err, int in_reply_to, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    uint8_t *out = NULL;
    size_t len = 0;
    if (spes_proto_encode_error(err, msg, in_reply_to, &out, &len) == 0) {
        reply(ctx, out, len);
        free(out);
    } else {
        reply(ctx, NULL, 0);
    }
}

static int is_coordinator_type(int type)
{
    return type == SPES_MSG_JOIN || type == SPES_MSG_HEARTBEAT || type == SPES_MSG_LEAVE ||
           type == SPES_MSG_ANNOUNCE || type == SPES_MSG_DIGEST || type == SPES_MSG_MEMBERS_REQUEST ||
           type == SPES_MSG_CHECKPOINT_REQUEST || type == SPES_MSG_STATUS_REQUEST ||
           type == SPES_MSG_AGGREGATE_REPORT;
}

void spes_daemon_handle(spes_daemon *d, const uint8_t *data, size_t len, const spes_pki_identity *peer,
                        spes_reply_fn reply, void *ctx)
{
    int type = 0;
    ProtobufCMessage *msg = NULL;
    int rc = spes_proto_decode(data, len, &type, &msg);
    if (rc == SPES_PROTO_EVERSION) { /* told in its own version where it can read it */
        log_warnx("request from %s refused: it speaks protocol %d and this daemon %d (another spes release)",
                  peer->name[0] ? peer->name : "local", spes_proto_peer_version(data, len),
                  SPES_PROTO_VERSION);
        uint8_t *out = NULL;
        size_t out_len = 0;
        if (spes_proto_encode_version_error(data, len, &out, &out_len) == 0)
            reply(ctx, out, out_len);
        else
            reply(ctx, NULL, 0);
        free(out);
        return;
    }
    if (rc) {
        log_warnx("request from %s refused: %s", peer->name[0] ? peer->name : "local", spes_errmsg());
        spes_daemon_reply_error(reply, ctx, rc, type, "%s", spes_errmsg());
        return;
    }
    if (is_coordinator_type(type)) {
        if (d->coord)
            spes_coord_handle(d->coord, type, msg, peer, reply, ctx);
        else if (type == SPES_MSG_STATUS_REQUEST)
            spes_node_forward_status(d->node, data, len, reply, ctx);
        else
            spes_daemon_reply_error(reply, ctx, SPES_ESTATE, type,
                                    "this daemon is not the coordinator; it is at %s", d->cfg.coordinator);
    } else if (type == SPES_MSG_BLOB_WANT || type == SPES_MSG_CHUNK_REQUEST) {
        uint8_t *rep = NULL;
        size_t rep_len = 0;
        spes_blob_handle(spes_node_blobs(d->node), data, len, &rep, &rep_len);
        reply(ctx, rep, rep_len);
        free(rep);
    } else {
        spes_daemon_reply_error(reply, ctx, SPES_EINVAL, type, "message type %d is not a request", type);
    }
    spes_proto_free(msg);
}

static void net_reply(void *ctx, const uint8_t *data, size_t len)
{
    spes_net_request *req = ctx;
    if (data)
        spes_net_reply(req, data, len);
    else
        spes_net_request_drop(req);
}

/* take_inbox empties the inbox and returns what it held, oldest first. */
static spes_event *take_inbox(spes_daemon *d)
{
    pthread_mutex_lock(&d->mu);
    spes_event *ev = d->head;
    d->head = d->tail = NULL;
    pthread_mutex_unlock(&d->mu);
    return ev;
}

static void drain_inbox(uv_async_t *h)
{
    spes_daemon *d = h->data;
    spes_event *ev = take_inbox(d);
    while (ev) {
        spes_event *next = ev->next;
        if (ev->kind == SPES_EV_REQUEST) {
            spes_daemon_handle(d, ev->data, ev->len, &ev->peer, net_reply, ev->req);
            free(ev->data);
        } else {
            ev->fn(ev->arg);
        }
        free(ev);
        ev = next;
    }
}

/* on_request runs on an nng thread for every request but blob requests (the
 * endpoint answers those from the store on a lane of their own): it copies the
 * request and posts it to the loop. */
static void on_request(void *arg, spes_net_request *req)
{
    spes_daemon *d = arg;
    size_t len;
    const void *data = spes_net_request_data(req, &len);
    spes_event *ev = calloc(1, sizeof *ev);
    uint8_t *copy = malloc(len ? len : 1);
    if (!ev || !copy) {
        free(ev);
        free(copy);
        spes_net_request_drop(req);
        return;
    }
    memcpy(copy, data, len);
    ev->kind = SPES_EV_REQUEST;
    ev->req = req;
    ev->data = copy;
    ev->len = len;
    ev->peer = *spes_net_request_peer(req);
    spes_daemon_post(d, ev);
}

static void on_tick(uv_timer_t *t)
{
    spes_daemon *d = t->data;
    if (d->coord)
        spes_coord_tick(d->coord);
    if (d->node)
        spes_node_tick(d->node);
    spes_dmetrics_tick(d->metrics); /* metrics hook */
    sd_notify(0, "WATCHDOG=1");
}

static void close_all(spes_daemon *d)
{
    /* No handler runs after the server is closed, so nothing posts any more;
     * the requests still queued were dropped by the server: free the copies. */
    if (d->server) {
        spes_net_server_close(d->server);
        d->server = NULL;
    }
    spes_event *ev = take_inbox(d);
    while (ev) {
        spes_event *next = ev->next;
        if (ev->kind == SPES_EV_CALLBACK)
            ev->fn(ev->arg);
        free(ev->data);
        free(ev);
        ev = next;
    }
    uv_timer_stop(&d->tick);
    uv_close((uv_handle_t *)&d->tick, NULL);
    uv_close((uv_handle_t *)&d->sig_term, NULL);
    uv_close((uv_handle_t *)&d->sig_int, NULL);
    uv_close((uv_handle_t *)&d->sig_hup, NULL);
    uv_close((uv_handle_t *)&d->wake, NULL);
    spes_control_close(d);
}

/* spes_daemon_stopped is called by the node once it has left the run. */
void spes_daemon_stopped(spes_daemon *d)
{
    close_all(d);
}

static void on_signal(uv_signal_t *s, int signum)
{
    spes_daemon *d = s->data;
    if (signum == SIGHUP) {
        spes_dconfig fresh;
        if (d->config_path[0] && spes_dconfig_load(&fresh, d->config_path) == 0 &&
            spes_log_parse_level(fresh.log_level) >= 0) {
            spes_log_set_level(spes_log_parse_level(fresh.log_level));
            log_info("log level %s (reloaded from %s)", fresh.log_level, d->config_path);
        } else if (d->config_path[0]) {
            log_error("SIGHUP: %s not reloaded: %s", d->config_path, spes_errmsg());
        }
        if (d->tls && d->cfg.crl[0]) {
            if (spes_net_tls_reload_crl(d->tls, d->cfg.crl) == 0) {
                log_info("revocation list %s reloaded", d->cfg.crl);
                if (d->server) /* revoked peers lose their live connections too */
                    spes_net_server_drop_revoked(d->server);
            } else
                log_error("revocation list reload failed, the old one stays: %s", spes_errmsg());
        }
        return;
    }
    if (d->stopping) {
        log_warnx("second signal: stopping now");
        d->exit_code = 1;
        close_all(d);
        return;
    }
    d->stopping = 1;
    sd_notify(0, "STOPPING=1");
    log_info("signal %d: draining (finishing or abandoning the round, leaving the run)", signum);
    spes_node_stop(d->node); /* calls spes_daemon_stopped when done */
}

static int lock_state_dir(spes_daemon *d)
{
    int rc = spes_mkdir_p(d->cfg.state_dir, 0750);
    if (rc)
        return rc;
    char *p = spes_path_join(d->cfg.state_dir, "lock");
    if (!p)
        return SPES_ENOMEM;
    d->lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (d->lock_fd < 0) {
        rc = spes_errf_errno(SPES_EIO, "%s: cannot open lock file", p);
    } else if (flock(d->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        rc = spes_errf(SPES_EEXIST, "%s: another spesd already uses state directory %s", p, d->cfg.state_dir);
        close(d->lock_fd);
        d->lock_fd = -1;
    } else {
        char pid[32];
        int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
        if (ftruncate(d->lock_fd, 0) != 0 || write(d->lock_fd, pid, (size_t)n) != n)
            log_warn("%s: cannot record the pid", p);
    }
    free(p);
    return rc;
}

static int start(spes_daemon *d)
{
    int rc;
    /* a peer or local client that goes away mid-reply must cost a failed write
     * (EPIPE), not the daemon: libuv writes with plain write(2) */
    signal(SIGPIPE, SIG_IGN);
    if ((rc = lock_state_dir(d)) != 0)
        return rc;
    if (!d->cfg.plain) {
        spes_net_tls_files f = {d->cfg.ca, d->cfg.cert, d->cfg.key, d->cfg.crl[0] ? d->cfg.crl : NULL};
        if ((rc = spes_net_tls_alloc(&d->tls, &f)) != 0)
            return rc;
        const spes_pki_identity *me = spes_net_tls_identity(d->tls);
        if (strcmp(me->name, d->cfg.name) != 0)
            return spes_errf(SPES_EINVAL,
                             "daemon config name \"%s\" differs from the certificate's name \"%s\"",
                             d->cfg.name, me->name);
    }
    uv_loop_init(&d->loop);
    pthread_mutex_init(&d->mu, NULL);
    uv_async_init(&d->loop, &d->wake, drain_inbox);
    d->wake.data = d;
    if (spes_dconfig_is_coordinator(&d->cfg) && (rc = spes_coord_alloc(&d->coord, d)) != 0)
        return rc;
    if ((rc = spes_node_alloc(&d->node, d)) != 0)
        return rc;
    /* blob requests and pushes on lanes of their own; requests limited to SPES_BLOB_MAX_REQUEST
     * (docs/security.md); the coordinator takes the blobs of nodes nobody can dial (docs/design.md,
     * "Reachability"), one unfinished push per member */
    if (d->coord && (rc = spes_blob_push_rx_open(&d->push, spes_node_blobs(d->node), SPES_MAX_MEMBERS)) != 0)
        return rc;
    spes_net_server_opts so = {
        .url = d->cfg.listen, .tls = d->tls, .plain = d->cfg.plain, .handler = on_request, .arg = d};
    if (d->cfg.listen[0] &&
        (rc = spes_blob_endpoint_open(&d->server, spes_node_blobs(d->node), d->push, &so)) != 0)
        return rc;
    if (!d->cfg.listen[0])
        log_info("no listen URL: this daemon dials out only and pushes its contributions to the coordinator");
    else if (!d->cfg.reachable)
        log_info("reachable is false: this daemon advertises no URL and pushes its contributions to the "
                 "coordinator");
    if ((rc = spes_control_open(d)) != 0)
        return rc;
    if ((rc = spes_dmetrics_open(&d->metrics, d)) != 0) /* metrics hook */
        return rc;
    uv_signal_init(&d->loop, &d->sig_term);
    uv_signal_init(&d->loop, &d->sig_int);
    uv_signal_init(&d->loop, &d->sig_hup);
    d->sig_term.data = d->sig_int.data = d->sig_hup.data = d;
    uv_signal_start(&d->sig_term, on_signal, SIGTERM);
    uv_signal_start(&d->sig_int, on_signal, SIGINT);
    uv_signal_start(&d->sig_hup, on_signal, SIGHUP);
    uv_timer_init(&d->loop, &d->tick);
    d->tick.data = d;
    uv_timer_start(&d->tick, on_tick, 50, spes_daemon_tick_ms(&d->cfg));
    return spes_node_start(d->node);
}

static void finish(spes_daemon *d)
{
    if (d->server)
        spes_net_server_close(d->server);
    spes_blob_push_rx_close(d->push); /* after the server: no push handler runs any more */
    d->push = NULL;
    spes_node_free(d->node);
    spes_coord_free(d->coord);
    spes_dmetrics_close(d->metrics); /* metrics hook: after the worker has stopped */
    if (d->tls)
        spes_net_tls_free(d->tls);
    if (d->lock_fd >= 0)
        close(d->lock_fd);
}

int cmd_run(int argc, char **argv)
{
    const char *path = NULL;
    int check = 0;
    const spes_opt opts[] = {
        {"config", 0, SPES_OPT_STR, &path, 0, 0, "DAEMON.json", "the daemon configuration (required)"},
        {"check", 'n', SPES_OPT_FLAG, &check, 0, 0, NULL, "check the configuration, print it, exit"},
        {NULL, 0, 0, NULL, 0, 0, NULL, NULL},
    };
    const spes_opt_cmd cmd = {"spesd run", "--config DAEMON.json [-n]", opts, 0, 0, NULL};
    int prc = spes_opts_parse(&cmd, argc, argv, NULL, NULL);
    if (prc == SPES_OPTS_HELP) {
        spes_opts_usage(&cmd, stdout);
        return 0;
    }
    if (prc) {
        fprintf(stderr, "spesd run: %s\n", spes_errmsg());
        return 2;
    }
    static spes_daemon d;
    memset(&d, 0, sizeof d);
    d.lock_fd = -1;
    int rc = path ? spes_dconfig_load(&d.cfg, path) : spes_errf(SPES_EINVAL, "--config FILE is required");
    if (path)
        snprintf(d.config_path, sizeof d.config_path, "%s", path);
    if (!rc)
        rc = spes_dconfig_validate(&d.cfg);
    if (!rc && check) {
        spes_dconfig_print(&d.cfg);
        return 0;
    }
    if (rc) {
        fprintf(stderr, "spesd run: %s\n", spes_errmsg());
        return 1;
    }
    spes_log_set_level(spes_log_parse_level(d.cfg.log_level));
    if (strcmp(d.cfg.codec, "fp32"))
        log_warnx("config: codec \"%s\" is ignored: the run config's spes.codec chooses the run's codec",
                  d.cfg.codec);
    spes_log_set_prefix(d.cfg.name);
    d.started_ms = spes_now_ms();
    rc = start(&d);
    if (rc) {
        log_error("cannot start: %s", spes_errmsg());
        fprintf(stderr, "spesd run: %s\n", spes_errmsg());
        finish(&d);
        return 1;
    }
    sd_notify(0, "READY=1");
    if (d.server)
        log_info("running: listening on %s (port %d), %s", d.cfg.listen, spes_net_server_port(d.server),
                 d.coord ? "coordinator" : "node");
    else
        log_info("running: no listener (outbound only), node");
    uv_run(&d.loop, UV_RUN_DEFAULT);
    finish(&d);
    uv_loop_close(&d.loop);
    log_info("stopped");
    return d.exit_code;
}
