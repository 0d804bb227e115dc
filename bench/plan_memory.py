"""`vqgen plan`'s memory model against a measured CPU training run (one process, fp32, AdamW).

The run trains a small VIM (the trainer's own LossModule and optimizer) for 3 steps and measures
the peak resident memory of its process above the resident memory just before the model is
built (``VmHWM`` − ``VmRSS`` from /proc/self/status, both in the same process). glibc's malloc is
pinned to serve every allocation over 64 KiB with its own mmap (``MALLOC_MMAP_THRESHOLD_=65536``)
so freed tensors leave the resident set at once and the high-water mark is the peak of live
tensors, not of the allocator's free lists. The planner is asked for the same model, batch and
dtype with no FSDP, no bf16 and no runtime overhead; its total (parameters + gradients + AdamW
states + activations at the start of backward) is compared with the measured peak.

    OMP_NUM_THREADS=1 .venv/bin/python bench/plan_memory.py [--dim 256 --depth 6 --grid 16 --batch 16] [--ckpt]

Final line: ``plan_memory: measured_mb=… planned_mb=… ratio=… (planned/measured) params=… ...``
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(key)


def measure(args) -> dict:
    import torch

    from vqgen.plan import plan
    from vqgen.runtime import seed_everything
    from vqgen.transformer import build_model
    from vqgen.transformer.base import Condition
    from vqgen.transformer.config import TrainConfig, TransformerConfig
    from vqgen.transformer.train import LossModule, make_optimizer

    torch.set_num_threads(1)
    cfg = TransformerConfig(family="vim", dim=args.dim, depth=args.depth, heads=args.heads, mlp_dim=4 * args.dim,
                            dropout=0.0, grid=(args.grid, args.grid), codebook_size=args.codebook, num_classes=0)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, args.codebook, (args.batch, args.grid * args.grid), generator=g)  # (B, N)
    base = _status_mb("VmRSS")
    seed_everything(0)
    model = build_model(cfg)
    if args.ckpt:
        from vqgen.distributed import checkpoint_activations

        checkpoint_activations(model.blocks)
    step = LossModule(model)
    opt = make_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-4))
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        loss, _ = step(codes, Condition())
        loss.backward()
        opt.step()
    peak = _status_mb("VmHWM")
    p = plan(cfg, "bench", 1, 80, batch=args.batch, optimizer="adamw", bf16=False, fsdp=False, overhead_gb=0.0)
    planned = {k: v / 2**20 for k, v in p.bytes.items()}
    return {"measured_mb": peak - base, "planned_mb": planned["total_ckpt" if args.ckpt else "total"], "planned": planned,
            "params": p.total_params}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--codebook", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ckpt", action="store_true", help="with activation checkpointing of the blocks")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--child"] + sys.argv[1:], env=env, capture_output=True,
                         text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    parts = " ".join(f"{k}={v:.1f}" for k, v in r["planned"].items() if k not in ("total", "total_ckpt", "overhead"))
    print(f"plan_memory: measured_mb={r['measured_mb']:.1f} planned_mb={r['planned_mb']:.1f} "
          f"ratio={r['planned_mb'] / r['measured_mb']:.3f} params={r['params']} model=vim dim={args.dim} "
          f"depth={args.depth} grid={args.grid}x{args.grid} codebook={args.codebook} batch={args.batch} fp32 adamw "
          f"activation_checkpointing={args.ckpt} "
          f"planned_parts_mb: {parts}")


if __name__ == "__main__":
    main()
