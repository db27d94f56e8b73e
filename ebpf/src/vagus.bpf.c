// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * Vagus's probes: process lifecycle (exec, fork, exit with the cgroup id)
 * and the CUDA driver calls that tell what a GPU process does (cuInit,
 * contexts, modules, allocations with their sizes, synchronisations with
 * their wait time), on the libcuda each process maps. CO-RE: built against
 * the build machine's vmlinux.h, relocated against the running kernel's BTF
 * when loaded.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "vagus.h"

/* Debian 12's libbpf 1.1 has no BPF_UPROBE: BPF_KPROBE reads the same pt_regs. */

/* bpf_probe_read_user and friends need a GPL-compatible licence. */
char LICENSE[] SEC("license") = "Dual MIT/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} EVENTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct vagus_proc);
} PROCS SEC(".maps");

/* What a probe saw on entry, for its return probe: keyed by thread and call. */
#define CALL_ALLOC 1
#define CALL_FREE 2
#define CALL_SYNC 3

struct call_key {
	__u64 pid_tgid;
	__u64 call;
};

struct call_state {
	__u64 a; /* ALLOC: the CUdeviceptr* out-parameter; FREE: the pointer; SYNC: start ns */
	__u64 b; /* ALLOC: bytes */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct call_key);
	__type(value, struct call_state);
} CALLS SEC(".maps");

/* Live allocations: (tgid, device pointer) -> bytes, so frees have a size. */
struct alloc_key {
	__u64 tgid;
	__u64 dptr;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct alloc_key);
	__type(value, __u64);
} ALLOCS SEC(".maps");

static __always_inline void emit(__u32 kind, __u32 pid, __u32 ppid)
{
	struct vagus_event *e = bpf_ringbuf_reserve(&EVENTS, sizeof(*e), 0);
	if (!e)
		return;
	e->kind = kind;
	e->pid = pid;
	e->ppid = ppid;
	e->_pad = 0;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->ts_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

/* BTF-typed tracepoints throughout: no tracefs needed, and the task
 * structs tell processes from threads. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(vagus_exec, struct task_struct *p)
{
	emit(VAGUS_EV_EXEC, BPF_CORE_READ(p, tgid), 0);
	return 0;
}

/* The child task tells a new process from a new thread. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(vagus_fork, struct task_struct *parent, struct task_struct *child)
{
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0;
	emit(VAGUS_EV_FORK, BPF_CORE_READ(child, tgid), BPF_CORE_READ(parent, tgid));
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(vagus_exit, struct task_struct *p)
{
	if (BPF_CORE_READ(p, pid) != BPF_CORE_READ(p, tgid))
		return 0; /* a thread, not the process */
	emit(VAGUS_EV_EXIT, BPF_CORE_READ(p, tgid), 0);
	return 0;
}

static __always_inline struct vagus_proc *proc_of(__u32 tgid)
{
	return bpf_map_lookup_elem(&PROCS, &tgid);
}

SEC("uprobe")
int BPF_KPROBE(vagus_cu_init)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct vagus_proc *p = proc_of(tgid);
	if (!p) {
		struct vagus_proc fresh = {};
		fresh.cgroup_id = bpf_get_current_cgroup_id();
		fresh.first_cuinit_ns = bpf_ktime_get_ns();
		bpf_map_update_elem(&PROCS, &tgid, &fresh, BPF_NOEXIST);
		p = proc_of(tgid);
		if (!p)
			return 0;
		emit(VAGUS_EV_CUINIT, tgid, 0);
	}
	__sync_fetch_and_add(&p->cuinit_calls, 1);
	return 0;
}

#define COUNTER_PROBE(name, field)                                   \
	SEC("uprobe")                                                \
	int BPF_KPROBE(name)                                         \
	{                                                            \
		struct vagus_proc *p =                               \
			proc_of(bpf_get_current_pid_tgid() >> 32);   \
		if (p)                                               \
			__sync_fetch_and_add(&p->field, 1);          \
		return 0;                                            \
	}

COUNTER_PROBE(vagus_ctx_create, ctx_creates)
COUNTER_PROBE(vagus_ctx_destroy, ctx_destroys)
COUNTER_PROBE(vagus_module_load, module_loads)
COUNTER_PROBE(vagus_launch, launches)

/* Entry probes record what their return probe needs; the return probe
 * takes it (once: the record is deleted whatever the call returned). */
static __always_inline void enter(__u64 call, __u64 a, __u64 b)
{
	struct call_key k = { bpf_get_current_pid_tgid(), call };
	struct call_state s = { a, b };
	bpf_map_update_elem(&CALLS, &k, &s, BPF_ANY);
}

static __always_inline int leave(__u64 id, __u64 call, struct call_state *out)
{
	struct call_key k = { id, call };
	struct call_state *s = bpf_map_lookup_elem(&CALLS, &k);
	if (!s)
		return 0;
	*out = *s;
	bpf_map_delete_elem(&CALLS, &k);
	return 1;
}

SEC("uprobe")
int BPF_KPROBE(vagus_mem_alloc, void *dptr, __u64 bytes)
{
	enter(CALL_ALLOC, (__u64)dptr, bytes);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(vagus_mem_alloc_ret, int rc)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call_state s;
	if (!leave(id, CALL_ALLOC, &s))
		return 0;
	__u64 out = s.a, bytes = s.b;
	if (rc != 0)
		return 0;
	struct vagus_proc *p = proc_of(id >> 32);
	if (!p)
		return 0;
	__sync_fetch_and_add(&p->allocs, 1);
	__sync_fetch_and_add(&p->alloc_bytes, bytes);
	struct alloc_key a = { id >> 32, 0 };
	if (bpf_probe_read_user(&a.dptr, sizeof(a.dptr), (void *)out) == 0)
		bpf_map_update_elem(&ALLOCS, &a, &bytes, BPF_ANY);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(vagus_mem_free, __u64 dptr)
{
	enter(CALL_FREE, dptr, 0);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(vagus_mem_free_ret, int rc)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call_state s;
	if (!leave(id, CALL_FREE, &s))
		return 0;
	struct alloc_key a = { id >> 32, s.a };
	if (rc != 0)
		return 0;
	struct vagus_proc *p = proc_of(id >> 32);
	if (!p)
		return 0;
	__sync_fetch_and_add(&p->frees, 1);
	__u64 *bytes = bpf_map_lookup_elem(&ALLOCS, &a);
	if (bytes) {
		__sync_fetch_and_add(&p->freed_bytes, *bytes);
		bpf_map_delete_elem(&ALLOCS, &a);
	}
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(vagus_sync)
{
	enter(CALL_SYNC, bpf_ktime_get_ns(), 0);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(vagus_sync_ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call_state s;
	if (!leave(id, CALL_SYNC, &s))
		return 0;
	__u64 ns = bpf_ktime_get_ns() - s.a;
	struct vagus_proc *p = proc_of(id >> 32);
	if (!p)
		return 0;
	__sync_fetch_and_add(&p->syncs, 1);
	__sync_fetch_and_add(&p->sync_ns, ns);
	__u32 b = 0;
	/* floor(log2(ns)), bounded loop for the verifier */
	for (int i = 32; i > 0; i >>= 1) {
		if (ns >> i) {
			ns >>= i;
			b += i;
		}
	}
	if (b >= VAGUS_SYNC_BUCKETS)
		b = VAGUS_SYNC_BUCKETS - 1;
	__sync_fetch_and_add(&p->sync_hist[b], 1);
	return 0;
}
