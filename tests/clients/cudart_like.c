/* A client that finds the driver the way cudart does: dlopen("libcuda.so.1"),
 * dlsym(h, "cuGetProcAddress_v2"), then every other entry point through
 * cuGetProcAddress. It runs kernels, then probes error paths, and prints one
 * "key value" line per result so the same program can be run on gpusim (in
 * tests) and on NVIDIA's driver (the GPU check) and the outputs compared.
 * No CUDA headers needed: the few types are declared here. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *H;
typedef uint64_t CUdeviceptr;
typedef CUresult (*GetProc)(const char *, void **, int, uint64_t, int *);

static GetProc get_proc;

/* CUlaunchConfig */
typedef struct {
  unsigned grid[3], block[3], shared_mem_bytes;
  H stream;
  void *attrs;
  unsigned num_attrs;
} LaunchConfig;
static void *lib;

static void *sym(const char *name, int version) {
  void *p = NULL;
  int status = -1;
  CUresult r = get_proc(name, &p, version, 0, &status);
  if (r != 0 || !p) {
    printf("resolve_failed %s %d %d\n", name, r, status);
    exit(3);
  }
  return p;
}

/* Which exported symbol a cuGetProcAddress answer is. */
static void which(const char *base, int version, const char **names) {
  void *p = NULL;
  int status = -1;
  CUresult r = get_proc(base, &p, version, 0, &status);
  const char *hit = "none";
  for (; *names; names++)
    if (p && dlsym(lib, *names) == p) hit = *names;
  printf("procaddr %s@%d %d %d %s\n", base, version, r, status, hit);
}

static const char *PTX =
    "// gpusim: kernel=spin cycles_param=0 regs=8\n"
    "// gpusim: kernel=small block_ns=1000 regs=32\n"
    ".version 7.0\n.target sm_70\n.address_size 64\n"
    ".visible .entry spin(.param .u64 spin_p0)\n{\n"
    " .reg .pred %p<2>;\n .reg .b64 %rd<6>;\n"
    " ld.param.u64 %rd1, [spin_p0];\n mov.u64 %rd2, %clock64;\n"
    "$L:\n mov.u64 %rd3, %clock64;\n sub.s64 %rd4, %rd3, %rd2;\n"
    " setp.lt.s64 %p1, %rd4, %rd1;\n @%p1 bra $L;\n ret;\n}\n"
    ".visible .entry small() .maxntid 256, 1, 1\n{\n ret;\n}\n";

int main(void) {
  lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) { printf("dlopen_failed %s\n", dlerror()); return 2; }
  get_proc = (GetProc)dlsym(lib, "cuGetProcAddress_v2");
  if (!get_proc) { printf("no_cuGetProcAddress_v2\n"); return 2; }

  CUresult (*cuInit)(unsigned) = sym("cuInit", 12000);
  CUresult (*cuDriverGetVersion)(int *) = sym("cuDriverGetVersion", 12000);
  CUresult (*cuDeviceGet)(CUdevice *, int) = sym("cuDeviceGet", 12000);
  CUresult (*cuDeviceGetAttribute)(int *, int, CUdevice) = sym("cuDeviceGetAttribute", 12000);
  CUresult (*cuDevicePrimaryCtxRetain)(H *, CUdevice) = sym("cuDevicePrimaryCtxRetain", 12000);
  CUresult (*cuCtxSetCurrent)(H) = sym("cuCtxSetCurrent", 12000);
  CUresult (*cuCtxPopCurrent)(H *) = sym("cuCtxPopCurrent", 12000);
  CUresult (*cuCtxCreate)(H *, unsigned, CUdevice) = sym("cuCtxCreate", 3020);
  CUresult (*cuCtxDestroy)(H) = sym("cuCtxDestroy", 12000);
  CUresult (*cuModuleLoadData)(H *, const void *) = sym("cuModuleLoadData", 12000);
  CUresult (*cuModuleGetFunction)(H *, H, const char *) = sym("cuModuleGetFunction", 12000);
  CUresult (*cuFuncGetAttribute)(int *, int, H) = sym("cuFuncGetAttribute", 12000);
  CUresult (*cuOccupancy)(int *, H, int, size_t) = sym("cuOccupancyMaxActiveBlocksPerMultiprocessor", 12000);
  CUresult (*cuLaunchKernel)(H, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, H, void **,
                             void **) = sym("cuLaunchKernel", 12000);
  CUresult (*cuStreamCreate)(H *, unsigned) = sym("cuStreamCreate", 12000);
  CUresult (*cuStreamSynchronize)(H) = sym("cuStreamSynchronize", 12000);
  CUresult (*cuEventCreate)(H *, unsigned) = sym("cuEventCreate", 12000);
  CUresult (*cuEventRecord)(H, H) = sym("cuEventRecord", 12000);
  CUresult (*cuStreamBeginCapture)(H, int) = sym("cuStreamBeginCapture", 12000);
  CUresult (*cuStreamEndCapture)(H, H *) = sym("cuStreamEndCapture", 12000);
  CUresult (*cuStreamIsCapturing)(H, int *) = sym("cuStreamIsCapturing", 12000);
  CUresult (*cuGraphInstantiate)(H *, H, unsigned long long) = sym("cuGraphInstantiate", 12000);
  CUresult (*cuGraphLaunch)(H, H) = sym("cuGraphLaunch", 12000);
  CUresult (*cuStreamDestroy)(H) = sym("cuStreamDestroy", 12000);
  CUresult (*cuLaunchKernelEx)(const LaunchConfig *, H, void **, void **) = sym("cuLaunchKernelEx", 12000);
  CUresult (*cuGetExportTable)(const void **, const void *) = sym("cuGetExportTable", 12000);
  CUresult (*cuEventDestroy)(H) = sym("cuEventDestroy", 12000);
  CUresult (*cuEventElapsedTime)(float *, H, H) = sym("cuEventElapsedTime", 12000);
  CUresult (*cuMemAlloc)(CUdeviceptr *, size_t) = sym("cuMemAlloc", 12000);
  CUresult (*cuMemFree)(CUdeviceptr) = sym("cuMemFree", 12000);
  CUresult (*cuMemcpyHtoD)(CUdeviceptr, const void *, size_t) = sym("cuMemcpyHtoD", 12000);
  CUresult (*cuMemcpyDtoH)(void *, CUdeviceptr, size_t) = sym("cuMemcpyDtoH", 12000);

  int v = 0;
  printf("init %d\n", cuInit(0));
  cuDriverGetVersion(&v);
  printf("driver_version %d\n", v);
  CUdevice dev;
  printf("device_get %d\n", cuDeviceGet(&dev, 0));
  printf("device_get_bad %d\n", cuDeviceGet(&dev, 4096));
  cuDeviceGet(&dev, 0);
  cuDeviceGetAttribute(&v, 16, dev);
  printf("sm_count %d\n", v);
  H ctx;
  printf("ctx_retain %d\n", cuDevicePrimaryCtxRetain(&ctx, dev));
  cuCtxSetCurrent(ctx);

  H mod, spin, small, missing = NULL;
  printf("module_load %d\n", cuModuleLoadData(&mod, PTX));
  printf("module_load_garbage %d\n", cuModuleLoadData(&missing, "this is not a kernel image"));
  printf("get_function %d\n", cuModuleGetFunction(&spin, mod, "spin"));
  cuModuleGetFunction(&small, mod, "small");
  printf("get_function_unknown %d\n", cuModuleGetFunction(&missing, mod, "no_such_kernel"));
  cuFuncGetAttribute(&v, 0, small);
  printf("small_max_threads %d\n", v);

  /* Occupancy of the spin kernel, to compare with the calculator. */
  int regs = 0;
  cuFuncGetAttribute(&regs, 4, spin);
  printf("spin_regs %d\n", regs);
  int blocks[] = {32, 64, 96, 128, 256, 512, 768, 1024};
  size_t smem[] = {0, 4096, 40000};
  for (int i = 0; i < 8; i++)
    for (int j = 0; j < 3; j++) {
      int n = -1;
      CUresult r = cuOccupancy(&n, spin, blocks[i], smem[j]);
      printf("occupancy %d %zu %d %d\n", blocks[i], smem[j], r, n);
    }

  /* Time kernels: 1, 2 and 4 waves of 8-block SMs at 256 threads. */
  H stream, e0, e1;
  cuStreamCreate(&stream, 0);
  cuEventCreate(&e0, 0);
  cuEventCreate(&e1, 0);
  cuDeviceGetAttribute(&v, 16, dev);
  int sms = v;
  uint64_t cycles = 1000000;
  void *params[] = {&cycles};
  for (int waves = 1; waves <= 4; waves *= 2) {
    cuEventRecord(e0, stream);
    CUresult r = cuLaunchKernel(spin, sms * 8 * waves, 1, 1, 256, 1, 1, 0, stream, params, NULL);
    cuEventRecord(e1, stream);
    cuStreamSynchronize(stream);
    float ms = 0;
    cuEventElapsedTime(&ms, e0, e1);
    printf("launch_waves %d %d %.3f\n", waves, r, ms);
  }

  /* cuLaunchKernelEx runs the same one-wave kernel. */
  LaunchConfig lc = {{sms * 8, 1, 1}, {256, 1, 1}, 0, stream, NULL, 0};
  cuEventRecord(e0, stream);
  CUresult rex = cuLaunchKernelEx(&lc, spin, params, NULL);
  cuEventRecord(e1, stream);
  cuStreamSynchronize(stream);
  float exms = 0;
  cuEventElapsedTime(&exms, e0, e1);
  printf("launch_ex %d %.3f\n", rex, exms);

  /* Stream capture: three kernels become a graph that replays them. */
  H cstream, graph = NULL, exec = NULL;
  int capturing = -1;
  cuStreamCreate(&cstream, 1);
  printf("capture_begin %d\n", cuStreamBeginCapture(cstream, 2 /* relaxed */));
  for (int i = 0; i < 3; i++) cuLaunchKernel(spin, sms * 8, 1, 1, 256, 1, 1, 0, cstream, params, NULL);
  cuStreamIsCapturing(cstream, &capturing);
  printf("capture_status %d\n", capturing);
  printf("capture_end %d\n", cuStreamEndCapture(cstream, &graph));
  printf("graph_instantiate %d\n", cuGraphInstantiate(&exec, graph, 0));
  cuEventRecord(e0, cstream);
  printf("graph_launch %d\n", cuGraphLaunch(exec, cstream));
  cuEventRecord(e1, cstream);
  cuStreamSynchronize(cstream);
  float gms = 0;
  cuEventElapsedTime(&gms, e0, e1);
  printf("graph_ms %.3f\n", gms);
  /* Synchronising a capturing stream is illegal and invalidates the capture. */
  cuStreamBeginCapture(cstream, 2);
  cuLaunchKernel(spin, 1, 1, 1, 32, 1, 1, 0, cstream, params, NULL);
  printf("capture_sync %d\n", cuStreamSynchronize(cstream));
  cuStreamIsCapturing(cstream, &capturing);
  printf("capture_status_after_sync %d\n", capturing);
  printf("capture_end_invalidated %d\n", cuStreamEndCapture(cstream, &graph));

  /* Error paths the real driver reports with specific codes. */
  printf("launch_block_too_big %d\n", cuLaunchKernel(spin, 1, 1, 1, 2048, 1, 1, 0, stream, params, NULL));
  printf("launch_over_maxntid %d\n", cuLaunchKernel(small, 1, 1, 1, 512, 1, 1, 0, stream, NULL, NULL));
  printf("launch_grid_zero %d\n", cuLaunchKernel(spin, 0, 1, 1, 32, 1, 1, 0, stream, params, NULL));
  H unrecorded;
  cuEventCreate(&unrecorded, 0);
  float ms;
  printf("elapsed_unrecorded %d\n", cuEventElapsedTime(&ms, unrecorded, e1));
  CUdeviceptr big;
  printf("alloc_too_much %d\n", cuMemAlloc(&big, (size_t)1 << 50));
  if (getenv("CLIENT_STALE_HANDLES")) {
    const void *table = NULL;
    char uuid[16] = {0};
    printf("export_table %d\n", cuGetExportTable(&table, uuid));
  }

  CUdeviceptr d;
  char in[64] = "gpusim round trip", back[64] = {0};
  printf("alloc %d\n", cuMemAlloc(&d, 64));
  cuMemcpyHtoD(d, in, 64);
  cuMemcpyDtoH(back, d, 64);
  printf("roundtrip %d\n", strcmp(in, back) == 0);
  printf("free %d\n", cuMemFree(d));

  H own;
  printf("ctx_create_v2 %d\n", cuCtxCreate(&own, 0, dev));
  printf("ctx_destroy %d\n", cuCtxDestroy(own));
  H popped;
  while (cuCtxPopCurrent(&popped) == 0) {
  }
  printf("alloc_no_context %d\n", cuMemAlloc(&d, 64));

  /* Stale and made-up handles: gpusim must answer with codes, never crash.
   * NVIDIA's driver may crash on these, so they run only when asked. */
  if (getenv("CLIENT_STALE_HANDLES")) {
    cuCtxSetCurrent(ctx);
    H s2, ev2;
    cuStreamCreate(&s2, 0);
    cuStreamDestroy(s2);
    printf("stream_sync_destroyed %d\n", cuStreamSynchronize(s2));
    printf("stream_destroy_twice %d\n", cuStreamDestroy(s2));
    cuEventCreate(&ev2, 0);
    cuEventDestroy(ev2);
    printf("event_record_destroyed %d\n", cuEventRecord(ev2, stream));
    printf("launch_bogus_function %d\n", cuLaunchKernel((H)0xdeadbeef, 1, 1, 1, 1, 1, 1, 0, stream, NULL, NULL));
    printf("set_current_bogus %d\n", cuCtxSetCurrent((H)0x1234));
    printf("free_bogus %d\n", cuMemFree(0x1000));
    printf("null_out_pointer %d\n", cuDeviceGet(NULL, 0));
    printf("copy_out_of_range %d\n", cuMemcpyHtoD(0x10, in, 64));
    H own2, mod2, f2;
    cuCtxCreate(&own2, 0, dev);
    cuModuleLoadData(&mod2, PTX);
    cuCtxDestroy(own2);
    printf("module_of_destroyed_context %d\n", cuModuleGetFunction(&f2, mod2, "spin"));
  }

  /* What cuGetProcAddress answers for versioned names. */
  const char *ctx_names[] = {"cuCtxCreate", "cuCtxCreate_v2", "cuCtxCreate_v3", "cuCtxCreate_v4", NULL};
  which("cuCtxCreate", 3020, ctx_names);
  which("cuCtxCreate", 11040, ctx_names);
  which("cuCtxCreate", 12080, ctx_names);
  const char *alloc_names[] = {"cuMemAlloc", "cuMemAlloc_v2", NULL};
  which("cuMemAlloc", 12000, alloc_names);
  const char *sync_names[] = {"cuCtxSynchronize", "cuCtxSynchronize_v2", NULL};
  which("cuCtxSynchronize", 12080, sync_names);
  which("cuCtxSynchronize", 13000, sync_names);
  const char *gpa_names[] = {"cuGetProcAddress", "cuGetProcAddress_v2", NULL};
  which("cuGetProcAddress", 12000, gpa_names);
  const char *none[] = {NULL};
  which("cuNoSuchFunction", 12000, none);
  which("cuLaunchKernelEx", 11000, none);
  printf("done 1\n");
  return 0;
}
