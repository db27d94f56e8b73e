/* Asks the driver for occupancy: loads the PTX file argv[1], then for each
 * line "KERNEL BLOCK DYNAMIC_SMEM" on stdin prints
 * "KERNEL BLOCK DYNAMIC_SMEM RESULT BLOCKS_PER_SM". Links only libdl. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef int CUresult;
typedef void *H;

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  void *lib = dlopen("libcuda.so.1", RTLD_NOW);
  if (!lib) { printf("dlopen_failed %s\n", dlerror()); return 2; }
  CUresult (*cuInit)(unsigned) = dlsym(lib, "cuInit");
  CUresult (*cuDevicePrimaryCtxRetain)(H *, int) = dlsym(lib, "cuDevicePrimaryCtxRetain");
  CUresult (*cuCtxSetCurrent)(H) = dlsym(lib, "cuCtxSetCurrent");
  CUresult (*cuModuleLoad)(H *, const char *) = dlsym(lib, "cuModuleLoad");
  CUresult (*cuModuleGetFunction)(H *, H, const char *) = dlsym(lib, "cuModuleGetFunction");
  CUresult (*cuOccupancy)(int *, H, int, size_t) = dlsym(lib, "cuOccupancyMaxActiveBlocksPerMultiprocessor");
  H ctx, mod, f;
  if (cuInit(0) || cuDevicePrimaryCtxRetain(&ctx, 0) || cuCtxSetCurrent(ctx)) return 3;
  CUresult r = cuModuleLoad(&mod, argv[1]);
  if (r) { printf("module_load %d\n", r); return 4; }
  char name[128];
  int block;
  size_t smem;
  while (scanf("%127s %d %zu", name, &block, &smem) == 3) {
    int n = -1;
    r = cuModuleGetFunction(&f, mod, name);
    if (r == 0) r = cuOccupancy(&n, f, block, smem);
    printf("%s %d %zu %d %d\n", name, block, smem, r, n);
  }
  return 0;
}
