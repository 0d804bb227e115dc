"""Evaluations built on the exact evaluator: a folder of images with specs, and the accuracy a
tokenizer's encode → decode round trip leaves (the ceiling of any generator writing its codes)."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vqgen.errors import VqgenError
from vqgen.shapes.evaluator import score
from vqgen.shapes.vocabulary import CATEGORIES, category_of, validate_spec


@dataclass
class FolderScore:
    """Accuracy over a folder: overall, per category, per kind of criterion; skipped rows by reason."""

    num: int
    overall: float
    categories: dict[str, dict[str, float]]   # category -> {"n", "accuracy"}
    criteria: dict[str, float]                # present / count / size / relation -> pass rate
    skipped: dict[str, int]
    results: list[dict] = field(repr=False, default_factory=list)  # per image: file_name, text, category, score

    def summary(self) -> dict[str, Any]:
        """The JSON summary (everything but the per-image results)."""
        return {"num": self.num, "overall": self.overall, "categories": self.categories,
                "criteria": self.criteria, "skipped": self.skipped}


def score_folder(root: str | Path, progress: bool = True) -> FolderScore:
    """Score every image of an image folder whose ``metadata.jsonl`` rows carry a ``spec``.

    Rows whose spec is missing or invalid are skipped and counted (``missing_spec``,
    ``bad_spec``), as are unreadable images (the image folder's reasons); a folder without
    ``metadata.jsonl`` or without a single usable spec is an error.
    """
    from vqgen.data.folder import METADATA_NAME, ImageFolder
    from vqgen.runtime import progress as progress_bar

    root = Path(root)
    if not root.is_dir():
        raise VqgenError(f"image folder {root} does not exist or is not a directory")
    if not (root / METADATA_NAME).is_file():
        raise VqgenError(f"{root} has no {METADATA_NAME}; shapes evaluation needs one with a 'spec' per image")
    data = ImageFolder(root)
    skipped: Counter = Counter(data.skipped)
    results = []
    by_category: dict[str, list[bool]] = defaultdict(list)
    by_criterion: dict[str, list[bool]] = defaultdict(list)
    for i in progress_bar(range(len(data)), desc=f"scoring {root.name}", enabled=progress):
        rec = data[i]
        if rec.meta.get("spec") is None:
            skipped["missing_spec"] += 1
            continue
        try:
            spec = validate_spec(rec.meta["spec"])
        except VqgenError:
            skipped["bad_spec"] += 1
            continue
        s = score(rec.image, spec)
        category = rec.meta.get("category") or category_of(spec)
        by_category[category].append(s.passed)
        for name, ok in s.criteria.items():
            by_criterion["relation" if name.startswith("relation") else name.split(".")[1]].append(ok)
        results.append({"file_name": rec.key, "text": rec.text, "category": category, **s.to_dict()})
    if not results:
        raise VqgenError(f"{root}/{METADATA_NAME} has no row with a usable 'spec' "
                         f"(skipped: {dict(skipped) or 'none'})")
    passed = [r["passed"] for r in results]
    return FolderScore(
        num=len(results), overall=round(sum(passed) / len(passed), 4),
        categories={c: {"n": len(v), "accuracy": round(sum(v) / len(v), 4)} for c, v in sorted(by_category.items())},
        criteria={c: round(sum(v) / len(v), 4) for c, v in sorted(by_criterion.items())},
        skipped=dict(sorted(skipped.items())), results=results)


def write_results(results: list[dict], path: str | Path) -> None:
    """Write per-image results as JSON lines."""
    from vqgen.io import atomic_write_text

    atomic_write_text(Path(path), "".join(json.dumps(r) + "\n" for r in results))


def tokenizer_round_trip(tokenizer, suite: list[dict], samples: int = 2, seed: int = 0,
                         batch_size: int = 128) -> dict[str, Any]:
    """Score each suite spec's renders before and after ``tokenizer.decode(tokenizer.encode(x))``.

    The round-trip accuracy bounds what any generator writing this tokenizer's codes can reach.
    Renders use seeds ``seed .. seed + samples - 1`` at the tokenizer's image size.
    """
    import torch

    from vqgen.data.image import to_tensor
    from vqgen.shapes.scenes import render_spec

    size = int(tokenizer.config.image_size)
    rows = [(item, render_spec(item["spec"], size, seed=s)) for s in range(seed, seed + samples) for item in suite]
    truth, trip = [], []
    for i in range(0, len(rows), batch_size):
        part = rows[i:i + batch_size]
        x = torch.stack([to_tensor(im) for _, im in part])  # (B, 3, H, W)
        with torch.no_grad():
            y = tokenizer.decode(tokenizer.encode(x)).clamp(0, 1)  # (B, 3, H, W)
        for (item, im), rec in zip(part, y):
            arr = (rec.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
            truth.append((item["category"], score(im, item["spec"]).passed))
            trip.append((item["category"], score(arr, item["spec"]).passed))

    def rate(pairs, category=None):
        hits = [ok for c, ok in pairs if category in (None, c)]
        return round(sum(hits) / max(len(hits), 1), 4)

    cats = sorted({c for c, _ in truth}, key=lambda c: CATEGORIES.index(c) if c in CATEGORIES else len(CATEGORIES))
    return {"num": len(rows), "ground_truth": rate(truth), "round_trip": rate(trip),
            "categories": {c: {"n": sum(1 for k, _ in truth if k == c), "ground_truth": rate(truth, c),
                               "round_trip": rate(trip, c)} for c in cats}}
