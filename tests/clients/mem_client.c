/* A CUDA program linked against libcuda that allocates memory every way the
 * driver offers, for the shim's memory tests. Modes (argv[1]):
 *   kinds   one allocation of each kind; prints "allocated", waits for a
 *           line on stdin, frees them all (the stream-ordered ones on
 *           another stream than they were made on), prints "freed", waits
 *           for a line, exits
 *   loop N  N × (cuMemAlloc 4 KiB, cuMemFree); prints ns per pair
 *   limit   allocates 512, 256 and 256 MiB, then 1 MiB (printing each
 *           result), prints cuMemGetInfo's free and total, waits for a line
 *           on stdin, tries 1 MiB again, prints its result, exits
 * Every line it prints is "<what> <value>"; exits 0 unless a call that must
 * succeed failed. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int CUresult;
typedef void *H;
typedef unsigned long long CUdeviceptr;
CUresult cuInit(unsigned);
CUresult cuDeviceGet(int *, int);
CUresult cuDevicePrimaryCtxRetain(H *, int);
CUresult cuCtxSetCurrent(H);
CUresult cuStreamCreate(H *, unsigned);
CUresult cuStreamSynchronize(H);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemAllocPitch_v2(CUdeviceptr *, size_t *, size_t, size_t, unsigned);
CUresult cuMemAllocManaged(CUdeviceptr *, size_t, unsigned);
CUresult cuMemAllocAsync(CUdeviceptr *, size_t, H);
CUresult cuDeviceGetDefaultMemPool(H *, int);
CUresult cuMemAllocFromPoolAsync(CUdeviceptr *, size_t, H, H);
CUresult cuMemFreeAsync(CUdeviceptr, H);
CUresult cuMemCreate(unsigned long long *, size_t, const void *, unsigned long long);
CUresult cuMemRelease(unsigned long long);
CUresult cuMemHostAlloc(void **, size_t, unsigned);
CUresult cuMemAllocHost_v2(void **, size_t);
CUresult cuMemFreeHost(void *);
CUresult cuMemGetInfo_v2(size_t *, size_t *);

/* CUmemAllocationProp: pinned, on device `id`. */
struct prop {
  unsigned type, handle_types, location_type;
  int location_id;
  void *win32;
  unsigned char compression, gpu_direct_rdma, usage;
  unsigned char reserved[5];
};

static int failures;
#define CHECK(call)                                                            \
  do {                                                                         \
    CUresult r_ = (call);                                                      \
    if (r_) { fprintf(stderr, "%s failed: %d\n", #call, r_); failures++; }     \
  } while (0)
#define MIB ((size_t)1 << 20)

static void wait_line(void) {
  char buf[64];
  fflush(stdout);
  if (!fgets(buf, sizeof buf, stdin)) exit(3);
}

static int dev;

static void setup(void) {
  H ctx;
  CHECK(cuInit(0));
  CHECK(cuDeviceGet(&dev, 0));
  CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
  CHECK(cuCtxSetCurrent(ctx));
}

static void kinds(void) {
  CUdeviceptr plain, pitched, managed, ordered, pooled;
  size_t pitch = 0;
  unsigned long long physical;
  void *host, *host2;
  H made_on, freed_on, pool;
  struct prop p;
  memset(&p, 0, sizeof p);
  p.type = 1;          /* CU_MEM_ALLOCATION_TYPE_PINNED */
  p.location_type = 1; /* CU_MEM_LOCATION_TYPE_DEVICE */
  p.location_id = dev;
  CHECK(cuStreamCreate(&made_on, 1));
  CHECK(cuStreamCreate(&freed_on, 1));
  CHECK(cuMemAlloc_v2(&plain, 1 * MIB));
  CHECK(cuMemAllocPitch_v2(&pitched, &pitch, 1000, 100, 4));
  CHECK(cuMemAllocManaged(&managed, 2 * MIB, 1 /* CU_MEM_ATTACH_GLOBAL */));
  CHECK(cuMemAllocAsync(&ordered, 3 * MIB, made_on));
  CHECK(cuDeviceGetDefaultMemPool(&pool, dev));
  CHECK(cuMemAllocFromPoolAsync(&pooled, 4 * MIB, pool, made_on));
  CHECK(cuMemCreate(&physical, 2 * MIB, &p, 0));
  CHECK(cuMemHostAlloc(&host, 5 * MIB, 0));
  CHECK(cuMemAllocHost_v2(&host2, 1 * MIB));
  CHECK(cuStreamSynchronize(made_on));
  printf("pitch %zu\nallocated %d\n", pitch, failures);
  wait_line();
  CHECK(cuMemFreeAsync(ordered, freed_on));
  CHECK(cuMemFreeAsync(pooled, freed_on));
  CHECK(cuStreamSynchronize(freed_on));
  CHECK(cuMemRelease(physical));
  CHECK(cuMemFreeHost(host));
  CHECK(cuMemFreeHost(host2));
  CHECK(cuMemFree_v2(managed));
  CHECK(cuMemFree_v2(pitched));
  CHECK(cuMemFree_v2(plain));
  printf("freed %d\n", failures);
  wait_line();
}

static void limit(void) {
  CUdeviceptr a, b, c, d;
  size_t free_b = 0, total_b = 0;
  CHECK(cuMemAlloc_v2(&a, 512 * MIB));
  CHECK(cuMemAlloc_v2(&b, 256 * MIB));
  CHECK(cuMemAllocAsync(&c, 256 * MIB, NULL));
  printf("over %d\n", cuMemAlloc_v2(&d, 1 * MIB));
  CHECK(cuMemGetInfo_v2(&free_b, &total_b));
  printf("free %zu\ntotal %zu\n", free_b, total_b);
  wait_line();
  printf("again %d\n", cuMemAlloc_v2(&d, 1 * MIB));
}

static void alloc_loop(long n) {
  struct timespec t0, t1;
  CUdeviceptr p;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long i = 0; i < n; i++) {
    CHECK(cuMemAlloc_v2(&p, 4096));
    CHECK(cuMemFree_v2(p));
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
  printf("ns_per_pair %.1f\n", ns / n);
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  setup();
  if (!strcmp(argv[1], "kinds")) kinds();
  else if (!strcmp(argv[1], "limit")) limit();
  else if (!strcmp(argv[1], "loop") && argc > 2) alloc_loop(atol(argv[2]));
  else return 2;
  fflush(stdout);
  return failures ? 1 : 0;
}
