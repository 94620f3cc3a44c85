/*
 * connload: connection rate against a server that answers and closes
 * (daytime, time), so that the client is not what limits the benchmark.
 *
 *   connload HOST PORT CONCURRENCY SECONDS
 *
 * Keeps CONCURRENCY connections in flight: each connects, reads until the
 * server closes, and is replaced by a new one. Prints one JSON line:
 * connections completed a second (with at least one byte received),
 * failures, and this process's CPU use.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

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

static struct sockaddr_in target;
static int epfd;

static void start(long *got) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) { perror("socket"); exit(1); }
    if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0 &&
        errno != EINPROGRESS) {
        perror("connect");
        exit(1);
    }
    got[fd] = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: connload HOST PORT CONCURRENCY SECONDS\n");
        return 2;
    }
    target.sin_family = AF_INET;
    target.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &target.sin_addr);
    int n = atoi(argv[3]);
    double seconds = atof(argv[4]);
    static long got[65536];
    epfd = epoll_create1(0);
    for (int i = 0; i < n; i++) start(got);
    long done = 0, failed = 0;
    double begin = now(), cpu0 = cpu(), end = begin + seconds;
    struct epoll_event events[256];
    char buffer[4096];
    while (now() < end) {
        int ready = epoll_wait(epfd, events, 256, 100);
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            ssize_t r = read(fd, buffer, sizeof buffer);
            if (r > 0) { got[fd] += r; continue; }
            if (r < 0 && errno == EAGAIN) continue;
            if (r == 0 && got[fd] > 0) done++; else failed++;
            close(fd);
            start(got);
        }
    }
    double elapsed = now() - begin;
    printf("{\"conns_per_s\": %.1f, \"failed\": %ld, \"client_cpu\": %.3f}\n",
           done / elapsed, failed, (cpu() - cpu0) / elapsed);
    return 0;
}
