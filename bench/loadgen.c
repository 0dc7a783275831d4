/*
 * loadgen: the C half of the gconnect benchmark harness (bench/harness).
 *
 * One binary, two roles, so that neither the client nor the server side of
 * a measurement is ever the bottleneck that a Python generator would be:
 *
 *   loadgen serve                     echo, sink and source servers on three
 *                                     loopback ports; prints "ports E S O"
 *   loadgen bulk      --dir up|down   throughput through N tunnels
 *   loadgen rate                      new tunnels per second (CONNECT,
 *                                     64-byte echo, close) at concurrency C
 *   loadgen hold                      hold N idle tunnels, then answer
 *                                     "rtt R [S [F]]" (closed loop), "open RATE S [F]"
 *                                     (open loop), "alive" and "quit" on stdin
 *   loadgen integrity --bytes B       B bytes both ways through one tunnel,
 *                                     sha256 of what was sent and received
 *
 * Every client command takes --proxy HOST:PORT (or "none" for the direct
 * baseline) and --target HOST:PORT, prints one JSON object per result line
 * on stdout, and is bounded by --max-seconds (SIGALRM ends it, exit 3).
 *
 * Single-threaded, non-blocking, level-triggered epoll throughout: the
 * harness pins this process to one core and reads its CPU use, so one thread
 * keeps that reading honest.
 *
 * Build: gcc -O2 -Wall -o loadgen loadgen.c   (the harness does this)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <poll.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#define BULK_CHUNK (256 * 1024)
/* The sink acknowledges every ACK_UNIT bytes, so an upload can be timed to
 * the moment its last byte arrived without relying on half-close (most peers
 * close both directions on the first EOF, see STYLE.md rule 6). */
#define ACK_UNIT (4 * 1024 * 1024)
#define ECHO_BYTES 64
#define MAX_EVENTS 512

/* ------------------------------------------------------------------ util */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "loadgen: --max-seconds reached, giving up\n";
    ssize_t r = write(2, msg, sizeof msg - 1);
    (void)r;
    _exit(3);
}

static volatile sig_atomic_t stop_requested;

static void on_term(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* Held tunnels need one descriptor each on this side; the default soft
 * limit (often 1024) would cap the measurement, so take the hard limit. */
static rlim_t raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        die("getrlimit: %s", strerror(errno));
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        die("setrlimit: %s", strerror(errno));
    return rl.rlim_cur;
}

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Received bulk bytes cost the load side as little as the kernel allows,
 * so that the proxy, not this process, is what a throughput figure measures:
 * recv(MSG_TRUNC) on TCP drops the bytes without copying them out (tcp_recvmsg
 * skips the copy). Measured here, it cut the receive side's CPU per GiB by a
 * third; sendfile() from a memfd on the sending side was slower than write()
 * over loopback, so sends stay plain. --discard copy reads normally. */
static int discard_trunc = 1;

/* Receive and discard up to len bulk bytes; returns what read() would. */
static ssize_t bulk_recv(int fd, uint8_t *buf, size_t len)
{
    if (!discard_trunc)
        return read(fd, buf, len);
    return recv(fd, buf, len, MSG_TRUNC | MSG_DONTWAIT);
}

struct addr {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[128]; /* host:port as written in the CONNECT line */
};

/* Only numeric loopback addresses are accepted: this tool never resolves
 * names, so it cannot be pointed anywhere by accident. */
static void parse_addr(const char *s, struct addr *out)
{
    char host[96];
    const char *port;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':' || (size_t)(end - s - 1) >= sizeof host)
            die("bad address %s", s);
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = 0;
        port = end + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= sizeof host)
            die("bad address %s", s);
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = 0;
        port = colon + 1;
    }
    struct addrinfo hints = {0}, *res;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &res) != 0)
        die("not a numeric address: %s", s);
    memcpy(&out->ss, res->ai_addr, res->ai_addrlen);
    out->len = res->ai_addrlen;
    freeaddrinfo(res);
    if (out->ss.ss_family == AF_INET) {
        uint32_t a = ntohl(((struct sockaddr_in *)&out->ss)->sin_addr.s_addr);
        if ((a >> 24) != 127)
            die("refusing non-loopback address %s", s);
    } else if (!IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&out->ss)->sin6_addr)) {
        die("refusing non-loopback address %s", s);
    }
    snprintf(out->text, sizeof out->text, "%s", s);
}

/* --------------------------------------------------------- latencies */

struct lat {
    uint64_t *v;
    size_t n, cap;
};

static void lat_push(struct lat *l, uint64_t ns)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 4096;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        if (!l->v)
            die("out of memory");
    }
    l->v[l->n++] = ns;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile in microseconds; call after lat_sort. */
static double lat_pct_us(const struct lat *l, double p)
{
    if (l->n == 0)
        return -1;
    size_t i = (size_t)(p / 100.0 * (double)l->n);
    if (i >= l->n)
        i = l->n - 1;
    return (double)l->v[i] / 1000.0;
}

static void lat_sort(struct lat *l)
{
    qsort(l->v, l->n, sizeof *l->v, cmp_u64);
}

/* ", PREFIX_p50_us: …" and p99, p99.9, max of a sorted set, into the JSON line being printed. */
static void print_lats(const char *prefix, const struct lat *l)
{
    printf(", \"%s_p50_us\": %.1f, \"%s_p99_us\": %.1f, \"%s_p999_us\": %.1f, \"%s_max_us\": %.1f", prefix,
           lat_pct_us(l, 50), prefix, lat_pct_us(l, 99), prefix, lat_pct_us(l, 99.9), prefix, lat_pct_us(l, 100));
}

/* ----------------------------------------------------------- sha-256 */
/* FIPS 180-4; a local copy so the build needs nothing beyond libc. */

struct sha256 {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t blen;
};

static const uint32_t SHA_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(struct sha256 *s, const uint8_t *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, h;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = s->h[0]; b = s->h[1]; c = s->h[2]; d = s->h[3];
    e = s->h[4]; f = s->h[5]; g = s->h[6]; h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) +
                      SHA_K[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d;
    s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

static void sha256_init(struct sha256 *s)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof iv);
    s->len = 0;
    s->blen = 0;
}

static void sha256_update(struct sha256 *s, const uint8_t *p, size_t n)
{
    s->len += n;
    if (s->blen) {
        size_t take = 64 - s->blen < n ? 64 - s->blen : n;
        memcpy(s->buf + s->blen, p, take);
        s->blen += take;
        p += take;
        n -= take;
        if (s->blen == 64) {
            sha256_block(s, s->buf);
            s->blen = 0;
        }
    }
    for (; n >= 64; p += 64, n -= 64)
        sha256_block(s, p);
    if (n) {
        memcpy(s->buf, p, n);
        s->blen = n;
    }
}

static void sha256_hex(struct sha256 *s, char out[65])
{
    uint64_t bits = s->len * 8;
    uint8_t pad[72] = {0x80};
    size_t padlen = (s->blen < 56 ? 56 : 120) - s->blen;
    for (int i = 0; i < 8; i++)
        pad[padlen + i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_update(s, pad, padlen + 8);
    for (int i = 0; i < 8; i++)
        sprintf(out + 8 * i, "%08x", s->h[i]);
}

/* ------------------------------------------------------------ server */

enum smode { S_LISTEN_ECHO, S_LISTEN_SINK, S_LISTEN_SOURCE, S_ECHO, S_SINK, S_SOURCE };

struct sconn {
    int mode;
    uint64_t count;
    uint8_t *pend; /* echo bytes the client has not taken yet */
    size_t pend_len, pend_off;
};

static struct sconn *sconns;
static int sepfd;
static uint8_t sbuf[BULK_CHUNK];

static int listen_on(const struct addr *a)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0)
        die("socket: %s", strerror(errno));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) != 0)
        die("bind %s: %s", a->text, strerror(errno));
    /* 4096 = net.core.somaxconn's default since Linux 5.4. */
    if (listen(fd, 4096) != 0)
        die("listen: %s", strerror(errno));
    return fd;
}

static int bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &len);
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static void sclose(int fd)
{
    free(sconns[fd].pend);
    memset(&sconns[fd], 0, sizeof sconns[fd]);
    close(fd);
}

static void sepoll(int op, int fd, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.fd = fd};
    if (epoll_ctl(sepfd, op, fd, &ev) != 0 && op != EPOLL_CTL_DEL)
        die("epoll_ctl: %s", strerror(errno));
}

static void s_accept(int lfd, int mode)
{
    for (int i = 0; i < 64; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0)
            return; /* EAGAIN, or EMFILE: the client side will report it */
        set_nodelay(fd);
        sconns[fd].mode = mode;
        sepoll(EPOLL_CTL_ADD, fd, mode == S_SOURCE ? EPOLLIN | EPOLLOUT : EPOLLIN);
    }
}

static void s_echo(int fd, uint32_t ev)
{
    struct sconn *c = &sconns[fd];
    if (c->pend) {
        if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        ssize_t w = write(fd, c->pend + c->pend_off, c->pend_len - c->pend_off);
        if (w < 0 && errno != EAGAIN) {
            sclose(fd);
            return;
        }
        if (w > 0)
            c->pend_off += (size_t)w;
        if (c->pend_off == c->pend_len) {
            free(c->pend);
            c->pend = NULL;
            sepoll(EPOLL_CTL_MOD, fd, EPOLLIN);
        }
        return;
    }
    ssize_t n = read(fd, sbuf, sizeof sbuf);
    if (n == 0 || (n < 0 && errno != EAGAIN)) {
        sclose(fd);
        return;
    }
    if (n < 0)
        return;
    ssize_t w = write(fd, sbuf, (size_t)n);
    if (w < 0 && errno != EAGAIN) {
        sclose(fd);
        return;
    }
    if (w < 0)
        w = 0;
    if (w < n) {
        /* Stop reading until the client takes what we owe it: backpressure
         * instead of an unbounded buffer. */
        c->pend_len = (size_t)(n - w);
        c->pend_off = 0;
        c->pend = malloc(c->pend_len);
        if (!c->pend)
            die("out of memory");
        memcpy(c->pend, sbuf + w, c->pend_len);
        sepoll(EPOLL_CTL_MOD, fd, EPOLLOUT);
    }
}

static void s_sink(int fd)
{
    struct sconn *c = &sconns[fd];
    ssize_t n = bulk_recv(fd, sbuf, sizeof sbuf);
    if (n == 0 || (n < 0 && errno != EAGAIN)) {
        sclose(fd);
        return;
    }
    if (n < 0)
        return;
    uint64_t before = c->count;
    c->count += (uint64_t)n;
    if (c->count / ACK_UNIT != before / ACK_UNIT) {
        uint64_t v = c->count;
        ssize_t w = write(fd, &v, sizeof v); /* 8 bytes into an idle send buffer */
        (void)w;
    }
}

static void s_source(int fd, uint32_t ev)
{
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        ssize_t n = read(fd, sbuf, sizeof sbuf);
        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            sclose(fd);
            return;
        }
    }
    if (ev & EPOLLOUT) {
        ssize_t w = write(fd, sbuf, sizeof sbuf);
        if (w < 0 && errno != EAGAIN)
            sclose(fd);
    }
}

static int cmd_serve(const char *host)
{
    rlim_t nofile = raise_nofile();
    sconns = calloc(nofile, sizeof *sconns);
    sepfd = epoll_create1(0);
    if (!sconns || sepfd < 0)
        die("setup failed");
    memset(sbuf, 0x5a, sizeof sbuf);
    char spec[128];
    snprintf(spec, sizeof spec, strchr(host, ':') ? "[%s]:0" : "%s:0", host);
    struct addr a;
    parse_addr(spec, &a);
    int lfd[3], modes[3] = {S_LISTEN_ECHO, S_LISTEN_SINK, S_LISTEN_SOURCE};
    for (int i = 0; i < 3; i++) {
        lfd[i] = listen_on(&a);
        sconns[lfd[i]].mode = modes[i];
        sepoll(EPOLL_CTL_ADD, lfd[i], EPOLLIN);
    }
    printf("ports %d %d %d\n", bound_port(lfd[0]), bound_port(lfd[1]), bound_port(lfd[2]));
    fflush(stdout);
    struct epoll_event evs[MAX_EVENTS];
    while (!stop_requested) {
        int n = epoll_wait(sepfd, evs, MAX_EVENTS, 500);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            uint32_t ev = evs[i].events;
            switch (sconns[fd].mode) {
            case S_LISTEN_ECHO: s_accept(fd, S_ECHO); break;
            case S_LISTEN_SINK: s_accept(fd, S_SINK); break;
            case S_LISTEN_SOURCE: s_accept(fd, S_SOURCE); break;
            case S_ECHO: s_echo(fd, ev); break;
            case S_SINK: s_sink(fd); break;
            case S_SOURCE: s_source(fd, ev); break;
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------- client setup */

struct opts {
    struct addr proxy, target;
    int direct;
    int conns;
    double seconds;
    int open_concurrency;
    double open_timeout;
    int up;
    uint64_t bytes;
};

enum cstate { C_FREE, C_CONNECTING, C_READ_RESP, C_OPEN, C_PING, C_DONE };

struct cconn {
    int fd;
    int state;
    uint64_t t_start, t_open;
    char resp[1024];
    size_t resp_len;
    size_t trailing; /* bytes after the 200 head that belong to the tunnel */
    uint64_t sent, recv, acked, target;
    uint8_t ackbuf[8];
    size_t ack_off;
    /* hold's open loop: bytes due but not yet written, bytes back not yet a
     * whole echo, echoes answered */
    uint64_t owed, back, answered;
};

static int cepfd;
static struct cconn *cc;
static int ncc;
static const char *first_error;
static char req[1024];
static size_t req_len;
/* One extra request header line (no CRLF), e.g. Proxy-Authorization; or NULL. */
static const char *extra_header;
static uint8_t cbuf[BULK_CHUNK];

static void cepoll(int op, int i, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)i};
    if (epoll_ctl(cepfd, op, cc[i].fd, &ev) != 0 && op != EPOLL_CTL_DEL)
        die("epoll_ctl: %s", strerror(errno));
}

static void note_error(const char *what)
{
    if (!first_error)
        first_error = what;
}

static void cclose(int i)
{
    if (cc[i].fd >= 0)
        close(cc[i].fd);
    cc[i].fd = -1;
    cc[i].state = C_FREE;
}

/* Start one tunnel: a non-blocking connect to the proxy (or, direct, to the
 * target). Returns 0, or -1 with the error noted. */
static int c_start(const struct opts *o, int i)
{
    const struct addr *a = o->direct ? &o->target : &o->proxy;
    struct cconn *c = &cc[i];
    memset(c, 0, sizeof *c);
    c->t_start = now_ns();
    c->fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        note_error("socket() failed (descriptors exhausted?)");
        c->state = C_FREE;
        return -1;
    }
    set_nodelay(c->fd);
    if (connect(c->fd, (const struct sockaddr *)&a->ss, a->len) != 0 && errno != EINPROGRESS) {
        note_error(errno == EADDRNOTAVAIL ? "connect: no ephemeral port" : "connect failed");
        cclose(i);
        return -1;
    }
    c->state = C_CONNECTING;
    cepoll(EPOLL_CTL_ADD, i, EPOLLOUT);
    return 0;
}

/* Drive one tunnel through TCP connect, the CONNECT request and the 200.
 * Returns 1 once the tunnel is open (state C_OPEN), 0 while in progress,
 * -1 on failure (noted, not yet closed). */
static int c_setup(const struct opts *o, int i, uint32_t ev)
{
    struct cconn *c = &cc[i];
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (ev & EPOLLERR)) {
            note_error(err == ECONNREFUSED ? "connection refused" : "connect failed");
            return -1;
        }
        if (o->direct) {
            c->state = C_OPEN;
            c->t_open = now_ns();
            return 1;
        }
        /* The request fits any fresh send buffer, so one write suffices. */
        if (write(c->fd, req, req_len) != (ssize_t)req_len) {
            note_error("CONNECT request write failed");
            return -1;
        }
        c->state = C_READ_RESP;
        cepoll(EPOLL_CTL_MOD, i, EPOLLIN);
        return 0;
    }
    if (c->state != C_READ_RESP)
        return 1;
    ssize_t n = read(c->fd, c->resp + c->resp_len, sizeof c->resp - 1 - c->resp_len);
    if (n < 0 && errno == EAGAIN)
        return 0;
    if (n <= 0) {
        note_error(n == 0 ? "proxy closed before answering CONNECT" : "read error before 200");
        return -1;
    }
    c->resp_len += (size_t)n;
    c->resp[c->resp_len] = 0;
    char *end = memmem(c->resp, c->resp_len, "\r\n\r\n", 4);
    if (!end) {
        if (c->resp_len >= sizeof c->resp - 1) {
            note_error("CONNECT response head too long");
            return -1;
        }
        return 0;
    }
    if (strncmp(c->resp, "HTTP/1.", 7) != 0 || strncmp(c->resp + 8, " 200", 4) != 0) {
        /* Keep the first refusal's status line: it says which limit the proxy hit. */
        static char status[96];
        if (!first_error) {
            size_t n = strcspn(c->resp, "\r\n\"\\");
            snprintf(status, sizeof status, "CONNECT answered: %.*s", (int)(n < 60 ? n : 60), c->resp);
            note_error(status);
        }
        return -1;
    }
    c->trailing = c->resp_len - (size_t)(end + 4 - c->resp);
    c->state = C_OPEN;
    c->t_open = now_ns();
    return 1;
}

static void build_request(const struct opts *o)
{
    int n = snprintf(req, sizeof req, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s%s\r\n", o->target.text,
                     o->target.text, extra_header ? extra_header : "", extra_header ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof req) {
        fprintf(stderr, "request head too long\n");
        exit(2);
    }
    req_len = (size_t)n;
}

static void client_init(const struct opts *o, int slots)
{
    raise_nofile();
    cepfd = epoll_create1(0);
    ncc = slots;
    cc = calloc((size_t)slots, sizeof *cc);
    if (cepfd < 0 || !cc)
        die("setup failed");
    for (int i = 0; i < slots; i++)
        cc[i].fd = -1;
    build_request(o);
    memset(cbuf, 0xa5, sizeof cbuf);
}

static void print_error_field(void)
{
    if (first_error)
        printf(", \"first_error\": \"%s\"", first_error);
    else
        printf(", \"first_error\": null");
}

/* Open every slot at once and wait until all are open; for bulk, where the
 * measurement starts only when every tunnel carries bytes. */
static int open_all(const struct opts *o, double timeout_s)
{
    for (int i = 0; i < ncc; i++)
        if (c_start(o, i) != 0)
            return -1;
    int open = 0;
    uint64_t deadline = now_ns() + (uint64_t)(timeout_s * 1e9);
    struct epoll_event evs[MAX_EVENTS];
    while (open < ncc) {
        if (now_ns() > deadline) {
            note_error("timed out opening tunnels");
            return -1;
        }
        int n = epoll_wait(cepfd, evs, MAX_EVENTS, 100);
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            int r = c_setup(o, i, evs[k].events);
            if (r < 0)
                return -1;
            if (r == 1)
                open++;
        }
    }
    return 0;
}

/* -------------------------------------------------------------- bulk */

static int bulk_up_event(int i, uint32_t ev, int finishing)
{
    struct cconn *c = &cc[i];
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        ssize_t n = read(c->fd, c->ackbuf + c->ack_off, sizeof c->ackbuf - c->ack_off);
        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            note_error("tunnel closed during upload");
            return -1;
        }
        if (n > 0) {
            c->ack_off += (size_t)n;
            if (c->ack_off == sizeof c->ackbuf) {
                memcpy(&c->acked, c->ackbuf, sizeof c->acked);
                c->ack_off = 0;
            }
        }
    }
    if (ev & EPOLLOUT) {
        size_t want = BULK_CHUNK;
        if (finishing) {
            /* Stop on an ACK_UNIT boundary so the sink's last ack covers it. */
            if (c->target == 0)
                c->target = (c->sent + ACK_UNIT - 1) / ACK_UNIT * ACK_UNIT;
            if (c->target - c->sent < want)
                want = (size_t)(c->target - c->sent);
            if (want == 0) {
                cepoll(EPOLL_CTL_MOD, i, EPOLLIN);
                return 0;
            }
        }
        ssize_t w = write(c->fd, cbuf, want);
        if (w < 0 && errno != EAGAIN) {
            note_error("write failed during upload");
            return -1;
        }
        if (w > 0)
            c->sent += (uint64_t)w;
    }
    return 0;
}

static int bulk_down_event(int i, uint64_t *bytes)
{
    struct cconn *c = &cc[i];
    ssize_t n = bulk_recv(c->fd, cbuf, sizeof cbuf);
    if (n == 0 || (n < 0 && errno != EAGAIN)) {
        note_error("tunnel closed during download");
        return -1;
    }
    if (n > 0)
        *bytes += (uint64_t)n;
    return 0;
}

static int cmd_bulk(const struct opts *o)
{
    client_init(o, o->conns);
    int ok = open_all(o, 15.0) == 0;
    uint64_t bytes = 0, t0 = now_ns(), t_end = t0;
    uint64_t deadline = t0 + (uint64_t)(o->seconds * 1e9);
    struct epoll_event evs[MAX_EVENTS];
    if (ok)
        for (int i = 0; i < ncc; i++)
            cepoll(EPOLL_CTL_MOD, i, o->up ? EPOLLIN | EPOLLOUT : EPOLLIN);
    /* After the deadline an upload still waits (bounded) for its last ack. */
    uint64_t hard = deadline + 20ull * 1000000000ull;
    while (ok) {
        uint64_t t = now_ns();
        int finishing = t >= deadline;
        if (!o->up && finishing)
            break;
        if (t >= hard) {
            note_error("upload acknowledgements did not arrive in time");
            ok = 0;
            break;
        }
        if (o->up && finishing) {
            int done = 1;
            for (int i = 0; i < ncc; i++)
                if (!cc[i].target || cc[i].acked < cc[i].target)
                    done = 0;
            if (done)
                break;
        }
        int n = epoll_wait(cepfd, evs, MAX_EVENTS, 50);
        for (int k = 0; k < n && ok; k++) {
            int i = (int)evs[k].data.u32;
            int r = o->up ? bulk_up_event(i, evs[k].events, finishing)
                          : bulk_down_event(i, &bytes);
            if (r < 0)
                ok = 0;
        }
    }
    t_end = now_ns();
    if (o->up) {
        bytes = 0;
        for (int i = 0; i < ncc; i++)
            bytes += cc[i].acked;
    }
    double secs = (double)(t_end - t0) / 1e9;
    printf("{\"mode\": \"bulk\", \"dir\": \"%s\", \"conns\": %d, \"ok\": %s, \"bytes\": %llu, "
           "\"seconds\": %.6f, \"mb_per_s\": %.3f",
           o->up ? "up" : "down", o->conns, ok ? "true" : "false", (unsigned long long)bytes,
           secs, secs > 0 ? (double)bytes / secs / 1e6 : 0.0);
    print_error_field();
    printf("}\n");
    return ok ? 0 : 1;
}

/* -------------------------------------------------------------- rate */

static int cmd_rate(const struct opts *o)
{
    client_init(o, o->conns);
    struct lat setup = {0}, cycle = {0};
    uint64_t done = 0, errors = 0, t0 = now_ns();
    uint64_t deadline = t0 + (uint64_t)(o->seconds * 1e9);
    /* In-flight cycles get a short, bounded grace after the deadline. */
    uint64_t hard = deadline + 2ull * 1000000000ull;
    int active = 0;
    for (int i = 0; i < ncc; i++)
        if (c_start(o, i) == 0)
            active++;
        else
            errors++;
    struct epoll_event evs[MAX_EVENTS];
    while (active > 0 && now_ns() < hard) {
        int n = epoll_wait(cepfd, evs, MAX_EVENTS, 50);
        uint64_t t = now_ns();
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            struct cconn *c = &cc[i];
            int failed = 0, finished = 0;
            if (c->state != C_PING) {
                int r = c_setup(o, i, evs[k].events);
                if (r < 0)
                    failed = 1;
                else if (r == 1) {
                    if (write(c->fd, cbuf, ECHO_BYTES) != ECHO_BYTES)
                        failed = 1;
                    c->state = C_PING;
                    c->recv = 0;
                    cepoll(EPOLL_CTL_MOD, i, EPOLLIN);
                }
            } else {
                ssize_t r = read(c->fd, cbuf, ECHO_BYTES - c->recv);
                if (r > 0) {
                    c->recv += (uint64_t)r;
                    finished = c->recv == ECHO_BYTES;
                } else if (r == 0 || errno != EAGAIN) {
                    note_error("tunnel closed before the echo came back");
                    failed = 1;
                }
            }
            if (!failed && !finished)
                continue;
            uint64_t t_open = c->t_open, t_start = c->t_start;
            cepoll(EPOLL_CTL_DEL, i, 0);
            cclose(i);
            active--;
            if (failed)
                errors++;
            else if (t <= deadline) {
                done++;
                lat_push(&setup, t_open - t_start);
                lat_push(&cycle, t - t_start);
            }
            if (t < deadline && c_start(o, i) == 0)
                active++;
            else if (t < deadline)
                errors++;
        }
    }
    lat_sort(&setup);
    lat_sort(&cycle);
    double secs = o->seconds;
    printf("{\"mode\": \"rate\", \"conns\": %d, \"tunnels\": %llu, \"errors\": %llu, "
           "\"seconds\": %.3f, \"tunnels_per_s\": %.1f, \"setup_p50_us\": %.1f, "
           "\"setup_p99_us\": %.1f, \"cycle_p50_us\": %.1f, \"cycle_p99_us\": %.1f",
           o->conns, (unsigned long long)done, (unsigned long long)errors, secs,
           (double)done / secs, lat_pct_us(&setup, 50), lat_pct_us(&setup, 99),
           lat_pct_us(&cycle, 50), lat_pct_us(&cycle, 99));
    print_error_field();
    printf("}\n");
    return done > 0 ? 0 : 1;
}

/* -------------------------------------------------------------- hold */

/* One tunnel is open end to end once a 64-byte ping came back through it. */
static int hold_event(const struct opts *o, int i, uint32_t ev)
{
    struct cconn *c = &cc[i];
    if (c->state != C_PING) {
        int r = c_setup(o, i, ev);
        if (r <= 0)
            return r;
        if (write(c->fd, cbuf, ECHO_BYTES) != ECHO_BYTES) {
            note_error("ping write failed");
            return -1;
        }
        c->state = C_PING;
        c->recv = 0;
        cepoll(EPOLL_CTL_MOD, i, EPOLLIN);
        return 0;
    }
    ssize_t r = read(c->fd, cbuf, ECHO_BYTES - c->recv);
    if (r == 0 || (r < 0 && errno != EAGAIN)) {
        note_error("tunnel closed before the ping came back");
        return -1;
    }
    if (r > 0)
        c->recv += (uint64_t)r;
    if (c->recv < ECHO_BYTES)
        return 0;
    c->state = C_DONE;
    cepoll(EPOLL_CTL_DEL, i, 0);
    return 1;
}

static void hold_open(const struct opts *o, int *held, int *failed, double *secs)
{
    uint64_t t0 = now_ns(), deadline = t0 + (uint64_t)(o->open_timeout * 1e9);
    int next = 0, inflight = 0;
    struct epoll_event evs[MAX_EVENTS];
    *held = *failed = 0;
    while ((next < ncc || inflight > 0) && now_ns() < deadline) {
        while (next < ncc && inflight < o->open_concurrency) {
            if (c_start(o, next++) == 0)
                inflight++;
            else
                (*failed)++;
        }
        int n = epoll_wait(cepfd, evs, MAX_EVENTS, 50);
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            int r = hold_event(o, i, evs[k].events);
            if (r == 0)
                continue;
            inflight--;
            if (r == 1) {
                (*held)++;
            } else {
                cepoll(EPOLL_CTL_DEL, i, 0);
                cclose(i);
                (*failed)++;
            }
        }
    }
    *secs = (double)(now_ns() - t0) / 1e9;
}

/* Sequential 64-byte round trips through one held tunnel: rounds of them,
 * or as many as fit in max_s seconds (a slow proxy must not stall the run).
 * With first_s > 0 the round trips started in the first first_s seconds are
 * also reported on their own ("first_*": the start of a burst). */
static void hold_rtt(int idx, int rounds, double max_s, double first_s)
{
    struct lat l = {0}, first = {0};
    int errors = 0;
    int fd = cc[idx].fd;
    uint64_t t0 = now_ns();
    uint64_t deadline = t0 + (uint64_t)(max_s * 1e9);
    uint64_t first_end = t0 + (uint64_t)(first_s * 1e9);
    for (int r = 0; r < rounds && errors == 0 && now_ns() < deadline; r++) {
        uint64_t t = now_ns();
        if (write(fd, cbuf, ECHO_BYTES) != ECHO_BYTES) {
            errors++;
            break;
        }
        size_t got = 0;
        while (got < ECHO_BYTES) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, 5000) != 1) {
                errors++;
                break;
            }
            ssize_t n = read(fd, cbuf, ECHO_BYTES - got);
            if (n == 0 || (n < 0 && errno != EAGAIN)) {
                errors++;
                break;
            }
            if (n > 0)
                got += (size_t)n;
        }
        if (got == ECHO_BYTES) {
            lat_push(&l, now_ns() - t);
            if (t < first_end)
                lat_push(&first, now_ns() - t);
        }
    }
    lat_sort(&l);
    lat_sort(&first);
    printf("{\"mode\": \"rtt\", \"rounds\": %zu, \"errors\": %d", l.n, errors);
    print_lats("rtt", &l);
    if (first_s > 0) {
        printf(", \"first_s\": %.3f, \"first_rounds\": %zu", first_s, first.n);
        print_lats("first", &first);
    }
    printf("}\n");
    fflush(stdout);
    free(l.v);
    free(first.v);
}

/* Open-loop round trips, as wrk2 measures to correct coordinated omission:
 * one 64-byte echo every 1/rate seconds on a fixed schedule, echo k through
 * held tunnel k mod n, sent when due whether or not earlier ones came back
 * (the echo server answers in order, so a tunnel's replies are its sends in
 * FIFO order). Each latency runs from the echo's *scheduled* send time to its
 * reply: a stall counts against every echo due during it, as it would for a
 * client with its own pace, where a closed loop (hold_rtt) counts it once.
 * The probe's own lateness counts too; its worst is reported apart
 * ("send_late_max_us"). Replies still missing drain_s after the last send
 * are "lost". */
static void hold_open_rtt(double rate, double max_s, double first_s)
{
    const double drain_s = 5.0;
    int idx[MAX_EVENTS], nt = 0;
    for (int i = 0; i < ncc && nt < MAX_EVENTS; i++)
        if (cc[i].state == C_DONE) {
            idx[nt++] = i;
            cc[i].owed = cc[i].back = cc[i].answered = 0;
            cepoll(EPOLL_CTL_ADD, i, EPOLLIN);
        }
    /* A sleeping probe must wake on time, or its own lateness is what it
     * measures: the default 50 us timer slack, and (worse) a CPU-bound task
     * on the probe's core that a waking SCHED_OTHER task does not preempt
     * until its slice ends (sends ms late on a shared core). SCHED_FIFO for
     * the measurement only (root or CAP_SYS_NICE; "realtime" says if it took). */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    struct sched_param fifo = {.sched_priority = 1}, other = {.sched_priority = 0};
    int policy = sched_getscheduler(0), raised = 0;
    int realtime = policy == SCHED_FIFO || policy == SCHED_RR;
    if (policy == SCHED_OTHER)
        realtime = raised = sched_setscheduler(0, SCHED_FIFO, &fifo) == 0;
    uint64_t period = (uint64_t)(1e9 / rate), total = (uint64_t)(rate * max_s);
    uint64_t t0 = now_ns() + 1000000; /* 1 ms to set up, so the first echo is not late */
    uint64_t first_end = t0 + (uint64_t)(first_s * 1e9);
    uint64_t drain_end = t0 + total * period + (uint64_t)(drain_s * 1e9);
    uint64_t next = 0, done = 0, late_max = 0;
    struct lat l = {0}, first = {0};
    int errors = 0;
    struct epoll_event evs[MAX_EVENTS];
    while (nt > 0 && done < total && errors == 0) {
        uint64_t now = now_ns();
        if (now >= drain_end)
            break;
        for (; next < total && t0 + next * period <= now; next++) {
            struct cconn *c = &cc[idx[next % (uint64_t)nt]];
            c->owed += ECHO_BYTES;
            if (now - (t0 + next * period) > late_max)
                late_max = now - (t0 + next * period);
        }
        for (int j = 0; j < nt; j++) {
            struct cconn *c = &cc[idx[j]];
            while (c->owed > 0) { /* more than one echo only when a full send buffer held them back */
                size_t len = c->owed < BULK_CHUNK ? (size_t)c->owed : BULK_CHUNK;
                ssize_t w = write(c->fd, cbuf, len);
                if (w < 0 && errno != EAGAIN)
                    errors++;
                if (w <= 0)
                    break;
                c->owed -= (uint64_t)w;
            }
        }
        uint64_t wake = next < total ? t0 + next * period : drain_end;
        uint64_t wait = wake > now ? wake - now : 0;
        struct timespec ts = {.tv_sec = (time_t)(wait / 1000000000u), .tv_nsec = (long)(wait % 1000000000u)};
        int n = epoll_pwait2(cepfd, evs, MAX_EVENTS, &ts, NULL);
        uint64_t back = now_ns();
        for (int k = 0; k < n; k++) {
            int j = 0;
            while (j < nt && idx[j] != (int)evs[k].data.u32)
                j++;
            struct cconn *c = &cc[idx[j]];
            ssize_t r = read(c->fd, cbuf, sizeof cbuf);
            if (r == 0 || (r < 0 && errno != EAGAIN)) {
                errors++;
                continue;
            }
            if (r < 0)
                continue;
            c->back += (uint64_t)r;
            for (; c->back >= ECHO_BYTES; c->back -= ECHO_BYTES, c->answered++, done++) {
                uint64_t due = t0 + ((uint64_t)j + c->answered * (uint64_t)nt) * period;
                lat_push(&l, back - due);
                if (due < first_end)
                    lat_push(&first, back - due);
            }
        }
    }
    if (raised)
        sched_setscheduler(0, SCHED_OTHER, &other);
    for (int j = 0; j < nt; j++)
        cepoll(EPOLL_CTL_DEL, idx[j], 0);
    lat_sort(&l);
    lat_sort(&first);
    printf("{\"mode\": \"open\", \"rate\": %.1f, \"tunnels\": %d, \"sent\": %llu, \"rounds\": %zu, "
           "\"lost\": %llu, \"errors\": %d, \"realtime\": %s, \"send_late_max_us\": %.1f",
           rate, nt, (unsigned long long)next, l.n, (unsigned long long)(next - done), errors,
           realtime ? "true" : "false", (double)late_max / 1000.0);
    print_lats("rtt", &l);
    if (first_s > 0) {
        printf(", \"first_s\": %.3f, \"first_rounds\": %zu", first_s, first.n);
        print_lats("first", &first);
    }
    printf("}\n");
    fflush(stdout);
    free(l.v);
    free(first.v);
}

/* How many held tunnels the proxy has not closed: a proxy that drops idle
 * tunnels must not get credit for the memory it saved that way. */
static void hold_alive(void)
{
    int alive = 0;
    for (int i = 0; i < ncc; i++) {
        if (cc[i].state != C_DONE)
            continue;
        char b;
        ssize_t n = recv(cc[i].fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0 && errno == EAGAIN)
            alive++;
    }
    printf("{\"mode\": \"alive\", \"alive\": %d}\n", alive);
    fflush(stdout);
}

static int cmd_hold(const struct opts *o)
{
    client_init(o, o->conns);
    int held, failed;
    double secs;
    hold_open(o, &held, &failed, &secs);
    printf("{\"mode\": \"hold\", \"requested\": %d, \"held\": %d, \"failed\": %d, "
           "\"open_seconds\": %.3f",
           o->conns, held, failed, secs);
    print_error_field();
    printf("}\n");
    fflush(stdout);
    /* Measure through a tunnel from the middle of the set, not the first. */
    int probe = -1, seen = 0;
    for (int i = 0; i < ncc; i++)
        if (cc[i].state == C_DONE && seen++ == held / 2)
            probe = i;
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        int rounds;
        double max_s = 10, first_s = 0;
        double rate;
        if (sscanf(line, "rtt %d %lf %lf", &rounds, &max_s, &first_s) >= 1 && probe >= 0)
            hold_rtt(probe, rounds, max_s, first_s);
        else if (sscanf(line, "open %lf %lf %lf", &rate, &max_s, &first_s) >= 2 && rate > 0 && probe >= 0)
            hold_open_rtt(rate, max_s, first_s);
        else if (strncmp(line, "alive", 5) == 0)
            hold_alive();
        else if (strncmp(line, "quit", 4) == 0)
            break;
        else {
            printf("{\"mode\": \"error\", \"error\": \"unknown command or no tunnel\"}\n");
            fflush(stdout);
        }
    }
    return 0;
}

/* --------------------------------------------------------- integrity */

static uint64_t prng_state = 0x9e3779b97f4a7c15ull;

static void prng_fill(uint8_t *p, size_t n)
{
    for (size_t i = 0; i + 8 <= n; i += 8) {
        prng_state ^= prng_state << 13;
        prng_state ^= prng_state >> 7;
        prng_state ^= prng_state << 17;
        memcpy(p + i, &prng_state, 8);
    }
}

static int cmd_integrity(const struct opts *o)
{
    client_init(o, 1);
    static uint8_t out[BULK_CHUNK];
    struct sha256 s_sent, s_recv;
    sha256_init(&s_sent);
    sha256_init(&s_recv);
    uint64_t total = o->bytes / 8 * 8, sent = 0, recv = 0, t0 = now_ns();
    size_t out_len = 0, out_off = 0;
    int ok = open_all(o, 15.0) == 0;
    if (ok && cc[0].trailing) {
        note_error("echo server spoke first");
        ok = 0;
    }
    if (ok)
        cepoll(EPOLL_CTL_MOD, 0, EPOLLIN | EPOLLOUT);
    int fd = cc[0].fd;
    struct epoll_event evs[4];
    while (ok && recv < total) {
        int n = epoll_wait(cepfd, evs, 4, 10000);
        if (n == 0) {
            note_error("no progress for 10 s");
            ok = 0;
        }
        for (int k = 0; k < n && ok; k++) {
            if (evs[k].events & EPOLLOUT && sent < total) {
                if (out_off == out_len) {
                    out_len = total - sent < sizeof out ? (size_t)(total - sent) : sizeof out;
                    prng_fill(out, out_len);
                    sha256_update(&s_sent, out, out_len);
                    out_off = 0;
                }
                ssize_t w = write(fd, out + out_off, out_len - out_off);
                if (w < 0 && errno != EAGAIN) {
                    note_error("write failed");
                    ok = 0;
                } else if (w > 0) {
                    out_off += (size_t)w;
                    sent += (uint64_t)w;
                    if (sent == total)
                        cepoll(EPOLL_CTL_MOD, 0, EPOLLIN);
                }
            }
            if (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t r = read(fd, cbuf, sizeof cbuf);
                if (r == 0 || (r < 0 && errno != EAGAIN)) {
                    note_error("tunnel closed before every byte came back");
                    ok = 0;
                } else if (r > 0) {
                    sha256_update(&s_recv, cbuf, (size_t)r);
                    recv += (uint64_t)r;
                }
            }
        }
    }
    char hs[65], hr[65];
    sha256_hex(&s_sent, hs);
    sha256_hex(&s_recv, hr);
    double secs = (double)(now_ns() - t0) / 1e9;
    int match = ok && recv == total && strcmp(hs, hr) == 0;
    printf("{\"mode\": \"integrity\", \"bytes\": %llu, \"sent\": %llu, \"received\": %llu, "
           "\"seconds\": %.3f, \"sent_sha256\": \"%s\", \"received_sha256\": \"%s\", "
           "\"match\": %s",
           (unsigned long long)total, (unsigned long long)sent, (unsigned long long)recv, secs,
           hs, hr, match ? "true" : "false");
    print_error_field();
    printf("}\n");
    return match ? 0 : 1;
}

/* -------------------------------------------------------------- main */

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen serve [--host 127.0.0.1]\n"
            "       loadgen bulk|rate|hold|integrity --proxy HOST:PORT|none --target HOST:PORT\n"
            "               [--conns N] [--seconds S] [--dir up|down] [--bytes B]\n"
            "               [--open-concurrency K] [--open-timeout S] [--max-seconds S]\n"
            "               [--discard trunc|copy] [--header 'Name: value']\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *cmd = argv[1], *proxy = NULL, *target = NULL, *host = "127.0.0.1";
    struct opts o = {.conns = 1, .seconds = 3, .open_concurrency = 256, .open_timeout = 60,
                     .up = 0, .bytes = 256ull << 20};
    unsigned max_seconds = 600;
    for (int i = 2; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        i++;
        if (!strcmp(k, "--proxy")) proxy = v;
        else if (!strcmp(k, "--target")) target = v;
        else if (!strcmp(k, "--host")) host = v;
        else if (!strcmp(k, "--conns")) o.conns = atoi(v);
        else if (!strcmp(k, "--seconds")) o.seconds = atof(v);
        else if (!strcmp(k, "--dir")) o.up = !strcmp(v, "up");
        else if (!strcmp(k, "--bytes")) o.bytes = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--open-concurrency")) o.open_concurrency = atoi(v);
        else if (!strcmp(k, "--open-timeout")) o.open_timeout = atof(v);
        else if (!strcmp(k, "--max-seconds")) max_seconds = (unsigned)atoi(v);
        else if (!strcmp(k, "--discard")) discard_trunc = !strcmp(v, "trunc");
        else if (!strcmp(k, "--header")) extra_header = v;
        else usage();
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm(max_seconds);
    if (!strcmp(cmd, "serve")) {
        /* Only the server stops gracefully; a client just dies on SIGTERM. */
        signal(SIGTERM, on_term);
        signal(SIGINT, on_term);
        return cmd_serve(host);
    }
    if (!target || !proxy || o.conns < 1)
        usage();
    parse_addr(target, &o.target);
    o.direct = !strcmp(proxy, "none");
    if (!o.direct)
        parse_addr(proxy, &o.proxy);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(cmd, "bulk")) return cmd_bulk(&o);
    if (!strcmp(cmd, "rate")) return cmd_rate(&o);
    if (!strcmp(cmd, "hold")) return cmd_hold(&o);
    if (!strcmp(cmd, "integrity")) return cmd_integrity(&o);
    usage();
    return 2;
}
