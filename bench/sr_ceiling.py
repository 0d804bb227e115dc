"""How much of the suite survives super-resolution from *true* low-resolution codes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sr_ceiling.py --model runs/cogview2/pipeline [--samples 2]

The suite's ground-truth scenes are rendered at the tokenizers' size (seeds 0..samples-1, as
``vqgen eval shapes --tokenizer``), encoded to 8x8 codes by the hierarchical model's low stage
tokenizer (``--low-tokenizer``, the bundled one by default) and to 16x16 codes by the pipeline's
tokenizer, and scored by the shapes evaluator after:

* ``low_round_trip``: 8x8 codes decoded by the low tokenizer (the flat model's ceiling);
* ``high_round_trip``: 16x16 codes decoded (the hierarchy's ceiling);
* ``direct``: the direct super-resolution pass from the true 8x8 codes and the prompt;
* ``lopar``: then LoPAR with the pipeline's settings.

The gap between ``high_round_trip`` and ``direct``/``lopar`` is what the super-resolution model
loses by itself, apart from the low stage's mistakes. The final line:
``sr_ceiling: low_round_trip=… high_round_trip=… direct=… lopar=…``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a hierarchical pipeline directory")
    p.add_argument("--low-tokenizer", default=str(root / "src/vqgen/assets/default_model/tokenizer"))
    p.add_argument("--prompts", default=None, help="suite file or name (default: the shipped suite)")
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(1)

    from vqgen.data.image import to_tensor
    from vqgen.io import load_pretrained
    from vqgen.pipelines import Pipeline
    from vqgen.sampling.direct_sr import direct_pass
    from vqgen.sampling.lopar import lopar_fill, remask
    from vqgen.shapes.evaluate import score
    from vqgen.shapes.scenes import render_spec
    from vqgen.shapes.suite import load_suite

    pipe = Pipeline.from_pretrained(args.model)
    sr, high_tok, cfg = pipe.transformer, pipe.tokenizer, pipe.sampling
    low_tok = load_pretrained(args.low_tokenizer)
    size = int(high_tok.config.image_size)
    suite = load_suite(args.prompts)
    rows = [(item, render_spec(item["spec"], size, seed=s)) for s in range(args.samples) for item in suite]
    kinds = ("low_round_trip", "high_round_trip", "direct", "lopar")
    hits: dict[str, list[tuple[str, bool]]] = {k: [] for k in kinds}
    g = torch.Generator().manual_seed(0)
    for i in range(0, len(rows), args.batch):
        part = rows[i:i + args.batch]
        x = torch.stack([to_tensor(im) for _, im in part])  # (B, 3, H, W)
        with torch.inference_mode():
            low = low_tok.encode(x).flatten(1)  # (B, n)
            high = high_tok.encode(x)  # (B, h, w)
            cond = sr.text_condition([item["prompt"] for item, _ in part])
            u = torch.rand(3, len(part), sr.image_seq_len, generator=g)  # (3, B, N)
            direct = direct_pass(sr, low, cond, u[1], cfg)  # (B, N)
            refined, _ = lopar_fill(lambda z: sr.sr_logits(low, z, cond), direct, remask(u[0], cfg.lopar_remask),
                                    u[2], sr.grid, sr.mask_id, cfg)
            images = {"low_round_trip": low_tok.decode(low.view(-1, *low_tok.grid_size)),
                      "high_round_trip": high_tok.decode(high),
                      "direct": high_tok.decode(direct.view(-1, *sr.grid)),
                      "lopar": high_tok.decode(refined.view(-1, *sr.grid))}
        for k, y in images.items():
            for (item, _), rec in zip(part, y.clamp(0, 1)):
                arr = (rec.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
                hits[k].append((item["category"], score(arr, item["spec"]).passed))
    out = {}
    for k, pairs in hits.items():
        cats = sorted({c for c, _ in pairs})
        out[k] = {"overall": round(sum(ok for _, ok in pairs) / len(pairs), 4),
                  **{c: round(sum(ok for cc, ok in pairs if cc == c) / sum(1 for cc, _ in pairs if cc == c), 4)
                     for c in cats}}
        print(k, out[k])
    print(json.dumps({"num": len(rows), "sampling": {"sr_temperature": cfg.sr_temperature,
                                                     "lopar_remask": cfg.lopar_remask,
                                                     "lopar_window": cfg.lopar_window}, "results": out}))
    print("sr_ceiling: " + " ".join(f"{k}={v['overall']:.3f}" for k, v in out.items()) + f" images={len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
