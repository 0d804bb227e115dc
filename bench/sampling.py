"""Autoregressive sampling speed: the KV-cached sampler against full recomputation and against
DALLE-pytorch's cached ``generate_images``, plus where one decode step's time goes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sampling.py [--peer-python /work/peers/dalle/bin/python]

Model: a unified (text then image) decoder of DALLE-pytorch's shape in PEERS.md: dim 256,
depth 6, 4 heads of 64, feed-forward sized to DALLE's GEGLU parameter count (mlp_dim 1536),
32 text + 256 image tokens (16x16), a 512-code image vocabulary, batch 8. Figures are image
tokens written per second (rows x 256 / wall time), all measured in this one run; the last line
prints every figure. Guidance runs the conditional and null rows in one batch (λ = 3).

DALLE-pytorch runs in its own virtual environment as a subprocess (see bench/README.md); its
time excludes its VAE decode, timed separately and subtracted. Without the peer environment its
figure is printed as skipped, with the reason.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from vqgen.sampling import SamplingConfig, generate, generate_naive
from vqgen.sampling.autoregressive import _Decoder, _Picker, _plan
from vqgen.transformer.base import Condition
from vqgen.transformer.config import TextConfig, TransformerConfig
from vqgen.transformer.unified import Unified

DEFAULT_PEER = "/work/peers/dalle/bin/python"

PEER_SCRIPT = r"""
import json, sys, time, types
import pytorch_lightning.utilities as plu
shim = types.ModuleType("pytorch_lightning.utilities.distributed")
shim.rank_zero_only = plu.rank_zero_only  # taming imports the old location
sys.modules["pytorch_lightning.utilities.distributed"] = shim
import torch
from dalle_pytorch import DALLE, DiscreteVAE

a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
torch.manual_seed(0)
vae = DiscreteVAE(image_size=a["image_size"], num_layers=a["vae_layers"], num_tokens=a["codebook"],
                  codebook_dim=256, hidden_dim=64)
dalle = DALLE(dim=a["dim"], vae=vae, num_text_tokens=a["text_vocab"], text_seq_len=a["text_len"],
              depth=a["depth"], heads=a["heads"], dim_head=a["dim"] // a["heads"]).eval()
params = sum(p.numel() for n, p in dalle.named_parameters() if not n.startswith("vae."))
blocks = sum(p.numel() for p in dalle.transformer.parameters())
text = torch.randint(1, a["text_vocab"], (a["batch"], a["text_len"]))
with torch.inference_mode():
    dalle.generate_images(text[:, :], filter_thres=0.5, use_cache=True)  # warm-up
    t0 = time.perf_counter()
    images = dalle.generate_images(text, filter_thres=0.5, use_cache=True)
    total = time.perf_counter() - t0
    codes = torch.randint(0, a["codebook"], (a["batch"], dalle.image_seq_len))
    t0 = time.perf_counter()
    vae.decode(codes)
    vae_s = time.perf_counter() - t0
print(json.dumps({"seconds": total - vae_s, "vae_seconds": vae_s, "params": params, "block_params": blocks,
                  "image_tokens": dalle.image_seq_len, "batch": a["batch"], "torch": torch.__version__}))
"""


def build_model(args) -> Unified:
    cfg = TransformerConfig(family="unified", dim=args.dim, depth=args.depth, heads=args.heads, mlp_dim=args.mlp_dim,
                            dropout=0.0, grid=(args.grid, args.grid), codebook_size=args.codebook,
                            text=TextConfig(vocab_size=args.text_vocab, max_len=args.text_len))
    torch.manual_seed(0)
    return Unified(cfg).eval()


def text_cond(args) -> Condition:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, args.text_vocab, (args.batch, args.text_len), generator=g)
    return Condition(text_ids=ids, text_mask=torch.ones_like(ids, dtype=torch.bool))


def timed(fn, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def step_breakdown(model: Unified, cond: Condition, config: SamplingConfig, reps: int) -> dict:
    """Mean time of one decode step (network + picker), of the picker alone, and of the step's
    matrix products alone (the same shapes through ``torch.mm`` / ``torch.bmm`` into
    preallocated outputs)."""
    c = model.config
    with torch.inference_mode():
        plan = _plan(model, cond, None, config, torch.Generator().manual_seed(0), None)
        dec = _Decoder(model, plan, config)
        logits = dec.prefill()
        steps = min(reps, plan.steps - 1)
        t0 = time.perf_counter()
        for _ in range(steps):
            logits = dec.step(logits)
        step_s = (time.perf_counter() - t0) / steps

        pick = _Picker(plan)
        t0 = time.perf_counter()
        for _ in range(steps):
            pick.t.zero_()
            pick(logits)
        pick_s = (time.perf_counter() - t0) / steps

        rows, d, m, h = dec.cache.batch_size, c.dim, c.mlp_dim, c.heads
        t_max, dh = dec.cache.max_len, c.dim // c.heads
        r = lambda *s: torch.randn(*s)  # noqa: E731
        x, y = r(rows, d), r(rows, m)  # (B', D), (B', M)
        mats = [(x, r(d, 3 * d), r(rows, 3 * d)), (x, r(d, d), r(rows, d)), (x, r(d, m), r(rows, m)),
                (y, r(m, d), r(rows, d))]  # qkv, proj, fc1, fc2
        q, kt, vv = r(rows * h, 1, dh), r(rows * h, dh, t_max), r(rows * h, t_max, dh)
        att, o = r(rows * h, 1, t_max), r(rows * h, 1, dh)
        head = (x, r(d, c.codebook_size), r(rows, c.codebook_size))

        def matmuls():
            for _ in range(c.depth):
                for a, b, out in mats:
                    torch.mm(a, b, out=out)
                torch.bmm(q, kt, out=att)
                torch.bmm(att, vv, out=o)
            torch.mm(*head[:2], out=head[2])

        matmuls()
        t0 = time.perf_counter()
        for _ in range(steps):
            matmuls()
        mm_s = (time.perf_counter() - t0) / steps
    return {"step_ms": 1e3 * step_s, "picker_ms": 1e3 * pick_s, "matmul_ms": 1e3 * mm_s}


def run_peer(args) -> dict:
    py = args.peer_python
    if not py or not Path(py).exists():
        return {"skipped": f"no peer python at {py!r} (build it as bench/README.md says)"}
    spec = dict(dim=args.dim, depth=args.depth, heads=args.heads, text_len=args.text_len, text_vocab=args.text_vocab,
                codebook=args.codebook, batch=args.batch, threads=args.threads,
                image_size=args.grid * 8, vae_layers=3)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    try:
        res = subprocess.run([py, "-c", PEER_SCRIPT, json.dumps(spec)], capture_output=True, text=True, env=env,
                             timeout=args.peer_timeout, cwd="/tmp")
    except subprocess.TimeoutExpired:
        return {"skipped": f"peer timed out after {args.peer_timeout}s"}
    if res.returncode != 0:
        return {"skipped": "peer failed: " + (res.stderr.strip().splitlines() or ["?"])[-1]}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["tok_s"] = out["batch"] * out["image_tokens"] / out["seconds"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer-python", default=DEFAULT_PEER, help="python of the DALLE-pytorch environment ('' = skip)")
    p.add_argument("--peer-timeout", type=int, default=900, help="seconds before the peer run is abandoned")
    p.add_argument("--batch", type=int, default=8, help="rows sampled at once")
    p.add_argument("--grid", type=int, default=16, help="image code grid side (16 = 256 image tokens)")
    p.add_argument("--text-len", type=int, default=32, help="text tokens before the image")
    p.add_argument("--text-vocab", type=int, default=10000, help="text vocabulary (DALLE-pytorch's default)")
    p.add_argument("--codebook", type=int, default=512, help="image codes (DiscreteVAE's default)")
    p.add_argument("--dim", type=int, default=256, help="model width")
    p.add_argument("--depth", type=int, default=6, help="transformer blocks")
    p.add_argument("--heads", type=int, default=4, help="attention heads (64 dims each at dim 256)")
    p.add_argument("--mlp-dim", type=int, default=1536, help="MLP width (1536 = DALLE's GEGLU x4 parameter count)")
    p.add_argument("--guidance", type=float, default=3.0, help="λ for the guided figures")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                   help="intra-op threads for both sides")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd decode step")
    p.add_argument("--no-naive", action="store_true", help="skip the slow full-recompute figures")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = build_model(args)
    cond = text_cond(args)
    n_tok = args.batch * model.image_seq_len
    blocks = sum(p.numel() for p in model.blocks.parameters())
    params = sum(p.numel() for p in model.parameters())
    print(f"model: unified dim={args.dim} depth={args.depth} heads={args.heads} mlp={args.mlp_dim} "
          f"blocks={blocks / 1e6:.2f}M params={params / 1e6:.2f}M; {args.text_len} text + {model.image_seq_len} image "
          f"tokens, batch {args.batch}, threads {args.threads}, torch {torch.__version__}", flush=True)

    plain = SamplingConfig(top_k=args.codebook // 2)  # DALLE-pytorch's filter_thres=0.5 keeps half the codes
    guided = SamplingConfig(top_k=args.codebook // 2, guidance_scale=args.guidance)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    figs = {}
    generate(model, cond, config=plain, generator=gen())  # warm-up
    for name, cfg in (("plain", plain), ("cfg", guided)):
        s = timed(lambda: generate(model, cond, config=cfg, generator=gen()), repeats=2)
        figs[f"cached_{name}"] = n_tok / s
        print(f"cached {name}: {s:.2f}s  {n_tok / s:.0f} tok/s", flush=True)
        if args.compile:
            ccfg = replace(cfg, compile=True)
            t0 = time.perf_counter()
            generate(model, cond, config=ccfg, generator=gen())  # compiles
            first = time.perf_counter() - t0
            s = timed(lambda: generate(model, cond, config=ccfg, generator=gen()), repeats=2)
            figs[f"compiled_{name}"] = n_tok / s
            print(f"compiled {name}: {s:.2f}s  {n_tok / s:.0f} tok/s (first call with compilation {first:.0f}s)",
                  flush=True)
        if not args.no_naive:
            s = timed(lambda: generate_naive(model, cond, config=cfg, generator=gen()))
            figs[f"naive_{name}"] = n_tok / s
            print(f"naive {name}: {s:.2f}s  {n_tok / s:.1f} tok/s", flush=True)

    br = {name: step_breakdown(model, cond, cfg, reps=128) for name, cfg in (("plain", plain), ("cfg", guided))}
    for name, b in br.items():
        print(f"decode step ({name}): {b['step_ms']:.2f} ms; its matmuls alone {b['matmul_ms']:.2f} ms "
              f"({100 * b['matmul_ms'] / b['step_ms']:.0f}%); picker {b['picker_ms']:.2f} ms", flush=True)

    peer = run_peer(args)
    if "skipped" in peer:
        print(f"dalle-pytorch: skipped ({peer['skipped']})", flush=True)
        peer_fig = "dalle=skipped"
    else:
        print(f"dalle-pytorch {peer['torch']}: transformer {peer['block_params'] / 1e6:.2f}M "
              f"(with embeddings {peer['params'] / 1e6:.2f}M), {peer['seconds']:.1f}s (VAE decode "
              f"{peer['vae_seconds']:.2f}s excluded)  {peer['tok_s']:.1f} tok/s", flush=True)
        peer_fig = f"dalle={peer['tok_s']:.1f}tok/s vqgen/dalle={figs['cached_plain'] / peer['tok_s']:.1f}x"

    parts = [f"cached={figs['cached_plain']:.0f}tok/s", f"cached_cfg={figs['cached_cfg']:.0f}tok/s"]
    if "naive_plain" in figs:
        parts += [f"naive={figs['naive_plain']:.1f}tok/s", f"naive_cfg={figs['naive_cfg']:.1f}tok/s",
                  f"cache_speedup={figs['cached_plain'] / figs['naive_plain']:.1f}x",
                  f"cache_speedup_cfg={figs['cached_cfg'] / figs['naive_cfg']:.1f}x"]
    if "compiled_plain" in figs:
        parts += [f"compiled={figs['compiled_plain']:.0f}tok/s", f"compiled_cfg={figs['compiled_cfg']:.0f}tok/s"]
    parts.append(peer_fig)
    for name, b in br.items():
        parts.append(f"step_{name}={b['step_ms']:.2f}ms matmul_{name}={b['matmul_ms']:.2f}ms "
                     f"picker_{name}={b['picker_ms']:.2f}ms")
    print("sampling: " + " ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
