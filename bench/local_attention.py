"""2D local attention: flex_attention with a block mask against dense masked SDPA (CogView2's
"Local Awareness" figure: 9x9 local attention on 4,096 tokens with 64 dims per head).

    OMP_NUM_THREADS=1 .venv/bin/python bench/local_attention.py [--grid 64] [--window 9] [--heads 8]

One attention call, q/k/v ``(batch, heads, 64*64, 64)`` float32 under ``MaskSpec("local",
grid=(64, 64), window=9)`` (no text tokens by default; ``--text-len`` adds some), run by
``vqgen.transformer.masks.attend`` with three backends: ``flex`` (``torch.compile``d
flex_attention with the block mask), ``sdpa`` (``F.scaled_dot_product_attention`` with the dense
bool mask) and ``flex_eager`` (flex_attention uncompiled). Each runs in a fresh subprocess.

Time: ``time.process_time`` of one call, best of ``--repeats``, with one intra-op thread, after
one warm-up call (which compiles flex; its wall time, compiler subprocesses included, is printed
as ``compile_s``). Masks are built before the warm-up and not timed.

Memory: the RSS high-water mark of the process (``VmHWM``, reset through ``/proc/self/clear_refs``
just before the timed calls) minus the RSS just before them: what one call adds on top of what is
resident. glibc's mmap threshold is pinned at 64 KiB in the workers, so a freed tensor leaves the
RSS at once instead of staying in the heap and hiding the next call's allocations. The mask is
built before and stays resident, so its bytes (the dense ``(N, N)`` bool, or the block mask's
index tensors) are added: ``peak = call + mask``. ``memory_ratio`` = dense peak / flex peak.

The outputs of the workers are compared (``max_abs_diff``, flex vs sdpa). ``density`` is the
share of (query, key) pairs the mask allows, ``block_density`` the share of 128x128 blocks flex
has to compute (a block row of 2 grid rows meets keys in 10 grid rows: 5 of 32 blocks). The final
line holds every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {"local": "flex", "dense": "sdpa", "eager": "flex_eager"}


def _status_kb(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def worker(args, variant: str, out: Path) -> None:
    """Time and measure one backend; print one JSON line."""
    import torch

    from vqgen.transformer.masks import MaskSpec, attend, flex_status

    torch.set_num_threads(args.threads)
    backend = VARIANTS[variant]
    spec = MaskSpec("local", grid=(args.grid, args.grid), window=args.window, text_len=args.text_len)
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.heads, spec.seq_len, args.head_dim)
    q, k, v = (torch.randn(shape, generator=g) for _ in range(3))  # (B, H, N, Dh) each
    bm = spec.block_mask("cpu")
    block_density = 1 - bm.sparsity() / 100  # share of (128, 128) blocks that flex computes
    if backend == "sdpa":
        mask_bytes = spec.dense().numel()  # (N, N) bool, built again (cached) inside attend
    else:
        mask_bytes = sum(t.numel() * t.element_size() for t in bm.as_tuple() if isinstance(t, torch.Tensor))
    t0 = time.perf_counter()
    y = attend(q, k, v, spec, backend)  # (B, H, N, Dh): warm-up (compiles flex)
    warm = time.perf_counter() - t0
    del y
    rss0 = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    times = []
    for _ in range(args.repeats):
        t0 = time.process_time()
        y = attend(q, k, v, spec, backend)  # (B, H, N, Dh)
        times.append(time.process_time() - t0)
        if len(times) < args.repeats:
            del y
    call_kb = _status_kb("VmHWM") - rss0
    torch.save(y, out)
    density = spec.dense().float().mean().item()
    print(json.dumps({"variant": variant, "best_s": min(times), "times": times, "warm_s": warm,
                      "call_mb": call_kb / 1024, "mask_mb": mask_bytes / 2**20,
                      "peak_mb": call_kb / 1024 + mask_bytes / 2**20, "rss_mb": rss0 / 1024,
                      "flex": flex_status() if backend == "flex" else backend, "density": density,
                      "block_density": block_density}))


def run_worker(args, variant: str, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--worker", variant, "--out", str(out),
           "--grid", str(args.grid), "--window", str(args.window), "--heads", str(args.heads),
           "--batch", str(args.batch), "--head-dim", str(args.head_dim), "--text-len", str(args.text_len),
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"worker {variant} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, default=64)
    p.add_argument("--window", type=int, default=9)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--text-len", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-eager", action="store_true", help="skip the uncompiled flex_attention run")
    p.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args, args.worker, args.out)

    import torch

    n = args.grid * args.grid + args.text_len
    print(f"local attention: grid {args.grid}x{args.grid} + {args.text_len} text = {n} tokens, window "
          f"{args.window}x{args.window}, batch {args.batch}, {args.heads} heads of {args.head_dim}, float32, "
          f"{args.threads} thread(s), torch {torch.__version__}", flush=True)
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ["local", "dense"] + ([] if args.no_eager else ["eager"]):
            res[variant] = r = run_worker(args, variant, Path(tmp) / f"{variant}.pt")
            print(f"{variant:>6} ({r['flex']}): best {r['best_s']:.3f} CPU-s of "
                  f"{', '.join(f'{t:.3f}' for t in r['times'])}; warm-up {r['warm_s']:.1f} s; "
                  f"peak {r['peak_mb']:.1f} MiB = call {r['call_mb']:.1f} + mask {r['mask_mb']:.2f} "
                  f"(RSS before the calls {r['rss_mb']:.0f} MiB)", flush=True)
        ys = {v: torch.load(Path(tmp) / f"{v}.pt") for v in res}
    diff = (ys["local"] - ys["dense"]).abs().max().item()
    local, dense = res["local"], res["dense"]
    line = (f"local_attention: local_vs_dense={dense['best_s'] / local['best_s']:.2f}x "
            f"memory_ratio={dense['peak_mb'] / local['peak_mb']:.2f}x "
            f"local_s={local['best_s']:.3f} dense_s={dense['best_s']:.3f} "
            f"local_peak_mb={local['peak_mb']:.1f} dense_peak_mb={dense['peak_mb']:.1f} "
            f"compile_s={local['warm_s']:.1f} flex={'compiled' if local['flex'] == 'compiled' else 'eager'} "
            f"density={local['density']:.4f} block_density={local['block_density']:.3f} max_abs_diff={diff:.2e}")
    if "eager" in res:
        e = res["eager"]
        line += (f" eager_s={e['best_s']:.3f} eager_peak_mb={e['peak_mb']:.1f} "
                 f"eager_vs_dense={dense['best_s'] / e['best_s']:.2f}x")
    print(f"tokens={n} window={args.window} batch={args.batch} heads={args.heads} head_dim={args.head_dim} "
          f"threads={args.threads}")
    print(line)


if __name__ == "__main__":
    main()
