/* A preloaded library that, like MKL or an OpenMP runtime, calls dlsym from
 * its constructor and from inside a function it interposes, so that the
 * shim's dlsym is entered re-entrantly and early. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>

typedef int (*launch_fn)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *,
                         void **, void **);
static launch_fn next_launch;

__attribute__((constructor)) static void early(void) {
  /* Before main, before the shim has done anything. */
  (void)dlsym(RTLD_NEXT, "malloc");
  (void)dlsym(RTLD_DEFAULT, "cuLaunchKernel");
}

int cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned smem, void *stream, void **params, void **extra) {
  if (!next_launch) next_launch = (launch_fn)dlsym(RTLD_NEXT, "cuLaunchKernel");
  return next_launch(f, gx, gy, gz, bx, by, bz, smem, stream, params, extra);
}
