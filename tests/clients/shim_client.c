/* A CUDA program linked directly against libcuda (-lcuda), for the shim's
 * tests. Modes (argv[1]):
 *   launches N          N kernel launches on one stream
 *   capture N K G       N launches, K captured into a graph, the graph launched G times
 *   threads T M         T threads, each launching M kernels on its own stream
 *   fork N M            the child launches N kernels, then the parent M
 *   cooperative N       N cooperative launches, then N graph launches of a 1-kernel graph
 *   inflight N          launch N 10 ms kernels and exit without waiting for them
 *   seconds S [GRID]    launch 1 ms kernels of GRID blocks (default 132) for S
 *                       seconds, each waited for; prints the count
 * Prints "ok" and exits 0 when every call succeeded. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef void *H;
CUresult cuInit(unsigned);
CUresult cuDeviceGet(int *, int);
CUresult cuDevicePrimaryCtxRetain(H *, int);
CUresult cuCtxSetCurrent(H);
CUresult cuModuleLoadData(H *, const void *);
CUresult cuModuleGetFunction(H *, H, const char *);
CUresult cuLaunchKernel(H, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, H, void **, void **);
CUresult cuLaunchCooperativeKernel(H, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, H, void **);
CUresult cuStreamCreate(H *, unsigned);
CUresult cuStreamSynchronize(H);
CUresult cuStreamBeginCapture_v2(H, int);
CUresult cuStreamEndCapture(H, H *);
CUresult cuStreamIsCapturing(H, int *);
CUresult cuGraphInstantiateWithFlags(H *, H, unsigned long long);
CUresult cuGraphLaunch(H, H);

static const char *PTX =
    "// gpusim: kernel=spin cycles_param=0 regs=8\n"
    ".version 7.0\n.target sm_70\n.address_size 64\n"
    ".visible .entry spin(.param .u64 spin_p0)\n{\n"
    " .reg .pred %p<2>;\n .reg .b64 %rd<6>;\n"
    " ld.param.u64 %rd1, [spin_p0];\n mov.u64 %rd2, %clock64;\n"
    "$L:\n mov.u64 %rd3, %clock64;\n sub.s64 %rd4, %rd3, %rd2;\n"
    " setp.lt.s64 %p1, %rd4, %rd1;\n @%p1 bra $L;\n ret;\n}\n";

static H ctx, fn;
static int failures;
#define CHECK(call)                                                            \
  do {                                                                         \
    CUresult r_ = (call);                                                      \
    if (r_) { fprintf(stderr, "%s failed: %d\n", #call, r_); __sync_fetch_and_add(&failures, 1); } \
  } while (0)

static void setup(void) {
  int dev;
  H mod;
  CHECK(cuInit(0));
  CHECK(cuDeviceGet(&dev, 0));
  CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
  CHECK(cuCtxSetCurrent(ctx));
  CHECK(cuModuleLoadData(&mod, PTX));
  CHECK(cuModuleGetFunction(&fn, mod, "spin"));
}

static unsigned grid = 132;
static void launch(H stream, uint64_t cycles) {
  void *params[] = {&cycles};
  CHECK(cuLaunchKernel(fn, grid, 1, 1, 128, 1, 1, 0, stream, params, NULL));
}

static void launches(int n) {
  H s;
  CHECK(cuStreamCreate(&s, 1));
  for (int i = 0; i < n; i++) launch(s, 20000);
  CHECK(cuStreamSynchronize(s));
}

static int per_thread;
static void *thread_main(void *arg) {
  (void)arg;
  CHECK(cuCtxSetCurrent(ctx));
  launches(per_thread);
  return NULL;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  const char *mode = argv[1];
  int a = atoi(argv[2]), b = argc > 3 ? atoi(argv[3]) : 0, c = argc > 4 ? atoi(argv[4]) : 0;
  if (!strcmp(mode, "fork")) {
    pid_t pid = fork();
    if (pid == 0) {
      setup();
      launches(a);
      _exit(failures ? 1 : 0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failures++;
    setup();
    launches(b);
  } else {
    setup();
    if (!strcmp(mode, "launches")) {
      launches(a);
    } else if (!strcmp(mode, "capture")) {
      H s, graph = NULL, exec = NULL;
      int status = -1;
      CHECK(cuStreamCreate(&s, 1));
      for (int i = 0; i < a; i++) launch(s, 20000);
      CHECK(cuStreamSynchronize(s));
      CHECK(cuStreamBeginCapture_v2(s, 0 /* global */));
      for (int i = 0; i < b; i++) launch(s, 20000);
      CHECK(cuStreamIsCapturing(s, &status));
      if (status != 1) { fprintf(stderr, "capture status %d\n", status); failures++; }
      CHECK(cuStreamEndCapture(s, &graph));
      CHECK(cuGraphInstantiateWithFlags(&exec, graph, 0));
      for (int i = 0; i < c; i++) CHECK(cuGraphLaunch(exec, s));
      CHECK(cuStreamSynchronize(s));
    } else if (!strcmp(mode, "threads")) {
      pthread_t t[256];
      per_thread = b;
      if (a > 256) a = 256;
      for (int i = 0; i < a; i++) pthread_create(&t[i], NULL, thread_main, NULL);
      for (int i = 0; i < a; i++) pthread_join(t[i], NULL);
    } else if (!strcmp(mode, "cooperative")) {
      H s, graph = NULL, exec = NULL;
      uint64_t cycles = 20000;
      void *params[] = {&cycles};
      CHECK(cuStreamCreate(&s, 1));
      for (int i = 0; i < a; i++) CHECK(cuLaunchCooperativeKernel(fn, 132, 1, 1, 128, 1, 1, 0, s, params));
      CHECK(cuStreamBeginCapture_v2(s, 2));
      launch(s, 19800);
      CHECK(cuStreamEndCapture(s, &graph));
      CHECK(cuGraphInstantiateWithFlags(&exec, graph, 0));
      for (int i = 0; i < a; i++) CHECK(cuGraphLaunch(exec, s));
      CHECK(cuStreamSynchronize(s));
    } else if (!strcmp(mode, "inflight")) {
      H s;
      CHECK(cuStreamCreate(&s, 1));
      for (int i = 0; i < a; i++) launch(s, 19800000);
    } else if (!strcmp(mode, "seconds")) {
      H s;
      long n = 0;
      CHECK(cuStreamCreate(&s, 1));
      if (b > 0) grid = b;
      double end = now() + a;
      while (now() < end) {
        launch(s, 1980000); /* ~1 ms */
        CHECK(cuStreamSynchronize(s));
        n++;
      }
      printf("launched %ld\n", n);
    } else {
      return 2;
    }
  }
  if (failures) return 1;
  printf("ok\n");
  return 0;
}
