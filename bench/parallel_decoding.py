"""Parallel vs autoregressive writing of the 16x16 high-resolution grid (CogView2's hierarchy).

    OMP_NUM_THREADS=1 .venv/bin/python bench/parallel_decoding.py [--model PIPELINE_DIR] [--repeats 2]

On the *same* super-resolution model (a :class:`~vqgen.transformer.hierarchical.HierarchicalSR`;
random weights of the ``small`` preset unless ``--model`` names a hierarchical pipeline, whose
model is used), given the text and 8x8 low-resolution codes, the whole 16x16 grid is written:

* ``ar``: token by token, one cell per forward pass in raster order (LoPAR with a 16x16 window in
  raster order, every cell masked: 256 passes; the model is bidirectional, so each pass runs the
  whole stream, as CogView2's iterative model would without a cache);
* ``direct``: one pass (direct super-resolution);
* ``lopar``: the direct pass, then LoPAR over ``--remask`` of the cells with ``--window``-sided
  windows (anti-diagonal order: 2k - 1 passes).

Beside them, what the issue's images-per-CPU-second goal compares: ``flat``, a KV-cached
unified text-then-image model of the same width and depth writing the 16x16 grid token by token
(the ``autoregressive`` decoder, guidance ``--guidance``), and ``hier``, the whole hierarchy
(the pipeline's low stage, or a random ``parti-small``-sized one, at the same guidance, then
direct SR + LoPAR). Times are ``time.process_time`` of one call with one intra-op thread, best of
``--repeats`` after a warm-up, at batch 1 and batch 8 (images per call). The final line:
``parallel_decoding: passes_ar=… passes_lopar=… lopar_vs_ar=<CPU-time ratio at batch 1>x …``.
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def best_cpu(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def build(args):
    """(super-resolution model with a low stage, flat unified model of the same size)."""
    from vqgen.config import apply_overrides, get_preset
    from vqgen.transformer import build_model
    from vqgen.transformer.hierarchical import HierarchicalSR  # noqa: F401  (registers the presets)

    if args.model:
        from vqgen.pipelines import Pipeline

        sr = Pipeline.from_pretrained(args.model).transformer
    else:
        from vqgen.text.bpe import TextTokenizer

        torch.manual_seed(0)
        tok = TextTokenizer.train(["a red circle above two blue squares", "a small green triangle"] * 8,
                                  vocab_size=64, min_frequency=1)
        low = build_model(apply_overrides(get_preset("transformer", "parti-small"),
                                          ["model.codebook_size=256", f"model.text.vocab_size={tok.vocab_size}"]).model)
        low.text_tokenizer = tok
        sr = build_model(apply_overrides(get_preset("hierarchical", "small"),
                                         [f"model.text.vocab_size={tok.vocab_size}"]).model)
        sr.text_tokenizer = tok
        sr.attach_low(low)
    c = sr.config
    flat = build_model(apply_overrides(get_preset("transformer", "unified-small"), [
        f"model.dim={c.dim}", f"model.depth={c.depth}", f"model.heads={c.heads}", f"model.mlp_dim={c.mlp_dim}",
        f"model.grid={','.join(map(str, c.grid))}", f"model.codebook_size={c.codebook_size}",
        f"model.text.vocab_size={c.text.vocab_size}", f"model.text.max_len={c.text.max_len}", "model.dropout=0.0"]).model)
    flat.text_tokenizer = sr.text_tokenizer
    return sr.eval(), flat.eval()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a hierarchical pipeline directory (default: random small models)")
    p.add_argument("--window", type=int, default=4, help="LoPAR window side (default 4)")
    p.add_argument("--remask", type=float, default=0.5, help="LoPAR re-mask fraction (default 0.5)")
    p.add_argument("--guidance", type=float, default=2.0, help="guidance of the flat model and the low stage")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batches", default="1,8")
    args = p.parse_args()
    torch.set_num_threads(1)

    from vqgen.sampling import SamplingConfig, generate
    from vqgen.sampling.direct_sr import HierarchicalStats
    from vqgen.sampling.lopar import generate_lopar, lopar_fill

    sr, flat = build(args)
    n = sr.image_seq_len
    lopar_cfg = SamplingConfig(decoder="lopar", lopar_window=args.window, lopar_remask=args.remask,
                               guidance_scale=args.guidance)
    ar_cfg = SamplingConfig(lopar_window=max(sr.grid), lopar_order="raster")
    one_cfg = SamplingConfig(lopar_window=1)
    figures: dict[str, dict] = {}
    for b in [int(x) for x in args.batches.split(",")]:
        g = torch.Generator().manual_seed(b)
        cond = sr.text_condition(["a red circle above two blue squares"] * b)
        low = torch.randint(0, sr.config.low_codebook_size, (b, sr.low_seq_len), generator=g)
        codes = torch.randint(0, sr.codebook_size, (b, n), generator=g)
        every = torch.ones(b, n, dtype=torch.bool)
        u = torch.rand(3, b, n, generator=g)
        part = (torch.arange(n)[None] < round(args.remask * n)).expand(b, n)[:, torch.randperm(n, generator=g)]
        passes = {}

        def predict(x):
            return sr.sr_logits(low, x, cond)

        def run(name, cfg, masked):
            def fn():
                passes[name] = lopar_fill(predict, codes, masked, u[2], sr.grid, sr.mask_id, cfg)[1]
            return fn

        def lopar():
            run("direct", one_cfg, every)()
            run("remask", lopar_cfg, part)()
            passes["lopar"] = passes["direct"] + passes["remask"]

        stats = HierarchicalStats()
        with torch.inference_mode():
            row = {"ar": best_cpu(run("ar", ar_cfg, every), args.repeats),
                   "direct": best_cpu(run("direct", one_cfg, every), args.repeats),
                   "lopar": best_cpu(lopar, args.repeats),
                   "flat": best_cpu(lambda: generate(flat, cond, config=SamplingConfig(guidance_scale=args.guidance),
                                                     generator=torch.Generator().manual_seed(0)), args.repeats),
                   "hier": best_cpu(lambda: generate_lopar(sr, cond, config=lopar_cfg, stats=stats,
                                                           generator=torch.Generator().manual_seed(0)), args.repeats)}
        row.update({f"passes_{k}": v for k, v in passes.items()}, hier_sr_passes=stats.sr_passes,
                   hier_low_steps=stats.low_steps, flat_steps=n)
        figures[f"b{b}"] = row
        print(f"batch {b}: " + " ".join(f"{k}={v:.3f}s" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)
    print(json.dumps({"window": args.window, "remask": args.remask, "guidance": args.guidance, "figures": figures}))
    b1 = figures[next(iter(figures))]
    tail = " ".join(f"{k}_lopar_vs_ar={r['ar'] / r['lopar']:.1f}x {k}_hier_vs_flat={r['flat'] / r['hier']:.2f}x"
                    for k, r in figures.items())
    print(f"parallel_decoding: passes_ar={b1['passes_ar']} passes_lopar={b1['passes_lopar']} "
          f"passes_direct={b1['passes_direct']} lopar_vs_ar={b1['ar'] / b1['lopar']:.1f}x "
          f"direct_vs_ar={b1['ar'] / b1['direct']:.1f}x hier_vs_flat={b1['flat'] / b1['hier']:.2f}x {tail} "
          f"window={args.window} remask={args.remask} guidance={args.guidance}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
