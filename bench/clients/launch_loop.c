/* N launches in a loop, linked against libcuda: prints the loop's ns per
 * launch and the process's resident memory half-way and at the end.
 * Usage: launch_loop N */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int CUresult;
typedef void *H;
CUresult cuInit(unsigned);
CUresult cuDevicePrimaryCtxRetain(H *, int);
CUresult cuCtxSetCurrent(H);
CUresult cuModuleLoadData(H *, const void *);
CUresult cuModuleGetFunction(H *, H, const char *);
CUresult cuLaunchKernel(H, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, H, void **, void **);

static const char *PTX = ".version 7.0\n.target sm_70\n.address_size 64\n.visible .entry k() { ret; }\n";

static long kib(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long v = -1;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, field, strlen(field))) v = atol(line + strlen(field));
  if (f) fclose(f);
  return v;
}

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 1000000;
  H ctx, mod, fn;
  if (cuInit(0) || cuDevicePrimaryCtxRetain(&ctx, 0) || cuCtxSetCurrent(ctx) || cuModuleLoadData(&mod, PTX) ||
      cuModuleGetFunction(&fn, mod, "k"))
    return 1;
  struct timespec a, b;
  long half_rss = 0;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; i++) {
    if (cuLaunchKernel(fn, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL)) return 1;
    if (i == n / 2) half_rss = kib("VmRSS:");
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
  printf("launches %ld ns_per_launch %.2f rss_half_kib %ld rss_end_kib %ld hwm_kib %ld\n", n, ns, half_rss,
         kib("VmRSS:"), kib("VmHWM:"));
  return 0;
}
