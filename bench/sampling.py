"""Autoregressive sampling speed: the KV-cached sampler against full recomputation and against
DALLE-pytorch's cached ``generate_images``, plus where one decode step's time goes, and
speculative Jacobi decoding (SJD) against the cached sampler.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sampling.py [--peer-python /work/peers/dalle/bin/python]

Model: a unified (text then image) decoder of DALLE-pytorch's shape in PEERS.md: dim 256,
depth 6, 4 heads of 64, feed-forward sized to DALLE's GEGLU parameter count (mlp_dim 1536),
32 text + 256 image tokens (16x16), a 512-code image vocabulary, batch 8. Figures are image
tokens written per second (rows x 256 / time), all measured in this one run; the last line
prints every figure. Guidance runs the conditional and null rows in one batch (λ = 3).

Time: with one thread (the default) every figure on both sides is the CPU time of the process
(``time.process_time``), which equals the wall time on an idle core and, unlike the wall time,
does not depend on what else the shared machine runs meanwhile; with ``--threads`` > 1 it is the
wall time. The phase lines print both.

DALLE-pytorch runs in its own virtual environment as a subprocess (see bench/README.md); its
time excludes its VAE decode, timed separately and subtracted. It is timed twice: plain
(``cond_scale=1``; DALLE-pytorch 1.6.6 then ignores ``use_cache``, its ``forward_with_cond_scale``
does not pass the cache on) and guided (``cond_scale`` = λ, where its cache is used). Without the
peer environment its figures are printed as skipped, with the reason.

SJD (``vqgen.sampling.sjd``) against the cached sampler, forward passes per call (every image of
a batch takes part in every pass; guided rows share it) and CPU seconds per image, at batch 1
and 8, plain and guided, on (a) the bundled model (``vqgen.pipelines.load_pipeline()``: Parti,
8x8 codes, its own settings: temperature 0.5, guidance λ = 2) and (b) the DALLE-sized model
above (random weights, top-k half, λ = 3). The final line's ``sjd_passes_ratio`` and
``sjd_cpu_ratio`` are AR ÷ SJD on the bundled model at batch 1 with its own (guided) settings.

Headline: ``best/dalle_cfg`` = images per second of vqgen's fastest exact decoder on the
DALLE-sized model at ``--batch`` with guidance λ (the cached sampler, compiled too with
``--compile``, or SJD, whichever measured faster in this run; ``best_cfg`` names it) ÷ images per
second of DALLE-pytorch's ``generate_images(use_cache=True, cond_scale=λ)`` at the same batch.
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
from vqgen.sampling import CachedLoop, Picker, make_plan
from vqgen.sampling.sjd import SJDStats, generate_sjd
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
clock = time.process_time if a["threads"] == 1 else time.perf_counter
torch.manual_seed(0)
vae = DiscreteVAE(image_size=a["image_size"], num_layers=a["vae_layers"], num_tokens=a["codebook"],
                  codebook_dim=256, hidden_dim=64)
dalle = DALLE(dim=a["dim"], vae=vae, num_text_tokens=a["text_vocab"], text_seq_len=a["text_len"],
              depth=a["depth"], heads=a["heads"], dim_head=a["dim"] // a["heads"]).eval()
params = sum(p.numel() for n, p in dalle.named_parameters() if not n.startswith("vae."))
blocks = sum(p.numel() for p in dalle.transformer.parameters())
text = torch.randint(1, a["text_vocab"], (a["batch"], a["text_len"]))
out = {"params": params, "block_params": blocks, "image_tokens": dalle.image_seq_len, "batch": a["batch"],
       "torch": torch.__version__}
with torch.inference_mode():
    codes = torch.randint(0, a["codebook"], (a["batch"], dalle.image_seq_len))
    vae.decode(codes)  # warm-up
    t0 = clock()
    vae.decode(codes)
    out["vae_seconds"] = vae_s = clock() - t0
    for name, scale in (("plain", 1.0), ("cfg", a["guidance"])):
        dalle.generate_images(text[:1], filter_thres=0.5, use_cache=True, cond_scale=scale)  # warm-up
        t0, w0 = clock(), time.perf_counter()
        dalle.generate_images(text, filter_thres=0.5, use_cache=True, cond_scale=scale)
        out[name + "_seconds"] = clock() - t0 - vae_s
        out[name + "_wall"] = time.perf_counter() - w0
print(json.dumps(out))
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


CLOCK = time.process_time  # set in main: CPU time with one thread, else wall time


def timed(fn, repeats: int = 1) -> tuple[float, float]:
    """Best time (``CLOCK``) of ``repeats`` calls and the wall time of that call, in seconds."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        t0, w0 = CLOCK(), time.perf_counter()
        fn()
        best = min(best, (CLOCK() - t0, time.perf_counter() - w0))
    return best


def step_breakdown(model: Unified, cond: Condition, config: SamplingConfig, reps: int) -> dict:
    """Mean time of one decode step (network + picker), of the picker alone, and of the step's
    matrix products alone: the same products with the model's own weights and the cache's own
    key/value buffers (so the same bytes stream from memory), through ``torch.mm`` /
    ``torch.bmm`` into preallocated outputs."""
    c = model.config
    with torch.inference_mode():
        plan = make_plan(model, cond, None, config, torch.Generator().manual_seed(0))
        dec = CachedLoop(model, plan, config)
        logits = dec.prefill()
        steps = min(reps, plan.steps - 1)
        t0 = CLOCK()
        for _ in range(steps):
            logits = dec.step(logits)
        step_s = (CLOCK() - t0) / steps

        pick = Picker(plan)
        t0 = CLOCK()
        for _ in range(steps):
            pick.t.zero_()
            pick(logits)
        pick_s = (CLOCK() - t0) / steps

        rows, h, dh, t_max = dec.cache.batch_size, c.heads, c.dim // c.heads, dec.cache.max_len
        x, y = torch.randn(rows, c.dim), torch.randn(rows, c.mlp_dim)  # (B', D), (B', M)
        products = []  # (fn, a, b, out): per block qkv, proj, fc1, fc2 (mm), q·k^T and scores·v (bmm); the head
        for i, blk in enumerate(model.blocks):
            for a, lin in ((x, blk.attn.qkv), (x, blk.attn.proj), (x, blk.mlp.fc1), (y, blk.mlp.fc2)):
                products.append((torch.mm, a, lin.weight.t(), torch.empty(rows, lin.out_features)))
            kt = dec.cache.k[i].view(rows * h, t_max, dh).transpose(1, 2)  # (B'H, Dh, T_max)
            scores = torch.empty(rows * h, 1, t_max)  # (B'H, 1, T_max)
            products.append((torch.bmm, torch.randn(rows * h, 1, dh), kt, scores))
            products.append((torch.bmm, scores, dec.cache.v[i].view(rows * h, t_max, dh), torch.empty(rows * h, 1, dh)))
        products.append((torch.mm, x, model.head.weight.t(), torch.empty(rows, c.codebook_size)))

        def matmuls():
            for fn, a, b, out in products:
                fn(a, b, out=out)

        matmuls()
        t0 = CLOCK()
        for _ in range(steps):
            matmuls()
        mm_s = (CLOCK() - t0) / steps
    return {"step_ms": 1e3 * step_s, "picker_ms": 1e3 * pick_s, "matmul_ms": 1e3 * mm_s}


SJD_PROMPTS = ["a red circle above a blue square", "two green triangles", "a small yellow square",
               "a purple circle to the left of an orange triangle", "three blue circles", "a large red square",
               "a green circle below a yellow triangle", "an orange square to the right of a purple circle"]


def sjd_compare(model, cond: Condition, base: SamplingConfig, window: int, reps: int) -> dict:
    """The cached sampler and SJD on the same rows and seeds (``reps`` calls each, after a
    warm-up): forward passes per call (AR: the prefill and one step per code but the last) and
    CPU seconds (``CLOCK``) per image."""
    rows = cond.batch_size
    ar_cfg, sjd_cfg = replace(base, decoder="autoregressive"), replace(base, decoder="sjd", sjd_window=window)
    seed = lambda r: torch.Generator().manual_seed(r)  # noqa: E731
    generate(model, cond, config=ar_cfg, generator=seed(0))
    generate_sjd(model, cond, config=sjd_cfg, generator=seed(0))
    ar_s = sum(timed(lambda: generate(model, cond, config=ar_cfg, generator=seed(r)))[0] for r in range(reps))
    passes, sjd_s = [], 0.0
    for r in range(reps):
        st = SJDStats()
        sjd_s += timed(lambda: generate_sjd(model, cond, config=sjd_cfg, generator=seed(r), stats=st))[0]
        passes.append(st.passes)
    ar_p = model.image_seq_len - cond.prefix_len
    out = {"ar_passes": ar_p, "sjd_passes": sum(passes) / reps, "ar_cpu": ar_s / reps / rows,
           "sjd_cpu": sjd_s / reps / rows}
    out["passes_ratio"], out["cpu_ratio"] = ar_p / out["sjd_passes"], out["ar_cpu"] / out["sjd_cpu"]
    return out


def sjd_figures(args, dalle_model: Unified, dalle_cond: Condition, dalle_cfgs: dict) -> dict:
    """``sjd_compare`` on the bundled model and the DALLE-sized one, batch 1 and 8, plain and
    guided; prints a line per case; {(model, batch, plain|cfg): figures}."""
    from vqgen.pipelines import load_pipeline

    pipe = load_pipeline()
    bundled = pipe.transformer.eval()
    own = replace(pipe.sampling, rerank=1)
    cases = {"bundled": (bundled, lambda b: pipe.condition(SJD_PROMPTS[:b], "cpu"),
                         {"plain": replace(own, guidance_scale=1.0), "cfg": own}, args.sjd_reps),
             "dalle": (dalle_model, lambda b: dalle_cond.index(slice(0, b)), dalle_cfgs, 1)}
    figs = {}
    for name, (model, cond_of, cfgs, reps) in cases.items():
        for batch in (1, 8):
            cond = cond_of(batch)
            for kind, cfg in cfgs.items():
                f = figs[name, batch, kind] = sjd_compare(model, cond, cfg, args.sjd_window, reps)
                print(f"sjd {name} batch {batch} {kind} (window {args.sjd_window}, λ={cfg.guidance_scale:g}, "
                      f"T={cfg.temperature:g}, top-k {cfg.top_k}): passes/call AR {f['ar_passes']} SJD "
                      f"{f['sjd_passes']:.1f} ({f['passes_ratio']:.2f}x fewer); CPU s/image AR {f['ar_cpu']:.3f} "
                      f"SJD {f['sjd_cpu']:.3f} ({f['cpu_ratio']:.2f}x less)", flush=True)
    return figs


def best_exact(args, model: Unified, figs: dict, sjd: dict) -> tuple[str, float]:
    """(name, images per second) of the fastest exact decoder measured on the DALLE-sized model at
    ``--batch`` with guidance: the cached sampler (eager, and compiled with ``--compile``) and SJD
    (the batch-8 SJD figure is its only guided run at that batch; used when ``--batch`` is 8)."""
    cands = {"autoregressive": figs["cached_cfg"] / model.image_seq_len}
    if "compiled_cfg" in figs:
        cands["autoregressive+compile"] = figs["compiled_cfg"] / model.image_seq_len
    if ("dalle", args.batch, "cfg") in sjd:
        cands["sjd"] = 1.0 / sjd["dalle", args.batch, "cfg"]["sjd_cpu"]
    return max(cands.items(), key=lambda kv: kv[1])


def run_peer(args) -> dict:
    py = args.peer_python
    if not py or not Path(py).exists():
        return {"skipped": f"no peer python at {py!r} (build it as bench/README.md says)"}
    spec = dict(dim=args.dim, depth=args.depth, heads=args.heads, text_len=args.text_len, text_vocab=args.text_vocab,
                codebook=args.codebook, batch=args.batch, threads=args.threads, guidance=args.guidance,
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
    for name in ("plain", "cfg"):
        out[name + "_tok_s"] = out["batch"] * out["image_tokens"] / out[name + "_seconds"]
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
    p.add_argument("--no-sjd", action="store_true", help="skip the SJD figures")
    p.add_argument("--sjd-window", type=int, default=SamplingConfig().sjd_window, help="SJD window (codes per pass)")
    p.add_argument("--sjd-reps", type=int, default=4, help="seeds per SJD/AR figure on the bundled model")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.threads == 1 else time.perf_counter

    model = build_model(args)
    cond = text_cond(args)
    n_tok = args.batch * model.image_seq_len
    blocks = sum(p.numel() for p in model.blocks.parameters())
    params = sum(p.numel() for p in model.parameters())
    print(f"model: unified dim={args.dim} depth={args.depth} heads={args.heads} mlp={args.mlp_dim} "
          f"blocks={blocks / 1e6:.2f}M params={params / 1e6:.2f}M; {args.text_len} text + {model.image_seq_len} image "
          f"tokens, batch {args.batch}, threads {args.threads}, torch {torch.__version__}; times are "
          f"{'CPU' if args.threads == 1 else 'wall'} seconds", flush=True)

    plain = SamplingConfig(top_k=args.codebook // 2)  # DALLE-pytorch's filter_thres=0.5 keeps half the codes
    guided = SamplingConfig(top_k=args.codebook // 2, guidance_scale=args.guidance)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    figs = {}
    generate(model, cond, config=plain, generator=gen())  # warm-up
    for name, cfg in (("plain", plain), ("cfg", guided)):
        s, w = timed(lambda: generate(model, cond, config=cfg, generator=gen()), repeats=2)
        figs[f"cached_{name}"] = n_tok / s
        print(f"cached {name}: {s:.2f}s (wall {w:.2f}s)  {n_tok / s:.0f} tok/s", flush=True)
        if args.compile:
            ccfg = replace(cfg, compile=True)
            t0 = time.perf_counter()
            generate(model, cond, config=ccfg, generator=gen())  # compiles
            first = time.perf_counter() - t0
            s, w = timed(lambda: generate(model, cond, config=ccfg, generator=gen()), repeats=2)
            figs[f"compiled_{name}"] = n_tok / s
            print(f"compiled {name}: {s:.2f}s (wall {w:.2f}s)  {n_tok / s:.0f} tok/s (first call with compilation "
                  f"{first:.0f}s wall)", flush=True)
        if not args.no_naive:
            s, w = timed(lambda: generate_naive(model, cond, config=cfg, generator=gen()))
            figs[f"naive_{name}"] = n_tok / s
            print(f"naive {name}: {s:.2f}s (wall {w:.2f}s)  {n_tok / s:.1f} tok/s", flush=True)

    br = {name: step_breakdown(model, cond, cfg, reps=128) for name, cfg in (("plain", plain), ("cfg", guided))}
    for name, b in br.items():
        print(f"decode step ({name}): {b['step_ms']:.2f} ms; its matmuls alone {b['matmul_ms']:.2f} ms "
              f"({100 * b['matmul_ms'] / b['step_ms']:.0f}%); picker {b['picker_ms']:.2f} ms", flush=True)

    sjd = {} if args.no_sjd else sjd_figures(args, model, cond, {"plain": plain, "cfg": guided})

    peer = run_peer(args)
    if "skipped" in peer:
        print(f"dalle-pytorch: skipped ({peer['skipped']})", flush=True)
        peer_fig = "dalle=skipped"
    else:
        print(f"dalle-pytorch {peer['torch']}: transformer {peer['block_params'] / 1e6:.2f}M "
              f"(with embeddings {peer['params'] / 1e6:.2f}M); VAE decode {peer['vae_seconds']:.2f}s excluded", flush=True)
        for name, how in (("plain", "cond_scale=1, its cache unused"), ("cfg", f"cond_scale={args.guidance:g}, cached")):
            print(f"dalle-pytorch {name} ({how}): {peer[name + '_seconds']:.1f}s (wall {peer[name + '_wall']:.1f}s)  "
                  f"{peer[name + '_tok_s']:.1f} tok/s", flush=True)
        peer_fig = (f"dalle={peer['plain_tok_s']:.1f}tok/s vqgen/dalle={figs['cached_plain'] / peer['plain_tok_s']:.1f}x "
                    f"dalle_cfg={peer['cfg_tok_s']:.1f}tok/s "
                    f"vqgen/dalle_cfg={figs['cached_cfg'] / peer['cfg_tok_s']:.1f}x")
        # the headline: vqgen's fastest exact decoder at this batch, guided, against DALLE-pytorch's guided cached call
        best = best_exact(args, model, figs, sjd)
        peer_img_s = peer["batch"] / peer["cfg_seconds"]
        print(f"headline (batch {args.batch}, λ={args.guidance:g}): vqgen's fastest exact decoder {best[0]} "
              f"{best[1]:.3f} images/CPU-s, DALLE-pytorch cond_scale={args.guidance:g} cached {peer_img_s:.3f} "
              f"images/CPU-s: {best[1] / peer_img_s:.2f}x", flush=True)
        peer_fig += f" best/dalle_cfg={best[1] / peer_img_s:.1f}x best_cfg={best[0]}"

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
    if sjd:
        head = sjd["bundled", 1, "cfg"]
        parts.append(f"sjd_passes_ratio={head['passes_ratio']:.2f}x sjd_cpu_ratio={head['cpu_ratio']:.2f}x")
        for (name, batch, kind), f in sjd.items():
            if (name, batch, kind) != ("bundled", 1, "cfg"):
                parts.append(f"sjd_{name}_b{batch}_{kind}={f['passes_ratio']:.2f}x/{f['cpu_ratio']:.2f}x")
    print("sampling: " + " ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
