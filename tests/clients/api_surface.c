/* Calls the rest of the driver API surface gpusim implements, by exported
 * name (as cudarc and other dynamic loaders do), and prints "key value" lines.
 * Safe on NVIDIA's driver too: every call is valid or a documented error. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef void *H;
static void *lib;
#define F(ret, name, ...) ret (*name)(__VA_ARGS__) = dlsym(lib, #name)

static const char *PTX =
    "// gpusim: kernel=spin cycles_param=0 regs=8\n"
    ".version 7.0\n.target sm_70\n.address_size 64\n"
    ".visible .entry spin(.param .u64 spin_p0)\n{\n"
    " .reg .pred %p<2>;\n .reg .b64 %rd<6>;\n"
    " ld.param.u64 %rd1, [spin_p0];\n mov.u64 %rd2, %clock64;\n"
    "$L:\n mov.u64 %rd3, %clock64;\n sub.s64 %rd4, %rd3, %rd2;\n"
    " setp.lt.s64 %p1, %rd4, %rd1;\n @%p1 bra $L;\n ret;\n}\n";

int main(void) {
  lib = dlopen("libcuda.so.1", RTLD_NOW);
  if (!lib) { printf("dlopen_failed %s\n", dlerror()); return 2; }
  F(CUresult, cuInit, unsigned);
  F(CUresult, cuDeviceGet, int *, int);
  F(CUresult, cuDeviceGetCount, int *);
  F(CUresult, cuDeviceGetName, char *, int, int);
  F(CUresult, cuDeviceGetUuid_v2, unsigned char *, int);
  F(CUresult, cuDeviceTotalMem_v2, size_t *, int);
  F(CUresult, cuDeviceGetAttribute, int *, int, int);
  F(CUresult, cuDevicePrimaryCtxSetFlags_v2, int, unsigned);
  F(CUresult, cuDevicePrimaryCtxGetState, int, unsigned *, int *);
  F(CUresult, cuDevicePrimaryCtxRetain, H *, int);
  F(CUresult, cuDevicePrimaryCtxRelease_v2, int);
  F(CUresult, cuCtxCreate_v3, H *, void *, int, unsigned, int);
  F(CUresult, cuCtxCreate_v4, H *, void *, unsigned, int);
  F(CUresult, cuCtxDestroy_v2, H);
  F(CUresult, cuCtxGetCurrent, H *);
  F(CUresult, cuCtxSetCurrent, H);
  F(CUresult, cuCtxPushCurrent_v2, H);
  F(CUresult, cuCtxPopCurrent_v2, H *);
  F(CUresult, cuCtxGetDevice, int *);
  F(CUresult, cuCtxSynchronize, void);
  F(CUresult, cuModuleLoadDataEx, H *, const void *, unsigned, int *, void **);
  F(CUresult, cuModuleGetFunction, H *, H, const char *);
  F(CUresult, cuModuleUnload, H);
  F(CUresult, cuFuncGetName, const char **, H);
  F(CUresult, cuFuncGetAttribute, int *, int, H);
  F(CUresult, cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags, int *, H, int, size_t, unsigned);
  F(CUresult, cuMemGetInfo_v2, size_t *, size_t *);
  F(CUresult, cuMemAlloc_v2, uint64_t *, size_t);
  F(CUresult, cuMemFree_v2, uint64_t);
  F(CUresult, cuMemcpyHtoDAsync_v2, uint64_t, const void *, size_t, H);
  F(CUresult, cuMemcpyDtoHAsync_v2, void *, uint64_t, size_t, H);
  F(CUresult, cuMemcpyDtoD_v2, uint64_t, uint64_t, size_t);
  F(CUresult, cuStreamCreateWithPriority, H *, unsigned, int);
  F(CUresult, cuStreamGetPriority, H, int *);
  F(CUresult, cuCtxGetStreamPriorityRange, int *, int *);
  F(CUresult, cuStreamQuery, H);
  F(CUresult, cuStreamSynchronize, H);
  F(CUresult, cuStreamDestroy_v2, H);
  F(CUresult, cuEventCreate, H *, unsigned);
  F(CUresult, cuEventRecord, H, H);
  F(CUresult, cuEventQuery, H);
  F(CUresult, cuEventSynchronize, H);
  F(CUresult, cuEventElapsedTime, float *, H, H);
  F(CUresult, cuLaunchKernel, H, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, H, void **,
    void **);
  F(CUresult, cuGetErrorName, CUresult, const char **);
  F(CUresult, cuGetErrorString, CUresult, const char **);

  int n = 0, dev = 0, v = 0;
  printf("init %d\n", cuInit(0));
  cuDeviceGetCount(&n);
  printf("device_count %d\n", n);
  cuDeviceGet(&dev, 0);
  char name[256];
  printf("name_rc %d\n", cuDeviceGetName(name, sizeof name, dev));
  unsigned char uuid[16] = {0};
  cuDeviceGetUuid_v2(uuid, dev);
  int nonzero = 0;
  for (int i = 0; i < 16; i++) nonzero |= uuid[i];
  printf("uuid_nonzero %d\n", nonzero != 0);
  size_t total = 0;
  cuDeviceTotalMem_v2(&total, dev);
  printf("total_mem_gib %zu\n", total >> 30);
  int attrs[] = {1, 10, 12, 13, 39, 75, 76, 81, 82, 97, 106, 111};
  for (int i = 0; i < 12; i++) {
    cuDeviceGetAttribute(&v, attrs[i], dev);
    printf("attr_%d %d\n", attrs[i], v);
  }
  printf("attr_unknown %d\n", cuDeviceGetAttribute(&v, 99999, dev));

  unsigned flags = 99;
  int active = -1;
  printf("primary_set_flags %d\n", cuDevicePrimaryCtxSetFlags_v2(dev, 4 /* blocking sync */));
  cuDevicePrimaryCtxGetState(dev, &flags, &active);
  printf("primary_state %u %d\n", flags, active);
  H pctx;
  cuDevicePrimaryCtxRetain(&pctx, dev);
  cuDevicePrimaryCtxGetState(dev, &flags, &active);
  printf("primary_state_retained %u %d\n", flags, active);

  H c3, c4, cur, popped;
  printf("ctx_create_v3 %d\n", cuCtxCreate_v3(&c3, NULL, 0, 0, dev));
  cuCtxGetCurrent(&cur);
  printf("v3_is_current %d\n", cur == c3);
  printf("ctx_create_v4 %d\n", cuCtxCreate_v4(&c4, NULL, 0, dev));
  cuCtxPopCurrent_v2(&popped);
  printf("pop_returns_v4 %d\n", popped == c4);
  cuCtxGetCurrent(&cur);
  printf("then_v3_current %d\n", cur == c3);
  printf("push %d\n", cuCtxPushCurrent_v2(pctx));
  int cdev = -1;
  cuCtxGetDevice(&cdev);
  printf("ctx_device %d\n", cdev);
  cuCtxDestroy_v2(c4);
  cuCtxDestroy_v2(c3);
  cuCtxSetCurrent(pctx);

  H mod, fn;
  printf("load_ex %d\n", cuModuleLoadDataEx(&mod, PTX, 0, NULL, NULL));
  cuModuleGetFunction(&fn, mod, "spin");
  const char *fname = NULL;
  cuFuncGetName(&fname, fn);
  printf("func_name %s\n", fname ? fname : "(null)");
  cuFuncGetAttribute(&v, 4, fn);
  printf("func_regs %d\n", v);
  cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(&v, fn, 128, 0, 0);
  printf("occupancy_with_flags %d\n", v);

  size_t free0, free1, tot;
  cuMemGetInfo_v2(&free0, &tot);
  uint64_t a, b;
  cuMemAlloc_v2(&a, 1 << 20);
  cuMemAlloc_v2(&b, 1 << 20);
  cuMemGetInfo_v2(&free1, &tot);
  printf("mem_info_delta_mib %zu\n", (free0 - free1) >> 20);

  int least = 1, greatest = 1, prio = 1;
  cuCtxGetStreamPriorityRange(&least, &greatest);
  printf("priority_range %d %d\n", least, greatest);
  H s;
  cuStreamCreateWithPriority(&s, 1, greatest);
  cuStreamGetPriority(s, &prio);
  printf("stream_priority %d\n", prio == greatest);

  char in[4096], out[4096];
  for (int i = 0; i < 4096; i++) in[i] = (char)i;
  cuMemcpyHtoDAsync_v2(a, in, sizeof in, s);
  cuStreamSynchronize(s);
  cuMemcpyDtoD_v2(b, a, sizeof in);
  cuMemcpyDtoHAsync_v2(out, b, sizeof out, s);
  cuStreamSynchronize(s);
  printf("async_roundtrip %d\n", memcmp(in, out, sizeof in) == 0);

  /* A 20 ms kernel: queries see it running, then done. */
  H e0, e1;
  cuEventCreate(&e0, 0);
  cuEventCreate(&e1, 0);
  uint64_t cycles = 40000000; /* ~20 ms at 1.98 GHz */
  void *params[] = {&cycles};
  cuEventRecord(e0, s);
  cuLaunchKernel(fn, 1, 1, 1, 32, 1, 1, 0, s, params, NULL);
  cuEventRecord(e1, s);
  printf("stream_query_busy %d\n", cuStreamQuery(s));
  printf("event_query_busy %d\n", cuEventQuery(e1));
  float ms = 0;
  printf("elapsed_busy %d\n", cuEventElapsedTime(&ms, e0, e1));
  printf("event_sync %d\n", cuEventSynchronize(e1));
  printf("event_query_done %d\n", cuEventQuery(e1));
  printf("stream_query_done %d\n", cuStreamQuery(s));
  cuEventElapsedTime(&ms, e0, e1);
  printf("elapsed_ms %.1f\n", ms);
  printf("ctx_sync %d\n", cuCtxSynchronize());

  const char *es = NULL;
  cuGetErrorName(2, &es);
  printf("error_name %s\n", es ? es : "(null)");
  cuGetErrorString(2, &es);
  printf("error_string %s\n", es ? es : "(null)");
  printf("error_name_unknown %d\n", cuGetErrorName(12345, &es));

  cuMemFree_v2(a);
  cuMemFree_v2(b);
  cuStreamDestroy_v2(s);
  printf("unload %d\n", cuModuleUnload(mod));
  if (getenv("CLIENT_STALE_HANDLES")) /* NVIDIA's driver may crash on a stale handle */
    printf("unload_twice %d\n", cuModuleUnload(mod));
  printf("release %d\n", cuDevicePrimaryCtxRelease_v2(dev));
  cuDevicePrimaryCtxGetState(dev, &flags, &active);
  printf("primary_state_released %u %d\n", flags, active);
  printf("done 1\n");
  return 0;
}
