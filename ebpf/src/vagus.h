/* Shared between the BPF programs (vagus.bpf.c) and the agent (lib.rs,
 * whose #[repr(C)] mirrors must match this layout field for field). */
#ifndef VAGUS_H
#define VAGUS_H

#define VAGUS_COMM_LEN 16
#define VAGUS_SYNC_BUCKETS 40

/* Event kinds on the ring buffer. */
#define VAGUS_EV_EXEC 1
#define VAGUS_EV_FORK 2
#define VAGUS_EV_EXIT 3
#define VAGUS_EV_CUINIT 4

struct vagus_event {
	__u32 kind;
	__u32 pid;     /* process (thread-group) id */
	__u32 ppid;    /* FORK: the parent */
	__u32 _pad;
	__u64 cgroup_id; /* cgroup v2 id (the cgroup directory's inode) */
	__u64 ts_ns;     /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	char comm[VAGUS_COMM_LEN];
};

/* Per process (tgid) counters, created at its first cuInit. */
struct vagus_proc {
	__u64 cgroup_id;
	__u64 first_cuinit_ns;
	__u64 cuinit_calls;
	__u64 ctx_creates;
	__u64 ctx_destroys;
	__u64 module_loads;
	__u64 allocs;        /* successful cuMemAlloc_v2 */
	__u64 alloc_bytes;
	__u64 frees;         /* successful cuMemFree_v2 */
	__u64 freed_bytes;   /* of allocations seen */
	__u64 syncs;         /* stream, context and event synchronisations */
	__u64 sync_ns;
	__u64 launches;      /* only when the launch probes are attached */
	__u64 sync_hist[VAGUS_SYNC_BUCKETS]; /* bucket b: wait in [2^b, 2^(b+1)) ns */
};

#endif
