/* A "library" that reports, from its constructor, the credentials of whoever loads it:
 * observer's libssl helper must load a target's library as nobody, with no capabilities. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((constructor)) static void spy(void) {
    const char *out = getenv("SPY_OUT");
    if (!out) return;
    FILE *f = fopen(out, "w");
    if (!f) return;
    fprintf(f, "uid %d %d gid %d %d groups %d\n", (int)getuid(), (int)geteuid(), (int)getgid(),
            (int)getegid(), getgroups(0, NULL));
    FILE *status = fopen("/proc/self/status", "r");
    char line[256];
    while (status && fgets(line, sizeof line, status)) {
        if (!strncmp(line, "Cap", 3) || !strncmp(line, "NoNewPrivs:", 11)) fputs(line, f);
    }
    if (status) fclose(status);
    fclose(f);
}
