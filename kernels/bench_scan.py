"""Selective-scan benchmark (not a test). Prints markdown tables.

CPU: osf `chunked` vs transformers' own fallback scan (`mamba_selective_scan`, the path HF Mamba
takes without mamba_ssm) vs the osf sequential `reference`, forward and forward+backward.
Every case runs in its own subprocess: time is the median wall time of the repeats, memory is the
increase of that process's peak RSS (ru_maxrss) across the first timed call, after a tiny warm-up
call, i.e. what the call added on top of its inputs (CPU tensors only; includes allocator slack).
GPU (only when CUDA is available): triton vs cuda (mamba_ssm) vs chunked, full size and a 50%
d_inner prefix view.

    python kernels/bench_scan.py            # L = 256, 1024, 4096
    python kernels/bench_scan.py --quick    # L = 64, 256
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run from a checkout without installing
# (method, mode) pairs whose backward is quadratic in L (autograd of per-step slicing of (b, d, L, n)
# tensors): at the largest L they would run for far more than 30 minutes, so they are skipped.
SLOW = {("transformers", "fwd+bwd"): 1024, ("reference", "fwd+bwd"): 1024}


def make_inputs(batch, dim, n, L, device="cpu", seed=0):
    """Mamba-like inputs: A = -(1..n), delta = softplus(raw + bias) with bias for dt in [1e-3, 1e-1]."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    dt = torch.rand(dim, generator=g) * 0.099 + 0.001
    ins = dict(u=r(batch, dim, L), delta=r(batch, dim, L) * 0.5,
               A=-torch.arange(1, n + 1, dtype=torch.float32).repeat(dim, 1),
               B=r(batch, n, L), C=r(batch, n, L), D=torch.ones(dim), z=r(batch, dim, L),
               delta_bias=dt + torch.log(-torch.expm1(-dt)))
    return {k: v.to(device) for k, v in ins.items()}


def scan_fn(method):
    if method == "transformers":
        from transformers.models.mamba.modeling_mamba import mamba_selective_scan
        return mamba_selective_scan
    import osf.kernels as K
    return lambda *a, **kw: K.selective_scan(*a, backend=method, **kw)


def call(fn, ins, grad):
    leaves = {k: v.clone().requires_grad_(grad) for k, v in ins.items()}
    with torch.set_grad_enabled(grad):
        y = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], D=leaves["D"], z=leaves["z"],
               delta_bias=leaves["delta_bias"], delta_softplus=True)
        if grad:
            y.sum().backward()


def worker(method, mode, L, batch, dim, n, repeats, threads):
    """Runs in a subprocess: prints one JSON line {ms, peak_mb}."""
    torch.set_num_threads(threads)
    fn = scan_fn(method)
    call(fn, make_inputs(2, 8, n, 8), mode == "fwd+bwd")  # one-time costs (lazy imports, autograd engine)
    ins = make_inputs(batch, dim, n, L)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call(fn, ins, mode == "fwd+bwd")
        times.append(time.perf_counter() - t0)
        if not times[1:] and times[0] > 20:  # slow case: one run is enough
            break
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
    print(json.dumps(dict(ms=statistics.median(times) * 1e3, peak_mb=peak / 1024)))


def run_case(method, mode, L, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, mode, str(L),
           "--batch", str(args.batch), "--dim", str(args.dim), "--state", str(args.state),
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        return dict(error=out.stderr.strip().splitlines()[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_bench(args):
    lengths = [64, 256] if args.quick else [256, 1024, 4096]
    methods = ["chunked", "transformers", "reference"]
    print(f"## CPU: batch {args.batch}, d_inner {args.dim}, d_state {args.state}, float32, "
          f"{args.threads} torch thread(s) per case\n")
    print("| L | mode | method | ms | peak RSS added (MB) | chunked speedup |")
    print("|---|---|---|---|---|---|")
    for L in lengths:
        for mode in ("fwd", "fwd+bwd"):
            res = {}
            for m in methods:
                limit = SLOW.get((m, mode))
                if limit is not None and L > limit and not args.all:
                    res[m] = dict(skip=f"skipped (quadratic backward; > 30 min at L={L})")
                else:
                    res[m] = run_case(m, mode, L, args)
                r = res[m]
                if "ms" in r:
                    base = res["chunked"].get("ms")
                    speed = f"{r['ms'] / base:.1f}x" if base and m != "chunked" else "-"
                    print(f"| {L} | {mode} | {m} | {r['ms']:.0f} | {r['peak_mb']:.0f} | {speed} |", flush=True)
                else:
                    print(f"| {L} | {mode} | {m} | {r.get('skip') or r.get('error')} | | |", flush=True)


def gpu_bench(args):
    print("\n## GPU\n")
    if not torch.cuda.is_available():
        print("no GPU")
        return
    import osf.kernels as K
    batch, dim, n, L = 8, 4096, 16, 2048
    full = make_inputs(batch, dim, n, L, device="cuda")
    half = dim // 2
    prefix = dict(u=full["u"][:, :half], delta=full["delta"][:, :half], A=full["A"][:half], B=full["B"],
                  C=full["C"], D=full["D"][:half], z=full["z"][:, :half], delta_bias=full["delta_bias"][:half])
    print(f"batch {batch}, d_inner {dim}, d_state {n}, L {L}, {torch.cuda.get_device_name()}\n")
    print("| inputs | backend | fwd ms | fwd+bwd ms |")
    print("|---|---|---|---|")
    for label, ins in (("full", full), ("50% d_inner prefix view", prefix)):
        for backend in ("triton", "cuda", "chunked"):
            if not K.dispatch.is_available(backend, torch.device("cuda")):
                print(f"| {label} | {backend} | unavailable | |")
                continue
            fn = scan_fn(backend)
            row = []
            for grad in (False, True):
                call(fn, ins, grad)  # warm-up / compile
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(5):
                    call(fn, ins, grad)
                torch.cuda.synchronize()
                row.append((time.perf_counter() - t0) / 5 * 1e3)
            print(f"| {label} | {backend} | {row[0]:.2f} | {row[1]:.2f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small L for a fast check")
    p.add_argument("--all", action="store_true", help="also run the skipped very slow cases")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per case (1 by default: stable timings on a shared machine)")
    p.add_argument("--worker", nargs=3, metavar=("METHOD", "MODE", "L"), help=argparse.SUPPRESS)
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU section")
    args = p.parse_args()
    if args.worker:
        method, mode, L = args.worker
        worker(method, mode, int(L), args.batch, args.dim, args.state, args.repeats, args.threads)
        return
    print(f"command: python kernels/bench_scan.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"torch {torch.__version__}, CPU cores {os.cpu_count()}\n")
    cpu_bench(args)
    if not args.no_gpu:
        gpu_bench(args)


if __name__ == "__main__":
    main()
