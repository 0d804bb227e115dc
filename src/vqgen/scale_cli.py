"""``vqgen plan`` (memory and throughput per GPU for a preset) and ``vqgen export`` (one
safetensors model from a sharded checkpoint)."""
from __future__ import annotations

import json

from vqgen.cli import add_set_argument, positive_float, positive_int


def register(sub) -> None:
    p = sub.add_parser("plan", help="memory per GPU and tokens/s of a transformer preset under FSDP",
                       description="Parameters, gradients, optimizer states, the FSDP working set and activations "
                                   "(with and without activation checkpointing) per GPU, and tokens/s per GPU at a "
                                   "stated model-FLOPs utilisation. --preset all prints every preset.")
    p.add_argument("--preset", required=True, metavar="NAME", help="transformer preset, or 'all'")
    p.add_argument("--gpus", type=positive_int, default=8, metavar="N", help="GPUs sharing the model (default 8)")
    p.add_argument("--gpu-mem", type=positive_float, default=80.0, metavar="GB", help="memory per GPU (default 80)")
    p.add_argument("--seq", type=positive_int, default=None, metavar="T",
                   help="image tokens per sample, a square grid (default: the preset's grid)")
    p.add_argument("--batch", type=positive_int, default=8, metavar="B", help="sequences per GPU and step (default 8)")
    p.add_argument("--optimizer", choices=("preset", "adamw", "adafactor", "sgd"), default="adamw",
                   help="optimizer states to count (default adamw; 'preset' = the preset's own)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="compute dtype (default bf16)")
    p.add_argument("--no-fsdp", action="store_true", help="one full copy per GPU (DDP) instead of sharding")
    p.add_argument("--mfu", type=positive_float, default=0.4, metavar="F",
                   help="model FLOPs utilisation assumed for tokens/s (default 0.4)")
    p.add_argument("--peak-tflops", type=positive_float, default=989.0, metavar="T",
                   help="peak dense bf16 TFLOP/s of one GPU (default 989, an H100 SXM; an A100 is 312)")
    p.add_argument("--overhead-gb", type=float, default=2.0, metavar="GB",
                   help="CUDA context, NCCL buffers and fragmentation per GPU (default 2)")
    p.add_argument("--json", action="store_true", help="one JSON object per preset")
    add_set_argument(p)
    p.set_defaults(func=_plan)

    p = sub.add_parser("export", help="one safetensors model from a run's sharded (FSDP) checkpoint",
                       description="Gather the shards of RUN's latest (or --step N) sharded checkpoint in this "
                                   "process and write the model with save_pretrained (config.json, "
                                   "model.safetensors, tokenizer.json for text models). Works on checkpoints "
                                   "written by any number of ranks.")
    p.add_argument("run", metavar="RUN", help="run directory (or one checkpoint directory)")
    p.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    p.add_argument("--step", type=positive_int, default=None, metavar="N", help="checkpoint step (default: latest)")
    p.add_argument("--component", default="model", metavar="NAME", help="component to export (default model)")
    p.set_defaults(func=_export)


def _plan(args) -> int:
    from vqgen.config import apply_overrides, get_preset, preset_names
    from vqgen.plan import format_plan, plan
    from vqgen.transformer.config import FAMILY

    names = preset_names(FAMILY) if args.preset == "all" else [args.preset]
    for i, name in enumerate(names):
        cfg = apply_overrides(get_preset(FAMILY, name), args.overrides)
        opt = cfg.train.optimizer if args.optimizer == "preset" else args.optimizer
        p = plan(cfg.model, name, args.gpus, args.gpu_mem, seq=args.seq, batch=args.batch, optimizer=opt,
                 bf16=args.precision == "bf16", fsdp=not args.no_fsdp, mfu=args.mfu, peak_tflops=args.peak_tflops,
                 overhead_gb=args.overhead_gb)
        if args.json:
            print(json.dumps({"preset": name, "gpus": p.gpus, "gpu_mem_gb": p.gpu_mem_gb, "seq": p.seq,
                              "batch": p.batch, "optimizer": opt, "params": p.params, "total_params": p.total_params,
                              "gb": {k: round(v / 1e9, 3) for k, v in p.bytes.items()},
                              "tokens_per_s_per_gpu": {k: round(v, 1) for k, v in p.tokens_per_s.items()},
                              "fits": p.fits}))
        else:
            print(("\n" if i else "") + format_plan(p, args.mfu, args.peak_tflops) + f"  [optimizer {opt}]")
    return 0


def _export(args) -> int:
    from pathlib import Path

    from vqgen.distributed import export_checkpoint
    from vqgen.errors import VqgenError
    from vqgen.runtime import is_sharded, latest_checkpoint

    run = Path(args.run)
    if is_sharded(run):
        ckpt = run
    elif args.step is not None:
        ckpt = run / "checkpoints" / f"step-{args.step:07d}"
    else:
        ckpt = latest_checkpoint(run)
    if ckpt is None or not ckpt.is_dir():
        raise VqgenError(f"{run} has no checkpoint{f' at step {args.step}' if args.step else ''}")
    if not is_sharded(ckpt):
        raise VqgenError(f"{ckpt} is not a sharded checkpoint (its {args.component}/ folder is already a saved model)")
    out = export_checkpoint(ckpt, args.component, args.out)
    print(f"exported {ckpt} ({args.component}) to {out}")
    return 0
