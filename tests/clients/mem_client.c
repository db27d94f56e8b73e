/* A CUDA program linked against libcuda that allocates memory every way the
 * driver offers, for the shim's memory tests. Modes (argv[1]):
 *   kinds   one allocation of each kind; prints "allocated", waits for a
 *           line on stdin, frees them all (the stream-ordered ones on
 *           another stream than they were made on), prints "freed", waits
 *           for a line, exits
 *   loop N  N × (cuMemAlloc 4 KiB, cuMemFree); prints ns per pair
 *   vmm     what PyTorch's expandable segments do: reserves address space,
 *           creates three 2 MiB physical allocations (printing each
 *           result; the third may meet a limit), maps two side by side,
 *           copies across the seam before and after cuMemSetAccess
 *           (printing both results and whether the bytes came back),
 *           copies past the mappings, prints "mapped", waits for a line;
 *           releases the first while mapped, copies through it, prints
 *           "released", waits; unmaps both, releases the second, frees
 *           the reservation, prints "unmapped", waits, exits
 *   limit   allocates 512, 256 and 256 MiB, then 1 MiB (printing each
 *           result), prints cuMemGetInfo's free and total, waits for a line
 *           on stdin, tries 1 MiB again, prints its result, exits
 *   fill M  cuMemAlloc M MiB at a time until one fails; prints how many
 *           went and the failure's result, then holds them until killed
 * Every line it prints is "<what> <value>"; exits 0 unless a call that must
 * succeed failed. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
CUresult cuMemGetAllocationGranularity(size_t *, const void *, int);
CUresult cuMemAddressReserve(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
CUresult cuMemAddressFree(CUdeviceptr, size_t);
CUresult cuMemMap(CUdeviceptr, size_t, size_t, unsigned long long, unsigned long long);
CUresult cuMemUnmap(CUdeviceptr, size_t);
CUresult cuMemSetAccess(CUdeviceptr, size_t, const void *, size_t);
CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void *, size_t);
CUresult cuMemcpyDtoH_v2(void *, CUdeviceptr, size_t);

/* CUmemAllocationProp: pinned, on device `id`. */
struct prop {
  unsigned type, handle_types, location_type;
  int location_id;
  void *win32;
  unsigned char compression, gpu_direct_rdma, usage;
  unsigned char reserved[5];
};

/* CUmemAccessDesc: read-write for device `id`. */
struct access {
  unsigned location_type;
  int location_id;
  unsigned flags;
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

static void device_prop(struct prop *p) {
  memset(p, 0, sizeof *p);
  p->type = 1;          /* CU_MEM_ALLOCATION_TYPE_PINNED */
  p->location_type = 1; /* CU_MEM_LOCATION_TYPE_DEVICE */
  p->location_id = dev;
}

static void kinds(void) {
  CUdeviceptr plain, pitched, managed, ordered, pooled;
  size_t pitch = 0;
  unsigned long long physical;
  void *host, *host2;
  H made_on, freed_on, pool;
  struct prop p;
  device_prop(&p);
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

/* Copies 8 KiB across the seam at `seam` and back: 1 when the bytes match. */
static int roundtrip(CUdeviceptr seam, CUresult *r) {
  static unsigned char out[8192], in[8192];
  for (size_t i = 0; i < sizeof out; i++) out[i] = (unsigned char)(i * 7 + 1);
  memset(in, 0, sizeof in);
  *r = cuMemcpyHtoD_v2(seam - 4096, out, sizeof out);
  if (*r) return 0;
  *r = cuMemcpyDtoH_v2(in, seam - 4096, sizeof in);
  return !*r && !memcmp(in, out, sizeof out);
}

static void vmm(void) {
  struct prop p;
  struct access a = {1, 0, 3}; /* device, PROT_READWRITE */
  size_t g = 0;
  CUdeviceptr va;
  unsigned long long h[3];
  CUresult r;
  unsigned char byte = 0;
  device_prop(&p);
  a.location_id = dev;
  CHECK(cuMemGetAllocationGranularity(&g, &p, 0));
  printf("granularity %zu\n", g);
  CHECK(cuMemAddressReserve(&va, 8 * g, 0, 0, 0));
  CUresult made[3];
  for (int i = 0; i < 3; i++) printf("create%d %d\n", i, made[i] = cuMemCreate(&h[i], g, &p, 0));
  CHECK(cuMemMap(va, g, 0, h[0], 0));
  CHECK(cuMemMap(va + g, g, 0, h[1], 0));
  printf("before_access %d\n", roundtrip(va + g, &r) ? 0 : r);
  CHECK(cuMemSetAccess(va, 2 * g, &a, 1));
  printf("roundtrip %d\n", roundtrip(va + g, &r));
  printf("past_mappings %d\n", cuMemcpyHtoD_v2(va + 2 * g, &byte, 1));
  printf("mapped %d\n", failures);
  wait_line();
  CHECK(cuMemRelease(h[0]));
  printf("still_mapped %d\n", roundtrip(va + g, &r));
  printf("released %d\n", failures);
  wait_line();
  CHECK(cuMemUnmap(va, 2 * g));
  CHECK(cuMemRelease(h[1]));
  if (!made[2]) CHECK(cuMemRelease(h[2]));
  CHECK(cuMemAddressFree(va, 8 * g));
  printf("unmapped %d\n", failures);
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

static void fill(long mib) {
  CUdeviceptr p;
  CUresult r;
  int n = 0;
  while (!(r = cuMemAlloc_v2(&p, (size_t)mib * MIB))) n++;
  printf("filled %d\nrefused %d\n", n, r);
  fflush(stdout);
  for (;;) pause();
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
  else if (!strcmp(argv[1], "vmm")) vmm();
  else if (!strcmp(argv[1], "fill") && argc > 2) fill(atol(argv[2]));
  else if (!strcmp(argv[1], "loop") && argc > 2) alloc_loop(atol(argv[2]));
  else return 2;
  fflush(stdout);
  return failures ? 1 : 0;
}
