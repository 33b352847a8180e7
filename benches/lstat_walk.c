/* The floor for a no-op build: lstat every entry under the given
 * directories, and nothing else. Prints the number of entries.
 *
 *   cc -O2 -pthread -o lstat_walk lstat_walk.c
 *   ./lstat_walk [-j THREADS] layers machines
 *
 * Per directory: openat + getdents64 (one reused buffer) + close; per entry:
 * one fstatat(AT_SYMLINK_NOFOLLOW) relative to the directory's fd (no path
 * strings, no allocation). With -j N (default 1), the subdirectories of the
 * given directories (e.g. every layers/X and machines/Y) are shared out to N
 * threads, the way lab spreads its roots over its worker threads.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

struct linux_dirent64 {
    unsigned long long d_ino;
    long long d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

#define BUF 65536

struct work {
    int parent;
    char *name;
};

static struct work *items;
static int n_items, next_item;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long total;
static int failed;

/* One getdents buffer per directory depth, per thread, allocated once. */
#define MAX_DEPTH 128
struct bufs {
    char *at[MAX_DEPTH];
};

static unsigned long walk(int dfd, struct bufs *bufs, int depth) {
    unsigned long n = 0;
    if (depth >= MAX_DEPTH) {
        fprintf(stderr, "too deep\n");
        failed = 1;
        return 0;
    }
    if (!bufs->at[depth])
        bufs->at[depth] = malloc(BUF);
    char *buf = bufs->at[depth];
    for (;;) {
        long got = syscall(SYS_getdents64, dfd, buf, BUF);
        if (got < 0) {
            perror("getdents64");
            failed = 1;
            break;
        }
        if (got == 0)
            break;
        for (long off = 0; off < got;) {
            struct linux_dirent64 *e = (struct linux_dirent64 *)(buf + off);
            off += e->d_reclen;
            const char *s = e->d_name;
            if (s[0] == '.' && (s[1] == 0 || (s[1] == '.' && s[2] == 0)))
                continue;
            struct stat st;
            if (fstatat(dfd, s, &st, AT_SYMLINK_NOFOLLOW) != 0) {
                perror(s);
                failed = 1;
                continue;
            }
            n++;
            if (S_ISDIR(st.st_mode)) {
                int sub = openat(dfd, s, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (sub < 0) {
                    perror(s);
                    failed = 1;
                    continue;
                }
                n += walk(sub, bufs, depth + 1);
                close(sub);
            }
        }
    }
    return n;
}

static void *worker(void *arg) {
    (void)arg;
    struct bufs bufs = {0};
    unsigned long n = 0;
    for (;;) {
        pthread_mutex_lock(&lock);
        int i = next_item < n_items ? next_item++ : -1;
        pthread_mutex_unlock(&lock);
        if (i < 0)
            break;
        int fd = openat(items[i].parent, items[i].name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
            perror(items[i].name);
            failed = 1;
            continue;
        }
        n += walk(fd, &bufs, 0);
        close(fd);
    }
    pthread_mutex_lock(&lock);
    total += n;
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = 1, first = 1;
    if (argc > 2 && strcmp(argv[1], "-j") == 0) {
        threads = atoi(argv[2]);
        first = 3;
    }
    if (threads < 1)
        threads = 1;
    int cap = 1024;
    items = malloc(cap * sizeof *items);
    char *buf = malloc(BUF);
    /* The given directories' own entries here; their subdirectories
     * become work items. */
    for (int a = first; a < argc; a++) {
        int fd = open(argv[a], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
            perror(argv[a]);
            return 2;
        }
        for (;;) {
            long got = syscall(SYS_getdents64, fd, buf, BUF);
            if (got <= 0)
                break;
            for (long off = 0; off < got;) {
                struct linux_dirent64 *e = (struct linux_dirent64 *)(buf + off);
                off += e->d_reclen;
                const char *s = e->d_name;
                if (s[0] == '.' && (s[1] == 0 || (s[1] == '.' && s[2] == 0)))
                    continue;
                struct stat st;
                if (fstatat(fd, s, &st, AT_SYMLINK_NOFOLLOW) != 0) {
                    perror(s);
                    return 2;
                }
                total++;
                if (S_ISDIR(st.st_mode)) {
                    if (n_items == cap)
                        items = realloc(items, (cap *= 2) * sizeof *items);
                    items[n_items].parent = fd;
                    items[n_items].name = strdup(s);
                    n_items++;
                }
            }
        }
    }
    if (threads == 1) {
        worker(NULL);
    } else {
        pthread_t t[threads];
        for (int i = 0; i < threads; i++)
            pthread_create(&t[i], NULL, worker, NULL);
        for (int i = 0; i < threads; i++)
            pthread_join(t[i], NULL);
    }
    printf("%lu\n", total);
    return failed;
}
