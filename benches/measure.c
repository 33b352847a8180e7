/* Run a command, then print its wall time and peak RSS:
 *
 *   measure RESULT_FILE PROG ARGS...
 *
 * writes "WALL_NS MAXRSS_KB EXIT_CODE CPU_NS\n" to RESULT_FILE (CPU_NS: user +
 * system time of the command and its waited-for children). The wall time is
 * taken with CLOCK_MONOTONIC around fork + exec + wait4, so it includes the
 * command's start-up but not the cost of whoever started `measure`. Peak RSS
 * is ru_maxrss from wait4(2), the number GNU time prints for %M. It has to
 * come from a small parent: Linux carries a process's RSS high-water mark
 * across exec, so a child forked from a 20 MB Python process reports at
 * least 20 MB whatever it runs.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: measure RESULT_FILE PROG ARGS...\n");
        return 2;
    }
    FILE *res = fopen(argv[1], "w");
    if (!res) {
        perror(argv[1]);
        return 2;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        execvp(argv[2], argv + 2);
        perror(argv[2]);
        _exit(127);
    }
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) {
        perror("wait4");
        return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long ns = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    long long cpu = (long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL +
                    (long long)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL;
    fprintf(res, "%lld %ld %d %lld\n", ns, ru.ru_maxrss, code, cpu);
    fclose(res);
    return 0;
}
