"""CogLM against plain next-token training: filling a masked region, and scoring captions.

    python bench/coglm_infill.py --coglm RUN_A --plain RUN_B --codes CODES [--num 256]

RUN_A was trained with ``--set model.coglm_mix=...``, RUN_B the same without it, both on CODES.
On the held-out records (the trainer's seeded split), with the same seeded random regions
(RUN_A's ``coglm_patch`` boxes) for both models:

* ``infill_acc``: RUN_A's :meth:`Unified.infill` (most likely code, raster order) — the share of
  region cells equal to the original codes; ``ar_fill_acc``: RUN_B regenerating the same cells in
  raster order with its causal mask (the cells after each one unseen), keeping the rest;
  ``*_fg``: the same over the region cells whose code is not their image's most frequent one
  (on ``shapes``, the cells of the objects rather than the background);
* ``tf_acc_*`` / ``tf_nll_*``: top-1 accuracy and loss per region cell with the true codes as
  input (teacher forcing): RUN_A under the CogLM mask, RUN_B left-to-right, and RUN_A
  left-to-right (``*_coglm_ar``: the same weights without the context after each cell);
* ``caption_top1``: the share of images whose own caption has a lower caption NLL (RUN_A's text
  head, the whole image visible) than another record's different caption;
* ``val_loss_*``: each run's last plain next-token ``val_loss`` (what mixing costs sampling).

The final line holds every figure.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vqgen.data.codes import CodeDataset
from vqgen.io import load_pretrained
from vqgen.transformer.train import split_indices


def last_val_loss(run: Path) -> float:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in rows if "val_loss" in r][-1]


@torch.no_grad()
def ar_fill(model, codes: torch.Tensor, region: torch.Tensor, cond) -> torch.Tensor:
    """The causal model's greedy regeneration of ``region`` (B, N) in raster order, rest kept."""
    codes = codes.clone()  # (B, N)
    for i in region.any(0).nonzero().flatten().tolist():
        tok = model(codes, cond).logits[:, i].argmax(-1)  # (B,)
        codes[:, i] = torch.where(region[:, i], tok, codes[:, i])
    return codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coglm", type=Path, required=True)
    ap.add_argument("--plain", type=Path, required=True)
    ap.add_argument("--codes", type=Path, required=True)
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    cog, plain = load_pretrained(a.coglm / "model").eval(), load_pretrained(a.plain / "model").eval()
    ds = CodeDataset.load(a.codes)
    saved = json.loads((a.coglm / "config.json").read_text())["train"]
    _, val = split_indices(len(ds), saved["val_fraction"], saved["seed"])
    idx = val[: a.num].tolist()
    codes = ds.codes.flatten(1)[idx].long()  # (B, N)
    texts = [ds.texts[i] for i in idx]
    cond_c, cond_p = cog.text_condition(texts), plain.text_condition(texts)
    region = cog.patch_regions(len(idx), generator=torch.Generator().manual_seed(a.seed))  # (B, N)

    t0 = time.process_time()
    filled = cog.infill(codes, region, cond_c, temperature=0)  # (B, N)
    infill_cpu = time.process_time() - t0
    ar = ar_fill(plain, codes, region, cond_p)  # (B, N)
    logits_c = cog.coglm_logits(codes, cond_c, region)[0]  # (B, N, V)
    logits_p = plain(codes, cond_p).logits  # (B, N, V)
    logits_ca = cog(codes, cond_c).logits  # (B, N, V): RUN_A's causal path

    fg = region & (codes != codes.mode(1).values[:, None])  # (B, N): region cells off the background

    def acc(x, where=region):
        return (x[where] == codes[where]).float().mean().item()

    def tf(logits):
        nll = F.cross_entropy(logits.transpose(1, 2), codes, reduction="none")  # (B, N)
        return (logits.argmax(-1)[region] == codes[region]).float().mean().item(), nll[region].mean().item()

    (tf_acc_c, tf_nll_c), (tf_acc_p, tf_nll_p), (tf_acc_ca, tf_nll_ca) = tf(logits_c), tf(logits_p), tf(logits_ca)
    others = [next(texts[(i + k) % len(texts)] for k in range(1, len(texts)) if texts[(i + k) % len(texts)] != t)
              for i, t in enumerate(texts)]
    own = cog.caption_nll(codes, cond_c)  # (B,)
    wrong = cog.caption_nll(codes, cog.text_condition(others))  # (B,)
    figures = {
        "infill_acc": acc(filled), "ar_fill_acc": acc(ar),
        "infill_acc_fg": acc(filled, fg), "ar_fill_acc_fg": acc(ar, fg),
        "tf_acc_coglm": tf_acc_c, "tf_acc_plain": tf_acc_p, "tf_nll_coglm": tf_nll_c, "tf_nll_plain": tf_nll_p,
        "tf_acc_coglm_ar": tf_acc_ca, "tf_nll_coglm_ar": tf_nll_ca,
        "caption_top1": (own < wrong).float().mean().item(),
        "val_loss_coglm": last_val_loss(a.coglm), "val_loss_plain": last_val_loss(a.plain),
        "region_cells": region.sum(1).float().mean().item(), "images": len(idx),
        "infill_passes": int(region.any(0).sum()), "infill_cpu_s": infill_cpu,
    }
    print("coglm_infill: " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in figures.items()))


if __name__ == "__main__":
    main()
