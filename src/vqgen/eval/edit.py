"""The shapes edit suite and its evaluation (``vqgen eval edits --model DIR``).

Each edit of the suite (``vqgen/prompts/shapes_edits.jsonl``, :func:`build_edit_suite`) is a
rendered source scene (its spec, layout seed and size), one object of it, the object's bounding
box, and the expected spec: the source with that object's colour *or* shape changed; the prompt
is the expected spec's canonical caption (CogLM models are trained on whole-scene captions)::

    {"id": "relation-3", "category": "relation", "change": "color", "object": 1,
     "source_spec": {...}, "seed": 1234, "size": 64, "box": [x0, y0, x1, y1],
     "source_prompt": "...", "prompt": "...", "spec": {...}}

:func:`evaluate_edits` edits every source with a pipeline (:meth:`TextToImagePipeline.edit`) and
reports the share of edits the shapes evaluator reads as the expected spec, beside the ceilings
of the tokenizer's round trip (source spec on the source; expected spec on the target, i.e. the
same layout rendered with the object changed) and the floor of not editing (the source's round
trip read as the expected spec). Outside the box it compares pixels with the source: PSNR of the
edited image and of the tokenizer's own round trip of the source (each over the pooled squared
errors of all edits); the goal is a gap within 1 dB. Outside the regenerated *cells* the codes
are the source's, so there the edited image differs from the round trip only as far as the
decoder spreads a changed cell (``psnr_vs_roundtrip_outside_cells_db``).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqgen.errors import VqgenError
from vqgen.shapes.captions import caption_of
from vqgen.shapes.scenes import PlacedObject, layout, render, sample_spec
from vqgen.shapes.suite import PROMPTS_DIR
from vqgen.shapes.vocabulary import COLORS, SHAPES, validate_spec

EDIT_SUITE_PATH = PROMPTS_DIR / "shapes_edits.jsonl"
EDIT_SIZES = {"single": 20, "binding": 20, "relation": 20}  # edits per source category, colour and shape alternating
EDIT_SEED = 3
EDIT_IMAGE_SIZE = 64
CHANGES = ("color", "shape")
PSNR_GOAL_DB = 1.0
ACCURACY_GOAL = 0.8


# ----------------------------------------------------------------------------- the suite
def _placed(item: dict) -> list[PlacedObject]:
    return layout(item["source_spec"], item["size"], np.random.default_rng(item["seed"]))


def source_image(item: dict):
    """The source scene of an edit, rendered (PIL)."""
    return render(_placed(item), item["size"])


def target_image(item: dict):
    """The edit's ideal result: the source layout with the object's colour or shape changed (PIL)."""
    objs = [replace(o, **{item["change"]: item["spec"]["objects"][item["object"]][item["change"]]})
            if o.entry == item["object"] else o for o in _placed(item)]
    return render(objs, item["size"])


def build_edit_suite(seed: int = EDIT_SEED, size: int = EDIT_IMAGE_SIZE) -> list[dict]:
    """The edit suite (deterministic): ``EDIT_SIZES[category]`` edits per category of one-object
    entries, alternately a colour and a shape change of a random object to a random other value
    that keeps the spec unambiguous (and, in binding scenes, every shape and colour distinct)."""
    rng = np.random.default_rng(seed)
    items: list[dict] = []
    for category, num in EDIT_SIZES.items():
        for j in range(num):
            change = CHANGES[j % 2]
            spec = validate_spec(sample_spec(rng, category))
            render_seed = int(rng.integers(2 ** 31))
            placed = layout(spec, size, np.random.default_rng(render_seed))
            obj = placed[int(rng.integers(len(placed)))]
            taken = {(o["shape"], o["color"]) for i, o in enumerate(spec["objects"]) if i != obj.entry}
            used = {o[change] for i, o in enumerate(spec["objects"]) if i != obj.entry and category == "binding"}
            values = [v for v in (COLORS if change == "color" else SHAPES) if v != getattr(obj, change)
                      and v not in used  # binding scenes keep every shape and colour distinct, as in training
                      and ((v, obj.color) if change == "shape" else (obj.shape, v)) not in taken]
            target = copy.deepcopy(spec)
            target["objects"][obj.entry][change] = values[int(rng.integers(len(values)))]
            x0, y0, x1, y1 = obj.box
            box = [max(0, math.floor(x0)), max(0, math.floor(y0)), min(size, math.ceil(x1)), min(size, math.ceil(y1))]
            items.append({"id": f"{category}-{j}", "category": category, "change": change, "object": obj.entry,
                          "source_spec": spec, "seed": render_seed, "size": size, "box": box,
                          "source_prompt": caption_of(spec), "prompt": caption_of(target), "spec": target})
    return items


def write_edit_suite(path: str | Path = EDIT_SUITE_PATH, seed: int = EDIT_SEED) -> int:
    """Write :func:`build_edit_suite` as JSON lines; returns the number of edits."""
    from vqgen.io import atomic_write_text

    items = build_edit_suite(seed)
    atomic_write_text(Path(path), "".join(json.dumps(item) + "\n" for item in items))
    return len(items)


def load_edit_suite(path: str | Path | None = None) -> list[dict]:
    """Read an edit suite (default: the shipped ``shapes_edits.jsonl``); every line checked (specs
    valid, one object changed in one attribute, a box inside the image), a bad one named by its line."""
    path = Path(path or EDIT_SUITE_PATH)
    if not path.is_file():
        raise VqgenError(f"edit suite {path} does not exist")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(_check_item(json.loads(line)))
        except (ValueError, VqgenError) as e:
            raise VqgenError(f"{path}:{lineno}: {e}") from None
    if not items:
        raise VqgenError(f"edit suite {path} is empty")
    return items


def _check_item(item: Any) -> dict:
    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
        raise VqgenError("expected an object with a 'prompt' string")
    source, target = validate_spec(item.get("source_spec")), validate_spec(item.get("spec"))
    change = spec_difference(source, target)
    if change is None:
        raise VqgenError("'spec' must differ from 'source_spec' in the colour or shape of one object")
    size, box, obj = item.get("size"), item.get("box"), item.get("object")
    if not isinstance(size, int) or size < 8:
        raise VqgenError(f"'size' must be an image side >= 8, got {size!r}")
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
            and 0 <= box[0] < box[2] <= size and 0 <= box[1] < box[3] <= size):
        raise VqgenError(f"'box' must be [x0, y0, x1, y1] inside the {size}px image, got {box!r}")
    if not isinstance(item.get("seed"), int) or obj != change[0]:
        raise VqgenError(f"'seed' must be an integer and 'object' the changed object's index ({change[0]})")
    return {**item, "source_spec": source, "spec": target, "change": change[1], "object": change[0],
            "category": item.get("category") or "edit"}


def spec_difference(source: dict, target: dict) -> tuple[int, str] | None:
    """``(object index, "color" | "shape")`` if the two specs differ in exactly that one attribute, else None."""
    if source["relations"] != target["relations"] or len(source["objects"]) != len(target["objects"]):
        return None
    diffs = [(i, key) for i, (a, b) in enumerate(zip(source["objects"], target["objects"]))
             for key in ("shape", "color", "count", "size") if a[key] != b[key]]
    return diffs[0] if len(diffs) == 1 and diffs[0][1] in CHANGES else None


# ----------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class EditSettings:
    """Per edit ``samples`` edited images, each the reranker's best of ``rerank`` candidates (1 =
    no reranking); ``guidance``/``temperature`` None = the pipeline's; seeds from ``seed``."""

    samples: int = 1
    rerank: int | None = None
    guidance: float | None = None
    temperature: float | None = None
    seed: int = 0


def outside_mask(box, size: int) -> torch.Tensor:
    """(size, size) bool: the pixels whose centre lies outside the box."""
    x0, y0, x1, y1 = box
    c = torch.arange(size) + 0.5  # (S,)
    inside = ((c[:, None] >= y0) & (c[:, None] < y1)) & ((c[None, :] >= x0) & (c[None, :] < x1))  # (S, S)
    return ~inside


def masked_mse(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the pixels of ``mask`` (H, W) and the channels: (B, 3, H, W) x2 → (B,)."""
    err = (x.float() - y.float()).pow(2).mean(1)  # (B, H, W)
    return (err * mask).flatten(1).sum(1) / mask.sum().clamp(min=1)  # (B,)


def psnr_of(mse: list[float]) -> float:
    """PSNR in dB (data range 1) of the mean of per-image squared errors (pooled: an image whose
    outside is exact does not weigh as an infinite figure)."""
    return round(10.0 * math.log10(1.0 / max(float(np.mean(mse)), 1e-10)), 3) if mse else float("nan")


def _as_uint8_float(images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] rounded to 8 bits as a PNG holds them, back in [0, 1]."""
    return (images.clamp(0, 1) * 255).round() / 255


def evaluate_edits(pipe, suite: list[dict], settings: EditSettings = EditSettings(), out_dir: str | Path | None = None,
                   show_progress: bool = True, grid_items: int = 12) -> dict[str, Any]:
    """Edit every suite source with ``pipe`` and score the results; returns the JSON summary and,
    with ``out_dir``, writes ``results.jsonl``, ``summary.json`` and ``grid.png`` (one row per edit
    of the first ``grid_items``: source, round trip, the box, edits, target)."""
    from vqgen.data.image import to_tensor
    from vqgen.pipelines.edit import box_overlay, cell_pixels
    from vqgen.runtime import progress
    from vqgen.sampling import image_generators
    from vqgen.shapes.evaluator import score

    t0 = time.time()
    rows, grid_rows = [], []
    tok = pipe.tokenizer
    dev = next(tok.parameters()).device
    for n, item in enumerate(progress(suite, desc="edits", enabled=show_progress)):
        if item["size"] != pipe.image_size:
            raise VqgenError(f"edit {item['id']}: its images are {item['size']}px, the pipeline's {pipe.image_size}px")
        src_im, tgt_im = source_image(item), target_image(item)
        src, tgt = to_tensor(src_im)[None], to_tensor(tgt_im)[None]  # (1, 3, S, S) each
        with torch.no_grad():
            trips = _as_uint8_float(tok.decode(tok.encode(torch.cat([src, tgt]).to(dev))).cpu())  # (2, 3, S, S)
        out = pipe.edit(src_im, item["box"], item["prompt"], num_images=settings.samples, rerank=settings.rerank,
                        guidance_scale=settings.guidance, temperature=settings.temperature,
                        generator=image_generators(settings.seed, settings.samples, first=n * settings.samples),
                        output_type="pt")
        edited = _as_uint8_float(torch.stack(out.images))  # (K, 3, S, S)
        cells = out.cells  # (h, w)
        kept = (out.codes.flatten(1)[:, ~cells.flatten()] == out.source_codes.flatten(1)[:, ~cells.flatten()])
        outside = outside_mask(item["box"], item["size"])  # (S, S)
        cell_px = cell_pixels(cells, item["size"])  # (S, S)
        rt = trips[:1]
        base = {"id": item["id"], "category": item["category"], "change": item["change"], "prompt": item["prompt"],
                "source_ok": score(_hwc(rt[0]), item["source_spec"]).passed,
                "target_ceiling": score(_hwc(trips[1]), item["spec"]).passed,
                "unedited_reads_new": score(_hwc(rt[0]), item["spec"]).passed,
                "mse_roundtrip_outside": float(masked_mse(rt, src, outside)[0]),
                "mse_roundtrip_outside_cells": float(masked_mse(rt, src, ~cell_px)[0])}
        mse_out = masked_mse(edited, src.expand_as(edited), outside)  # (K,)
        mse_cells = masked_mse(edited, src.expand_as(edited), ~cell_px)  # (K,)
        mse_vs_rt = masked_mse(edited, rt.expand_as(edited), ~cell_px)  # (K,)
        for k in range(edited.shape[0]):
            s = score(_hwc(edited[k]), item["spec"])
            rows.append({**base, "sample": k, "passed": s.passed, "criteria": s.criteria,
                         "codes_outside_kept": bool(kept[k].all()), "cells": int(cells.sum()),
                         "mse_outside": float(mse_out[k]), "mse_outside_cells": float(mse_cells[k]),
                         "mse_vs_roundtrip_outside_cells": float(mse_vs_rt[k]),
                         "rerank_score": None if out.scores is None else float(out.scores[k])})
        if n < grid_items:
            grid_rows.append((src[0], rt[0], box_overlay(src[0], item["box"], cells), edited, tgt[0]))
    summary = _summary(rows, settings, time.time() - t0)
    if out_dir is not None:
        _write(Path(out_dir), rows, summary, grid_rows)
    return summary


def _hwc(image: torch.Tensor) -> np.ndarray:
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)


def _rate(rows: list[dict], key: str) -> float:
    return round(sum(bool(r[key]) for r in rows) / max(len(rows), 1), 4)


def _mean(rows: list[dict], key: str) -> float:
    return round(float(np.mean([r[key] for r in rows])), 3) if rows else float("nan")


def _summary(rows: list[dict], settings: EditSettings, seconds: float) -> dict[str, Any]:
    def block(part: list[dict]) -> dict[str, Any]:
        return {"n": len(part), "accuracy": _rate(part, "passed"), "target_ceiling": _rate(part, "target_ceiling"),
                "source_ok": _rate(part, "source_ok")}

    groups = {f"{key}={v}": [r for r in rows if r[key] == v]
              for key in ("change", "category") for v in dict.fromkeys(r[key] for r in rows)}
    def psnr(key: str) -> float:
        return psnr_of([r[key] for r in rows])

    psnr_edit, psnr_rt = psnr("mse_outside"), psnr("mse_roundtrip_outside")
    accuracy = _rate(rows, "passed")
    return {"edits": len(rows), "accuracy": accuracy, "accuracy_goal": ACCURACY_GOAL,
            "accuracy_met": accuracy >= ACCURACY_GOAL,
            "target_ceiling": _rate(rows, "target_ceiling"), "source_ok": _rate(rows, "source_ok"),
            "unedited_reads_new": _rate(rows, "unedited_reads_new"),
            "codes_outside_kept": _rate(rows, "codes_outside_kept"),
            "psnr_outside_db": psnr_edit, "psnr_roundtrip_outside_db": psnr_rt,
            "psnr_gap_db": round(psnr_rt - psnr_edit, 3), "psnr_goal_db": PSNR_GOAL_DB,
            "psnr_met": psnr_rt - psnr_edit <= PSNR_GOAL_DB,
            "psnr_outside_cells_db": psnr("mse_outside_cells"),
            "psnr_roundtrip_outside_cells_db": psnr("mse_roundtrip_outside_cells"),
            "psnr_vs_roundtrip_outside_cells_db": psnr("mse_vs_roundtrip_outside_cells"),
            "mean_cells": _mean(rows, "cells"), "groups": {k: block(v) for k, v in groups.items()},
            "settings": {"samples": settings.samples, "rerank": settings.rerank, "guidance": settings.guidance,
                         "temperature": settings.temperature, "seed": settings.seed},
            "seconds": round(seconds, 1)}


def _write(folder: Path, rows: list[dict], summary: dict, grid_rows: list) -> None:
    from vqgen.data.image import image_grid
    from vqgen.io import atomic_write_json, atomic_write_text, make_dir

    make_dir(folder)
    atomic_write_text(folder / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(folder / "summary.json", summary)
    if grid_rows:
        cols = 4 + grid_rows[0][3].shape[0]
        tiles = [t for src, rt, boxed, edited, tgt in grid_rows for t in (src, rt, boxed, *edited, tgt)]
        image_grid(torch.stack(tiles), cols=cols).save(folder / "grid.png")
