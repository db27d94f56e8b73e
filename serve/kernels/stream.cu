// The kernel vagus serve runs for an iteration's memory traffic; stream.ptx is
// its PTX (the command is at the top of that file).
// vagus_stream: spins `cycles` SM clock cycles, then reads `bytes` of global
// memory from `buf` (a buffer of `words` 8-byte words, read round and round),
// grid-stride, 8 bytes a thread at a time: a memory-bound kernel's traffic.
#define GLOBAL __attribute__((global))
typedef unsigned long long u64;
extern "C" GLOBAL void vagus_stream(u64 cycles, u64 bytes, u64 *buf, u64 words) {
  long long t0 = __nvvm_read_ptx_sreg_clock64();
  while (__nvvm_read_ptx_sreg_clock64() - t0 < (long long)cycles) {}
  if (words == 0) return;
  u64 stride = (u64)__nvvm_read_ptx_sreg_nctaid_x() * __nvvm_read_ptx_sreg_ntid_x();
  u64 i = (u64)__nvvm_read_ptx_sreg_ctaid_x() * __nvvm_read_ptx_sreg_ntid_x() + __nvvm_read_ptx_sreg_tid_x();
  u64 n = bytes / 8;
  u64 j = i % words;
  u64 step = stride % words;
  u64 acc = 0;
  for (; i < n; i += stride) {
    acc ^= ((volatile u64 *)buf)[j];
    j += step;
    if (j >= words) j -= words;
  }
  // Never true for the data a caller leaves, but the compiler cannot know: the loads stay.
  if (acc == 0x9e3779b97f4a7c15ull) buf[0] = acc;
}
