"""PyTorch workloads for the interposer's GPU check (bench/gpu_check_shim.sh).

  python3 torch_check.py passes N       N forward passes of a small MLP (for launch counts)
  python3 torch_check.py profile N      the same under torch.profiler: kernels per pass, mean kernel time
  python3 torch_check.py loop N         a launch-bound loop of N tiny in-place adds: launches per second
  python3 torch_check.py memory GIB     under a memory limit: what torch.cuda.mem_get_info() says, whether
                                        allocating GIB GiB raises PyTorch's out-of-memory error, and that
                                        the process goes on allocating within the limit afterwards
"""
import json
import sys
import time

import torch


def model_and_input():
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024), torch.nn.LayerNorm(1024),
        torch.nn.Linear(1024, 10),
    ).cuda().eval()
    return m, torch.randn(64, 1024, device="cuda")


def passes(n):
    m, x = model_and_input()
    with torch.no_grad():
        for _ in range(n):
            m(x)
    torch.cuda.synchronize()
    print(json.dumps({"passes": n}))


def profile(n):
    from torch.profiler import ProfilerActivity, profile as prof
    m, x = model_and_input()
    with torch.no_grad():
        for _ in range(20):
            m(x)
        torch.cuda.synchronize()
        with prof(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(n):
                m(x)
            torch.cuda.synchronize()
    kernels = [e for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
    us = [e.device_time for e in kernels]
    print(json.dumps({"passes": n, "kernels": len(kernels), "kernels_per_pass": len(kernels) / n,
                      "mean_kernel_us": sum(us) / max(1, len(us)),
                      "names": sorted({e.name[:60] for e in kernels})}))


def loop(n):
    y = torch.zeros(16, device="cuda")
    for _ in range(1000):
        y.add_(1.0)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        y.add_(1.0)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(json.dumps({"launches": n, "seconds": dt, "launches_per_s": n / dt}))


def memory(gib):
    free, total = torch.cuda.mem_get_info()
    out = {"free": free, "total": total, "allocator": torch.cuda.get_allocator_backend(),
           "expandable": "expandable_segments:True" in __import__("os").environ.get("PYTORCH_CUDA_ALLOC_CONF", "")}
    try:
        x = torch.empty(gib << 30, dtype=torch.uint8, device="cuda")
        out["oom"] = False
        del x
    except torch.cuda.OutOfMemoryError as e:
        out["oom"] = True
        out["error"] = str(e).splitlines()[0][:200]
    torch.cuda.empty_cache()
    y = torch.ones(1 << 28, dtype=torch.uint8, device="cuda")  # 256 MiB: still within the limit
    out["after"] = int(y.sum().item())
    print(json.dumps(out))


if __name__ == "__main__":
    {"passes": passes, "profile": profile, "loop": loop, "memory": memory}[sys.argv[1]](int(sys.argv[2]))
