/* wanrelay.c: spes-wanrelay, the WAN lab's link emulator (docs/wan-lab.md).
 * This kernel has no netem, so delay, loss and rate are applied here in user
 * space: the relay owns one TUN device ("wan0", address 10.A.K.2/16) in each
 * node's network namespace; every IPv4 packet a node sends to another lab
 * address goes through, in order: the sender's uplink (rate, droptail buffer,
 * loss), the one-way delay of the pair, the receiver's downlink (rate,
 * droptail buffer, loss), then into the receiver's TUN. One epoll loop, one
 * timerfd on CLOCK_MONOTONIC, signals through a signalfd; counters per link
 * on SIGUSR1 and at exit; SIGHUP reads the profile again (the chaos soak
 * cuts links and adds loss that way). It never touches a namespace it was not named, and
 * everything it creates (the TUN devices) goes with its file descriptors. */
#include "core/error.h"
#include "tests/wan/wanprofile.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define PKT_MAX 2048       /* the TUN's MTU is at most 1500: a read never exceeds this */
#define POOL_MAX (1 << 17) /* packets held at once (256 MiB); beyond: counted drop_nomem */
#define READ_BURST 64      /* packets read from one TUN before looking at the others */
#define TUN_NAME "wan0"

enum { ST_PROPAGATE = 1, ST_DELIVER = 2 };

typedef struct pkt {
    int64_t t;    /* when the packet reaches the downlink (ST_PROPAGATE) or leaves it (ST_DELIVER), ns */
    uint64_t seq; /* ties in t keep their order */
    struct pkt *next;
    uint16_t len;
    uint8_t src, dst, stage;
    unsigned char data[PKT_MAX];
} pkt;

/* lossy is one direction of an access link's loss process (Bernoulli or Gilbert-Elliott). */
typedef struct lossy {
    double loss;    /* Bernoulli probability (no bursts) */
    double p, r, h; /* Gilbert-Elliott: good->bad, bad->good, loss in bad */
    int bursty, bad;
} lossy;

typedef struct dir_stats {
    uint64_t packets, bytes, drop_queue, drop_loss;
} dir_stats;

typedef struct node {
    int fd;
    char ns[64], addr[32];
    int64_t up_ns_per_kbyte, down_ns_per_kbyte; /* serialisation time of 1000 bytes */
    int64_t buffer_ns;
    int64_t up_busy, down_busy; /* when the link finishes what it holds */
    lossy up_loss, down_loss;
    uint64_t read, other; /* every packet read from the TUN; those not for a lab peer */
    dir_stats up, down;
    uint64_t delivered, delivered_bytes;
} node;

typedef struct relay {
    int n, net, ep, tfd, sfd;
    node nodes[WAN_MAX_NODES];
    int64_t delay_ns[WAN_MAX_NODES][WAN_MAX_NODES];
    uint64_t pair_sent[WAN_MAX_NODES][WAN_MAX_NODES], pair_delivered[WAN_MAX_NODES][WAN_MAX_NODES];
    pkt **heap;
    size_t nheap, capheap;
    pkt *free_list;
    size_t npkts;
    uint64_t seq, rng, drop_nomem, drop_tx;
    int64_t armed, started;
    const char *stats_path, *cc, *profile_path;
} relay;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double uniform(relay *r) /* xorshift64*: [0, 1) */
{
    r->rng ^= r->rng >> 12;
    r->rng ^= r->rng << 25;
    r->rng ^= r->rng >> 27;
    return (double)((r->rng * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
}

static void lossy_init(lossy *l, const wan_link *w)
{
    memset(l, 0, sizeof *l);
    l->loss = w->loss;
    if (w->burst_len >= 1 && w->loss > 0 && w->loss < 1) {
        /* mean loss = pi_bad * h with pi_bad = p / (p + r); mean stay in bad = 1 / r packets */
        double pi = w->loss / w->burst_loss;
        l->bursty = 1;
        l->h = w->burst_loss;
        l->r = 1.0 / w->burst_len;
        l->p = pi >= 1 ? 1 : pi * l->r / (1 - pi);
        if (l->p > 1)
            l->p = 1;
    }
}

static int lose(relay *r, lossy *l)
{
    if (!l->bursty)
        return l->loss > 0 && uniform(r) < l->loss;
    if (l->bad ? uniform(r) < l->r : uniform(r) < l->p)
        l->bad = !l->bad;
    return l->bad && uniform(r) < l->h;
}

/* ---- the event heap, ordered by (t, seq) ---- */

static int before(const pkt *a, const pkt *b)
{
    return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static int heap_push(relay *r, pkt *p)
{
    if (r->nheap == r->capheap) {
        size_t cap = r->capheap ? 2 * r->capheap : 1024;
        pkt **h = realloc(r->heap, cap * sizeof *h);
        if (!h)
            return SPES_ENOMEM;
        r->heap = h;
        r->capheap = cap;
    }
    p->seq = r->seq++;
    size_t i = r->nheap++;
    while (i > 0 && before(p, r->heap[(i - 1) / 2])) {
        r->heap[i] = r->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    r->heap[i] = p;
    return 0;
}

static pkt *heap_pop(relay *r)
{
    pkt *top = r->heap[0], *last = r->heap[--r->nheap];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= r->nheap)
            break;
        if (c + 1 < r->nheap && before(r->heap[c + 1], r->heap[c]))
            c++;
        if (!before(r->heap[c], last))
            break;
        r->heap[i] = r->heap[c];
        i = c;
    }
    if (r->nheap)
        r->heap[i] = last;
    return top;
}

static pkt *pkt_get(relay *r)
{
    pkt *p = r->free_list;
    if (p) {
        r->free_list = p->next;
        return p;
    }
    if (r->npkts >= POOL_MAX || !(p = malloc(sizeof *p)))
        return NULL;
    r->npkts++;
    return p;
}

static void pkt_put(relay *r, pkt *p)
{
    p->next = r->free_list;
    r->free_list = p;
}

/* ---- the links ---- */

static int64_t tx_ns(int64_t ns_per_kbyte, unsigned len)
{
    return ns_per_kbyte * (int64_t)len / 1000;
}

/* dst_of maps a packet to the lab node it is addressed to, or -1. */
static int dst_of(const relay *r, const unsigned char *b, unsigned len)
{
    if (len < 20 || (b[0] >> 4) != 4)
        return -1;
    if (b[16] != 10 || b[17] != r->net || b[19] != 2 || b[18] >= r->n)
        return -1;
    return b[18];
}

/* uplink takes a packet just read from node src's TUN at time now. */
static void uplink(relay *r, pkt *p, int64_t now)
{
    node *s = &r->nodes[p->src];
    s->up.packets++;
    s->up.bytes += p->len;
    r->pair_sent[p->src][p->dst]++;
    int64_t start = s->up_busy > now ? s->up_busy : now;
    if (start - now > s->buffer_ns) {
        s->up.drop_queue++;
        pkt_put(r, p);
        return;
    }
    s->up_busy = start + tx_ns(s->up_ns_per_kbyte, p->len);
    if (lose(r, &s->up_loss)) {
        s->up.drop_loss++;
        pkt_put(r, p);
        return;
    }
    p->t = s->up_busy + r->delay_ns[p->src][p->dst];
    p->stage = ST_PROPAGATE;
    if (heap_push(r, p)) {
        r->drop_nomem++;
        pkt_put(r, p);
    }
}

/* downlink takes a packet reaching node dst's downlink at time p->t. */
static void downlink(relay *r, pkt *p)
{
    node *d = &r->nodes[p->dst];
    d->down.packets++;
    d->down.bytes += p->len;
    int64_t start = d->down_busy > p->t ? d->down_busy : p->t;
    if (start - p->t > d->buffer_ns) {
        d->down.drop_queue++;
        pkt_put(r, p);
        return;
    }
    d->down_busy = start + tx_ns(d->down_ns_per_kbyte, p->len);
    if (lose(r, &d->down_loss)) {
        d->down.drop_loss++;
        pkt_put(r, p);
        return;
    }
    p->t = d->down_busy;
    p->stage = ST_DELIVER;
    if (heap_push(r, p)) {
        r->drop_nomem++;
        pkt_put(r, p);
    }
}

static void deliver(relay *r, pkt *p)
{
    node *d = &r->nodes[p->dst];
    if (write(d->fd, p->data, p->len) == (ssize_t)p->len) {
        d->delivered++;
        d->delivered_bytes += p->len;
        r->pair_delivered[p->src][p->dst]++;
    } else {
        r->drop_tx++;
    }
    pkt_put(r, p);
}

static void run_due(relay *r, int64_t now)
{
    while (r->nheap && r->heap[0]->t <= now) {
        pkt *p = heap_pop(r);
        if (p->stage == ST_PROPAGATE)
            downlink(r, p);
        else
            deliver(r, p);
    }
}

static void read_tun(relay *r, int k, int64_t now)
{
    node *s = &r->nodes[k];
    for (int i = 0; i < READ_BURST; i++) {
        pkt *p = pkt_get(r);
        if (!p) { /* pool exhausted: read into a scratch buffer and drop */
            static unsigned char scratch[PKT_MAX];
            if (read(s->fd, scratch, sizeof scratch) <= 0)
                return;
            s->read++;
            r->drop_nomem++;
            continue;
        }
        ssize_t len = read(s->fd, p->data, sizeof p->data);
        if (len <= 0) {
            pkt_put(r, p);
            return;
        }
        s->read++;
        int dst = dst_of(r, p->data, (unsigned)len);
        if (dst < 0 || dst == k) {
            s->other++;
            pkt_put(r, p);
            continue;
        }
        p->len = (uint16_t)len;
        p->src = (uint8_t)k;
        p->dst = (uint8_t)dst;
        uplink(r, p, now);
    }
}

static void arm_timer(relay *r)
{
    int64_t t = r->nheap ? r->heap[0]->t : 0;
    if (t == r->armed)
        return;
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    if (t) {
        its.it_value.tv_sec = t / 1000000000;
        its.it_value.tv_nsec = t % 1000000000;
        if (!its.it_value.tv_sec && !its.it_value.tv_nsec)
            its.it_value.tv_nsec = 1;
    }
    timerfd_settime(r->tfd, TFD_TIMER_ABSTIME, &its, NULL);
    r->armed = t;
}

/* ---- counters ---- */

static json_t *dir_json(const dir_stats *s)
{
    return json_pack("{sI sI sI sI}", "packets", (json_int_t)s->packets, "bytes", (json_int_t)s->bytes,
                     "drop_queue", (json_int_t)s->drop_queue, "drop_loss", (json_int_t)s->drop_loss);
}

static json_t *stats_json(const relay *r)
{
    json_t *o = json_object(), *nodes = json_array(), *sent = json_array(), *deliv = json_array();
    uint64_t in_flight = r->nheap;
    for (int k = 0; k < r->n; k++) {
        const node *s = &r->nodes[k];
        json_t *d = dir_json(&s->down);
        json_object_set_new(d, "delivered", json_integer((json_int_t)s->delivered));
        json_object_set_new(d, "delivered_bytes", json_integer((json_int_t)s->delivered_bytes));
        json_array_append_new(nodes, json_pack("{ss ss sI sI so so}", "netns", s->ns, "addr", s->addr, "read",
                                               (json_int_t)s->read, "other", (json_int_t)s->other, "up",
                                               dir_json(&s->up), "down", d));
        json_t *a = json_array(), *b = json_array();
        for (int j = 0; j < r->n; j++) {
            json_array_append_new(a, json_integer((json_int_t)r->pair_sent[k][j]));
            json_array_append_new(b, json_integer((json_int_t)r->pair_delivered[k][j]));
        }
        json_array_append_new(sent, a);
        json_array_append_new(deliv, b);
    }
    json_object_set_new(o, "elapsed_s", json_real((double)(now_ns() - r->started) / 1e9));
    json_object_set_new(o, "cc", json_string(r->cc ? r->cc : ""));
    json_object_set_new(o, "nodes", nodes);
    json_object_set_new(o, "pair_sent", sent);
    json_object_set_new(o, "pair_delivered", deliv);
    json_object_set_new(o, "in_flight", json_integer((json_int_t)in_flight));
    json_object_set_new(o, "drop_nomem", json_integer((json_int_t)r->drop_nomem));
    json_object_set_new(o, "drop_tx", json_integer((json_int_t)r->drop_tx));
    return o;
}

/* report prints the counters as one JSON line and, with --stats, replaces that file. */
static void report(const relay *r)
{
    json_t *o = stats_json(r);
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!s)
        return;
    printf("stats %s\n", s);
    fflush(stdout);
    if (r->stats_path) {
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s.tmp", r->stats_path);
        FILE *f = fopen(tmp, "w");
        if (f && fprintf(f, "%s\n", s) > 0 && fclose(f) == 0)
            rename(tmp, r->stats_path);
        else if (f)
            fclose(f);
    }
    free(s);
}

/* ---- set-up inside the namespaces ---- */

static int if_ioctl(int sock, unsigned long req, struct ifreq *ifr, const char *ns, const char *what)
{
    if (ioctl(sock, req, ifr) < 0)
        return spes_errf_errno(SPES_EIO, "netns %s: %s %s", ns, ifr->ifr_name, what);
    return 0;
}

static int set_addr(int sock, unsigned long req, const char *ns, const char *ip)
{
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", TUN_NAME);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &sin->sin_addr);
    return if_ioctl(sock, req, &ifr, ns, req == SIOCSIFADDR ? "address" : "netmask");
}

static int set_up(int sock, const char *ifname, const char *ns)
{
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
    int rc = if_ioctl(sock, SIOCGIFFLAGS, &ifr, ns, "flags");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    return rc ? rc : if_ioctl(sock, SIOCSIFFLAGS, &ifr, ns, "up");
}

static void write_proc(const char *path, const char *value)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    if (write(fd, value, strlen(value)) < 0) {
        /* best effort: the lab works without it */
    }
    close(fd);
}

/* open_tun enters namespace NS, creates wan0 there with ADDR/16, MTU 1500 and
 * (if CC) that congestion control, and comes back to namespace HOME. */
static int open_tun(node *s, int home, const char *cc)
{
    char path[128];
    snprintf(path, sizeof path, "/run/netns/%s", s->ns);
    int nsfd = open(path, O_RDONLY | O_CLOEXEC), sock = -1, rc = 0;
    if (nsfd < 0)
        return spes_errf_errno(SPES_ENOENT, "netns %s: cannot open %s (create it with ip netns add)", s->ns,
                               path);
    if (setns(nsfd, CLONE_NEWNET) < 0) {
        rc = spes_errf_errno(SPES_EIO, "netns %s: setns", s->ns);
        goto out;
    }
    s->fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (s->fd < 0) {
        rc = spes_errf_errno(SPES_EIO, "netns %s: /dev/net/tun", s->ns);
        goto back;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", TUN_NAME);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    if (ioctl(s->fd, TUNSETIFF, &ifr) < 0) {
        rc = spes_errf_errno(SPES_EIO, "netns %s: TUNSETIFF %s", s->ns, TUN_NAME);
        goto back;
    }
    write_proc("/proc/sys/net/ipv6/conf/" TUN_NAME "/disable_ipv6", "1");
    if (cc)
        write_proc("/proc/sys/net/ipv4/tcp_congestion_control", cc);
    sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) {
        rc = spes_errf_errno(SPES_EIO, "netns %s: socket", s->ns);
        goto back;
    }
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", TUN_NAME);
    ifr.ifr_mtu = 1500;
    if ((rc = if_ioctl(sock, SIOCSIFMTU, &ifr, s->ns, "mtu")))
        goto back;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", TUN_NAME);
    ifr.ifr_qlen = 1000;
    if ((rc = if_ioctl(sock, SIOCSIFTXQLEN, &ifr, s->ns, "txqueuelen")))
        goto back;
    if ((rc = set_addr(sock, SIOCSIFADDR, s->ns, s->addr)) ||
        (rc = set_addr(sock, SIOCSIFNETMASK, s->ns, "255.255.0.0")))
        goto back;
    if ((rc = set_up(sock, TUN_NAME, s->ns)) || (rc = set_up(sock, "lo", s->ns)))
        goto back;
back:
    if (sock >= 0)
        close(sock);
    if (setns(home, CLONE_NEWNET) < 0 && !rc)
        rc = spes_errf_errno(SPES_EIO, "cannot return to the relay's own namespace");
out:
    close(nsfd);
    return rc;
}

static int64_t ns_per_kbyte(double mbit)
{
    return (int64_t)(8000.0 * 1000.0 / mbit + 0.5); /* 8000 bits at mbit*1e6 bit/s, in ns */
}

/* set_links gives every link prof's rates, buffers, loss and delays (packets
 * already on their way keep the times they were given). */
static void set_links(relay *r, const wan_profile *prof)
{
    for (int k = 0; k < r->n; k++) {
        node *s = &r->nodes[k];
        const wan_link *w = &prof->node[k];
        s->up_ns_per_kbyte = ns_per_kbyte(w->up_mbit);
        s->down_ns_per_kbyte = ns_per_kbyte(w->down_mbit);
        s->buffer_ns = (int64_t)(w->buffer_ms * 1e6);
        lossy_init(&s->up_loss, w);
        lossy_init(&s->down_loss, w);
        for (int j = 0; j < r->n; j++)
            r->delay_ns[k][j] = (int64_t)(prof->delay_ms[k][j] * 1e6);
    }
}

static int setup(relay *r, const wan_profile *prof, char **names)
{
    int home = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC), rc = 0;
    if (home < 0)
        return spes_errf_errno(SPES_EIO, "/proc/self/ns/net");
    set_links(r, prof);
    for (int k = 0; k < r->n && !rc; k++) {
        node *s = &r->nodes[k];
        snprintf(s->ns, sizeof s->ns, "%s", names[k]);
        snprintf(s->addr, sizeof s->addr, "10.%d.%d.2", r->net, k);
        rc = open_tun(s, home, r->cc);
    }
    close(home);
    return rc;
}

/* reload reads the profile again (SIGHUP): a profile that does not load leaves the links as they were. */
static void reload(relay *r)
{
    static wan_profile prof;
    if (wan_profile_load(&prof, r->profile_path, r->n) != 0) {
        fprintf(stderr, "spes-wanrelay: reload refused, links unchanged: %s\n", spes_errmsg());
        return;
    }
    set_links(r, &prof);
    printf("reloaded %s\n", r->profile_path);
    fflush(stdout);
}

static int loop(relay *r)
{
    struct epoll_event evs[WAN_MAX_NODES + 2];
    for (;;) {
        int m = epoll_wait(r->ep, evs, WAN_MAX_NODES + 2, -1);
        if (m < 0 && errno != EINTR)
            return spes_errf_errno(SPES_EIO, "epoll_wait");
        int64_t now = now_ns();
        run_due(r, now);
        for (int i = 0; i < m; i++) {
            int k = (int)evs[i].data.u32;
            if (k < r->n) {
                read_tun(r, k, now);
            } else if (k == WAN_MAX_NODES) {
                uint64_t x;
                if (read(r->tfd, &x, sizeof x) < 0 && errno != EAGAIN)
                    return spes_errf_errno(SPES_EIO, "timerfd");
            } else {
                struct signalfd_siginfo si;
                while (read(r->sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                    if (si.ssi_signo == SIGUSR1)
                        report(r);
                    else if (si.ssi_signo == SIGHUP)
                        reload(r);
                    else
                        return 0;
                }
            }
        }
        run_due(r, now_ns());
        arm_timer(r);
    }
}

static void usage(void)
{
    fprintf(stderr,
            "usage: spes-wanrelay --profile FILE --netns NS0,NS1,... [--net A] [--cc NAME] [--stats FILE]"
            " [--seed S] [--rt PRIO]\n"
            "       spes-wanrelay --profile FILE --nodes N --check\n"
            "Node K gets 10.A.K.2/16 (A = --net, default 77) on device " TUN_NAME " in namespace NS_K.\n"
            "--rt PRIO runs the relay SCHED_FIFO at PRIO, so busy CPUs do not slow the links.\n"
            "SIGUSR1 prints the counters (and writes --stats); SIGHUP reads the profile again (rates,\n"
            "delays and loss; loss 1 cuts a link); SIGTERM or SIGINT ends the relay.\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static relay r;
    const char *profile = NULL;
    char *netns = NULL, *names[WAN_MAX_NODES];
    int check = 0, nodes = 0, rc = 0, rt = 0;
    r.net = 77;
    r.rng = 0x9E3779B97F4A7C15ULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--check")) {
            check = 1;
            continue;
        }
        if (!v)
            usage();
        i++;
        if (!strcmp(a, "--profile"))
            profile = v;
        else if (!strcmp(a, "--netns"))
            netns = strdup(v);
        else if (!strcmp(a, "--nodes"))
            nodes = atoi(v);
        else if (!strcmp(a, "--net"))
            r.net = atoi(v);
        else if (!strcmp(a, "--cc"))
            r.cc = v;
        else if (!strcmp(a, "--stats"))
            r.stats_path = v;
        else if (!strcmp(a, "--rt"))
            rt = atoi(v);
        else if (!strcmp(a, "--seed"))
            r.rng = strtoull(v, NULL, 0) | 1;
        else
            usage();
    }
    if (!profile || (!netns && !nodes) || r.net < 0 || r.net > 255)
        usage();
    if (netns)
        for (char *save = NULL, *t = strtok_r(netns, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (r.n == WAN_MAX_NODES || strlen(t) >= sizeof r.nodes[0].ns) {
                fprintf(stderr, "spes-wanrelay: too many namespaces or a name too long (%s)\n", t);
                return 2;
            }
            names[r.n++] = t;
        }
    if (!nodes)
        nodes = r.n;
    r.profile_path = profile;
    static wan_profile prof;
    if (wan_profile_load(&prof, profile, nodes)) {
        fprintf(stderr, "spes-wanrelay: %s\n", spes_errmsg());
        free(netns);
        return 1;
    }
    if (check) {
        wan_profile_print(&prof);
        free(netns);
        return 0;
    }
    if (r.n != nodes) {
        fprintf(stderr, "spes-wanrelay: --nodes %d but %d namespaces\n", nodes, r.n);
        free(netns);
        return 2;
    }
    prctl(PR_SET_TIMERSLACK, 1UL);
    if (rt > 0) {
        /* links do not slow down when the machine's CPUs are busy: the relay runs
         * before the daemons it carries (it sleeps in epoll between packets) */
        struct sched_param sp = {.sched_priority = rt};
        if (sched_setscheduler(0, SCHED_FIFO, &sp) < 0)
            fprintf(stderr,
                    "spes-wanrelay: no real-time priority %d (%s): timings suffer when the CPUs are busy\n",
                    rt, strerror(errno));
    }
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGUSR1);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    for (int k = 0; k < WAN_MAX_NODES; k++)
        r.nodes[k].fd = -1;
    r.ep = epoll_create1(EPOLL_CLOEXEC);
    r.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    r.sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (r.ep < 0 || r.tfd < 0 || r.sfd < 0) {
        rc = spes_errf_errno(SPES_EIO, "epoll, timerfd or signalfd");
        goto fail;
    }
    if ((rc = setup(&r, &prof, names)))
        goto fail;
    struct epoll_event ev = {.events = EPOLLIN};
    for (int k = 0; k < r.n; k++) {
        ev.data.u32 = (uint32_t)k;
        epoll_ctl(r.ep, EPOLL_CTL_ADD, r.nodes[k].fd, &ev);
    }
    ev.data.u32 = WAN_MAX_NODES;
    epoll_ctl(r.ep, EPOLL_CTL_ADD, r.tfd, &ev);
    ev.data.u32 = WAN_MAX_NODES + 1;
    epoll_ctl(r.ep, EPOLL_CTL_ADD, r.sfd, &ev);
    r.started = now_ns();
    printf("ready: %d namespaces, 10.%d.0.2 .. 10.%d.%d.2 on %s\n", r.n, r.net, r.net, r.n - 1, TUN_NAME);
    fflush(stdout);
    rc = loop(&r);
    report(&r);
fail:
    if (rc)
        fprintf(stderr, "spes-wanrelay: %s\n", spes_errmsg());
    for (int k = 0; k < r.n; k++)
        if (r.nodes[k].fd >= 0)
            close(r.nodes[k].fd);
    while (r.nheap)
        free(heap_pop(&r));
    for (pkt *p = r.free_list, *next; p; p = next) {
        next = p->next;
        free(p);
    }
    free(r.heap);
    free(netns);
    if (r.ep >= 0)
        close(r.ep);
    if (r.tfd >= 0)
        close(r.tfd);
    if (r.sfd >= 0)
        close(r.sfd);
    return rc ? 1 : 0;
}
