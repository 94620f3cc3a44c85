/*
 * echoload: a small epoll load generator for echo servers, so that the
 * client is not what limits a benchmark (one Python client process tops out
 * well below the servers it measures).
 *
 *   echoload HOST PORT CONNECTIONS SECONDS SIZE PREFIXLEN MODE [MAX]
 *
 * MODE is one of:
 *   lockstep: every connection sends SIZE bytes, waits for SIZE + PREFIXLEN
 *     bytes back, and again, for SECONDS;
 *   bulk: one stream written and read as fast as the server echoes it;
 *   connect: CONNECTIONS connections at once, each connects, reads until the
 *     server closes (at least SIZE bytes: a daytime or time reply), closes,
 *     and is replaced by a new one;
 *   udp: CONNECTIONS UDP sockets, each sends a SIZE-byte datagram and waits
 *     for the SIZE + PREFIXLEN-byte reply, and again (a datagram without a
 *     reply after 200 ms is counted lost and sent again).
 * MAX, if given, stops the run after that many messages or connections.
 * Prints one JSON line: messages, connections (or MB) per second, p50/p99
 * latency in microseconds, errors (or lost datagrams), and this process's
 * CPU use as a fraction of the run.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUCKETS 200000 /* 1 us buckets: latencies up to 200 ms */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec +
           r.ru_stime.tv_usec / 1e6;
}

struct conn {
    int fd;
    size_t got;   /* reply bytes received for the message in flight */
    double sent;  /* when it was sent */
};

static long histogram[BUCKETS + 1];

static long percentile(long total, double fraction) {
    long want = (long)(fraction * total), seen = 0;
    for (int i = 0; i <= BUCKETS; i++) {
        seen += histogram[i];
        if (seen > want) return i;
    }
    return BUCKETS;
}

static struct sockaddr_in address(const char *host, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "echoload: bad IPv4 address %s\n", host);
        exit(2);
    }
    return a;
}

static void report(long count, double elapsed, const char *unit, long errors,
                   double used) {
    printf("{\"rate\": %.1f, \"unit\": \"%s\", \"count\": %ld, \"p50_us\": %ld, "
           "\"p99_us\": %ld, \"errors\": %ld, \"client_cpu\": %.2f}\n",
           count / elapsed, unit, count, percentile(count, 0.50),
           percentile(count, 0.99), errors, used / elapsed);
}

static void record(double seconds) {
    long us = (long)(seconds * 1e6);
    histogram[us < 0 ? 0 : (us < BUCKETS ? us : BUCKETS)]++;
}

static int dial(const char *host, int port) {
    struct sockaddr_in a = address(host, port);
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("echoload: connect");
        exit(1);
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void sendAll(int fd, const char *data, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, data, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            perror("echoload: write");
            exit(1);
        }
        data += w;
        n -= (size_t)w;
    }
}

static int lockstep(const char *host, int port, int n, double seconds, size_t size,
                    size_t prefix, long max) {
    struct conn *conns = calloc(n, sizeof *conns);
    char *message = malloc(size), buffer[65536];
    memset(message, 'x', size);
    int ep = epoll_create1(0);
    for (int i = 0; i < n; i++) {
        conns[i].fd = dial(host, port);
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &e);
    }
    double cpu0 = cpu(), start = now(), end = start + seconds;
    long messages = 0;
    for (int i = 0; i < n; i++) {
        conns[i].sent = now();
        sendAll(conns[i].fd, message, size);
    }
    struct epoll_event events[256];
    double t = start;
    while (t < end && messages < max) {
        int k = epoll_wait(ep, events, 256, 100);
        t = now();
        for (int j = 0; j < k; j++) {
            struct conn *c = events[j].data.ptr;
            ssize_t r = read(c->fd, buffer, sizeof buffer);
            if (r <= 0) {
                fprintf(stderr, "echoload: server closed\n");
                return 1;
            }
            c->got += (size_t)r;
            if (c->got >= size + prefix) {
                if (c->got > size + prefix) {
                    fprintf(stderr, "echoload: more reply than asked for\n");
                    return 1;
                }
                record(t - c->sent);
                messages++;
                c->got = 0;
                c->sent = t;
                sendAll(c->fd, message, size);
            }
        }
    }
    double elapsed = now() - start, used = cpu() - cpu0;
    report(messages, elapsed, "msg/s", 0, used);
    return 0;
}

static int bulk(const char *host, int port, double seconds) {
    int fd = dial(host, port);
    static char out[65536], in[262144];
    memset(out, 'y', sizeof out);
    int ep = epoll_create1(0);
    struct epoll_event e = {.events = EPOLLIN | EPOLLOUT, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
    int nonblocking = 1;
    if (ioctl(fd, FIONBIO, &nonblocking) < 0) {
        perror("echoload: ioctl");
        return 1;
    }
    double cpu0 = cpu(), start = now(), end = start + seconds;
    long long received = 0;
    struct epoll_event events[4];
    while (now() < end) {
        int k = epoll_wait(ep, events, 4, 100);
        for (int j = 0; j < k; j++) {
            if (events[j].events & EPOLLOUT) {
                ssize_t w = write(fd, out, sizeof out);
                if (w < 0 && errno != EAGAIN) {
                    perror("echoload: write");
                    return 1;
                }
            }
            if (events[j].events & EPOLLIN) {
                ssize_t r;
                while ((r = read(fd, in, sizeof in)) > 0) received += r;
                if (r == 0) {
                    fprintf(stderr, "echoload: server closed\n");
                    return 1;
                }
            }
        }
    }
    double elapsed = now() - start, used = cpu() - cpu0;
    printf("{\"rate\": %.1f, \"unit\": \"MB/s\", \"count\": %lld, \"p50_us\": 0, "
           "\"p99_us\": 0, \"errors\": 0, \"client_cpu\": %.2f}\n",
           received / elapsed / 1e6, received, used / elapsed);
    return 0;
}

/* One connection of the connect mode: opened without blocking, read to EOF. */
static int opening(int ep, const struct sockaddr_in *a, struct conn *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        perror("echoload: socket");
        exit(1);
    }
    c->got = 0;
    c->sent = now();
    if (connect(c->fd, (const struct sockaddr *)a, sizeof *a) < 0 &&
        errno != EINPROGRESS) {
        close(c->fd);
        return -1;
    }
    struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
    return 0;
}

/* Open C again, counting failures; give up when most connections fail. */
static void reopen(int ep, const struct sockaddr_in *a, struct conn *c, long *errors,
                   long done) {
    while (opening(ep, a, c) < 0)
        if (++*errors > 1000 && *errors > done) {
            fprintf(stderr, "echoload: %ld connections failed\n", *errors);
            exit(1);
        }
}

static int connectRate(const char *host, int port, int n, double seconds, size_t least,
                       long max) {
    struct sockaddr_in a = address(host, port);
    struct conn *conns = calloc(n, sizeof *conns);
    char buffer[65536];
    int ep = epoll_create1(0);
    long done = 0, errors = 0;
    double cpu0 = cpu(), start = now(), end = start + seconds, t = start;
    for (int i = 0; i < n; i++) reopen(ep, &a, &conns[i], &errors, done);
    struct epoll_event events[256];
    while (t < end && done < max) {
        int k = epoll_wait(ep, events, 256, 100);
        t = now();
        for (int j = 0; j < k; j++) {
            struct conn *c = events[j].data.ptr;
            ssize_t r;
            while ((r = read(c->fd, buffer, sizeof buffer)) > 0) c->got += (size_t)r;
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r < 0 || c->got < least) errors++;
            else {
                record(t - c->sent);
                done++;
            }
            close(c->fd); /* also takes it out of the epoll set */
            if (errors > 1000 && errors > done) {
                fprintf(stderr, "echoload: %ld connections failed\n", errors);
                return 1;
            }
            reopen(ep, &a, c, &errors, done);
        }
    }
    double elapsed = now() - start, used = cpu() - cpu0;
    report(done, elapsed, "conn/s", errors, used);
    return 0;
}

static int datagrams(const char *host, int port, int n, double seconds, size_t size,
                     size_t prefix, long max) {
    struct sockaddr_in a = address(host, port);
    struct conn *conns = calloc(n, sizeof *conns);
    char *message = malloc(size), buffer[65536];
    memset(message, 'u', size);
    int ep = epoll_create1(0);
    for (int i = 0; i < n; i++) {
        conns[i].fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (conns[i].fd < 0 || connect(conns[i].fd, (struct sockaddr *)&a, sizeof a) < 0) {
            perror("echoload: udp socket");
            return 1;
        }
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &e);
    }
    long messages = 0, lost = 0;
    double cpu0 = cpu(), start = now(), end = start + seconds, t = start, swept = start;
    for (int i = 0; i < n; i++) {
        conns[i].sent = t;
        send(conns[i].fd, message, size, 0);
    }
    struct epoll_event events[256];
    while (t < end && messages < max) {
        int k = epoll_wait(ep, events, 256, 50);
        t = now();
        for (int j = 0; j < k; j++) {
            struct conn *c = events[j].data.ptr;
            ssize_t r;
            while ((r = recv(c->fd, buffer, sizeof buffer, 0)) >= 0) {
                if ((size_t)r != size + prefix) {
                    fprintf(stderr, "echoload: a %zd-byte reply, not %zu\n", r,
                            size + prefix);
                    return 1;
                }
                record(t - c->sent);
                messages++;
                c->sent = t;
                send(c->fd, message, size, 0);
            }
        }
        if (t - swept > 0.05) { /* resend what was lost */
            swept = t;
            for (int i = 0; i < n; i++)
                if (t - conns[i].sent > 0.2) {
                    lost++;
                    conns[i].sent = t;
                    send(conns[i].fd, message, size, 0);
                }
        }
    }
    double elapsed = now() - start, used = cpu() - cpu0;
    report(messages, elapsed, "msg/s", lost, used);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 8 && argc != 9) {
        fprintf(stderr,
                "usage: echoload HOST PORT CONNECTIONS SECONDS SIZE PREFIXLEN "
                "lockstep|bulk|connect|udp [MAX]\n");
        return 2;
    }
    long max = argc == 9 ? atol(argv[8]) : 100000000L;
    int port = atoi(argv[2]), n = atoi(argv[3]);
    double seconds = atof(argv[4]);
    size_t size = (size_t)atol(argv[5]), prefix = (size_t)atol(argv[6]);
    if (port <= 0 || n <= 0 || n > 4096 || seconds <= 0 || seconds > 60 || size == 0 ||
        size > 65536 || max <= 0) {
        fprintf(stderr, "echoload: arguments out of range\n");
        return 2;
    }
    if (strcmp(argv[7], "bulk") == 0) return bulk(argv[1], port, seconds);
    if (strcmp(argv[7], "connect") == 0)
        return connectRate(argv[1], port, n, seconds, size, max);
    if (strcmp(argv[7], "udp") == 0)
        return datagrams(argv[1], port, n, seconds, size, prefix, max);
    if (strcmp(argv[7], "lockstep") == 0)
        return lockstep(argv[1], port, n, seconds, size, prefix, max);
    fprintf(stderr, "echoload: unknown mode %s\n", argv[7]);
    return 2;
}
