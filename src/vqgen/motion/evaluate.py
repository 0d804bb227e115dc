"""Evaluations built on the motion evaluator: a clip folder scored against its specs
(:func:`score_folder`, ``vqgen eval motion --videos``), and any generator of clips scored on a
prompt suite (:func:`score_generator`, ``vqgen eval motion --model``).

Both return the same summary::

    {"num", "overall",                 # clips; fraction passing every criterion
     "categories": {cat: {"n", "accuracy"}},
     "criteria": {"object", "action", "consistency"},   # fraction of clips passing each
     "actions": {"move", "size", "color", "presence"},  # per object: action right, by kind
     "frame_object_accuracy",          # fraction of frames with every object right
     "action_accuracy",                # = criteria["action"]
     "skipped": {reason: count}}
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

from vqgen.errors import VqgenError
from vqgen.motion.evaluator import score_clip
from vqgen.motion.vocabulary import ACTION_KINDS, CATEGORIES, category_of, validate_spec

# generate(prompt, seed) -> frames, in any form vqgen.motion.dataset.as_frames takes
ClipGenerator = Callable[[str, int], Any]


def summarize(results: list[dict], skipped: Counter | dict) -> dict[str, Any]:
    """The summary of per-clip results (``category`` and :meth:`ClipScore.to_dict` fields each)."""
    if not results:
        return {"num": 0, "overall": 0.0, "categories": {}, "criteria": {}, "actions": {},
                "frame_object_accuracy": 0.0, "action_accuracy": 0.0, "skipped": dict(sorted(skipped.items()))}

    def rate(flags) -> float:
        flags = list(flags)
        return round(sum(flags) / max(len(flags), 1), 4)

    by_category: dict[str, list[bool]] = defaultdict(list)
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        by_category[r["category"]].append(r["passed"])
        for o in r["objects"]:
            by_kind[ACTION_KINDS[o["action"]]].append(o["action_ok"])
    order = {c: i for i, c in enumerate(CATEGORIES)}
    criteria = {k: rate(r["criteria"][k] for r in results) for k in ("object", "action", "consistency")}
    return {"num": len(results), "overall": rate(r["passed"] for r in results),
            "categories": {c: {"n": len(v), "accuracy": rate(v)}
                           for c, v in sorted(by_category.items(), key=lambda kv: order.get(kv[0], len(order)))},
            "criteria": criteria,
            "actions": {k: rate(by_kind[k]) for k in ("move", "size", "color", "presence") if k in by_kind},
            "frame_object_accuracy": rate(f for r in results for f in r["frame_objects"]),
            "action_accuracy": criteria["action"], "skipped": dict(sorted(skipped.items()))}


def score_folder(root: str | Path, progress: bool = True) -> tuple[dict[str, Any], list[dict]]:
    """Score every clip of a clip folder against the ``spec`` of its row: ``(summary, per-clip results)``.

    Bad clips (unreadable, truncated, wrong frame count, missing or invalid spec) are skipped and
    counted by reason; a folder without ``metadata.jsonl`` or without one usable clip is an error.
    """
    from vqgen.data.folder import METADATA_NAME
    from vqgen.motion.dataset import MotionFolder
    from vqgen.runtime import progress as progress_bar

    root = Path(root)
    if not root.is_dir():
        raise VqgenError(f"clip folder {root} does not exist or is not a directory")
    if not (root / METADATA_NAME).is_file():
        raise VqgenError(f"{root} has no {METADATA_NAME}; motion evaluation needs one with a 'spec' per clip")
    data = MotionFolder(root)
    skipped = Counter(data.skipped)
    results = []
    for i in progress_bar(range(len(data)), desc=f"scoring {root.name}", enabled=progress):
        clip = data[i]
        if clip.meta.get("spec") is None:
            skipped["missing_spec"] += 1
            continue
        try:
            spec = validate_spec(clip.meta["spec"])
        except VqgenError:
            skipped["bad_spec"] += 1
            continue
        s = score_clip(clip.frames, spec)
        results.append({"file_name": clip.key, "text": clip.text,
                        "category": clip.meta.get("category") or category_of(spec), **s.to_dict()})
    if not results:
        raise VqgenError(f"{root} has no usable clip with a 'spec' (skipped: {dict(skipped) or 'none'})")
    return summarize(results, skipped), results


def sample_seed(seed: int, index: int, sample: int, samples: int) -> int:
    """The seed of sample ``sample`` of suite prompt ``index``: ``seed + index * samples + sample``."""
    return seed + index * samples + sample


def score_generator(generate: ClipGenerator, suite: list[dict], samples: int = 1, seed: int = 0,
                    out_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Generate ``samples`` clips per suite prompt with ``generate(prompt, seed)`` and score them.

    Seeds come from :func:`sample_seed`. With ``out_dir``, writes there ``summary.json``,
    ``results.jsonl`` (one line per clip), ``clips/`` (a clip folder with each clip's prompt,
    category and spec, so ``vqgen eval motion --videos OUT/clips`` scores it again) and the report
    of :func:`write_report` (``report.md``, ``grids/<category>.png``). Clips that are not frames
    (wrong rank, not RGB) are skipped and counted as ``bad_frames``.
    """
    from vqgen.motion.dataset import Clip, as_frames
    from vqgen.runtime import progress as progress_bar

    if samples < 1:
        raise VqgenError(f"samples per prompt must be >= 1, got {samples}")
    skipped: Counter = Counter()
    results, clips = [], []
    jobs = [(i, item, k) for i, item in enumerate(suite) for k in range(samples)]
    for i, item, k in progress_bar(jobs, desc="generating clips", enabled=progress):
        s = sample_seed(seed, i, k, samples)
        try:
            frames = as_frames(generate(item["prompt"], s))
        except VqgenError:
            skipped["bad_frames"] += 1
            continue
        verdict = score_clip(frames, item["spec"])
        results.append({"prompt": item["prompt"], "seed": s, "category": item["category"], **verdict.to_dict()})
        if out_dir is not None:
            clips.append(Clip(frames=frames, text=item["prompt"], key=f"{i:04d}-{k}",
                              meta={"category": item["category"], "spec": item["spec"], "frames": len(frames),
                                    "seed": s}))
    summary = summarize(results, skipped)
    if out_dir is not None:
        from vqgen.io import atomic_write_json, atomic_write_text
        from vqgen.motion.dataset import write_clip_folder

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if clips:
            write_clip_folder(clips, out / "clips", info={"samples": samples, "seed": seed}, progress=False)
        atomic_write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in results))
        atomic_write_json(out / "summary.json", summary)
        write_report(out, summary, results, [c.frames for c in clips])
    return summary


GRID_ROWS = 4     # clips per category grid
GRID_FRAMES = 9   # at most this many frames of a clip in a grid row (evenly spaced)


def markdown_tables(summary: dict) -> str:
    """Accuracy per category, pass rate per criterion and action kind, as markdown tables."""
    lines = ["| category | clips | accuracy |", "|---|---:|---:|"]
    lines += [f"| {c} | {v['n']} | {v['accuracy']:.3f} |" for c, v in summary["categories"].items()]
    lines += [f"| **overall** | {summary['num']} | **{summary['overall']:.3f}** |", "",
              "| criterion | pass rate |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in summary["criteria"].items()]
    lines += [f"| action: {k} (per object) | {v:.3f} |" for k, v in summary["actions"].items()]
    lines.append(f"| objects right, per frame | {summary['frame_object_accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, summary: dict, results: list[dict], frames: list) -> None:
    """``report.md`` (tables, the grids, the prompts of their rows) and ``grids/<category>.png``: the
    first ``GRID_ROWS`` clips of each category, one frame strip a row, with a bar on the left that is
    green when the clip passed and red when not."""
    import numpy as np
    from PIL import Image

    from vqgen.io import atomic_write_text

    out = Path(out_dir)
    (out / "grids").mkdir(parents=True, exist_ok=True)
    text = ["# Motion suite evaluation", "", markdown_tables(summary)]
    for category in summary["categories"]:
        picked = [i for i, r in enumerate(results) if r["category"] == category][:GRID_ROWS]
        rows = []
        for i in picked:
            clip = frames[i]                                                          # (T, H, W, 3)
            clip = clip[np.unique(np.linspace(0, len(clip) - 1, GRID_FRAMES).round().astype(int))]
            bar = np.zeros((clip.shape[1], 4, 3), np.uint8)                            # (H, 4, 3)
            bar[:] = (40, 170, 60) if results[i]["passed"] else (210, 40, 40)
            rows.append(np.concatenate([bar, *clip], axis=1))                          # (H, 4 + t*W, 3)
        width = max(r.shape[1] for r in rows)
        grid = np.concatenate([np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                               for r in rows])                                         # (rows*(H+2), W', 3)
        Image.fromarray(grid).save(out / "grids" / f"{category}.png")
        text += ["", f"## {category}", "", f"![{category}](grids/{category}.png)", ""]
        text += [f"{n}. {'pass' if r['passed'] else 'FAIL'} — {r['prompt']} (seed {r['seed']})"
                 for n, r in enumerate((results[i] for i in picked), 1)]
    atomic_write_text(out / "report.md", "\n".join(text) + "\n")


def write_results(results: list[dict], path: str | Path) -> None:
    """Write per-clip results as JSON lines."""
    from vqgen.io import atomic_write_text

    atomic_write_text(Path(path), "".join(json.dumps(r) + "\n" for r in results))


def pipeline_generator(pipe, frames: int | None = None, fps: int | None = None) -> ClipGenerator:
    """A text-to-video pipeline as a :data:`ClipGenerator`: ``pipe(prompt, seed=seed[, num_frames=frames]
    [, fps=fps])`` (:class:`~vqgen.pipelines.text_to_video.TextToVideoPipeline`'s call), whose output
    holds the clips in ``frames`` (one per video; the first is taken)."""
    options = {k: v for k, v in (("num_frames", frames), ("fps", fps)) if v is not None}

    def generate(prompt: str, seed: int):
        out = pipe(prompt, seed=seed, **options)
        return out.frames[0]

    return generate


def tokenizer_round_trip(tokenizer, suite: list[dict], samples: int = 1, seed: int = 0,
                         frames: int = 17, batch_size: int = 128) -> dict[str, Any]:
    """Score ground-truth clips of suite specs before and after ``tokenizer.decode(tokenizer.encode(x))``
    frame by frame: the accuracy a video model writing this tokenizer's codes can reach at most.

    Clips of ``frames`` frames at the tokenizer's image size, layouts from seeds ``seed ..``.
    """
    import torch

    from vqgen.motion.scenes import render_spec

    size = int(tokenizer.config.image_size)
    truth, trip = [], []
    for k in range(samples):
        for i, item in enumerate(suite):
            clip, _ = render_spec(item["spec"], size, frames, seed=sample_seed(seed, i, k, samples))
            x = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255  # (T, 3, H, W)
            with torch.no_grad():
                y = torch.cat([tokenizer.decode(tokenizer.encode(x[j:j + batch_size]))
                               for j in range(0, len(x), batch_size)]).clamp(0, 1)  # (T, 3, H, W)
            for results, video in ((truth, x), (trip, y)):
                results.append({"category": item["category"], **score_clip(video, item["spec"]).to_dict()})
    ground, round_trip = summarize(truth, {}), summarize(trip, {})
    return {"num": len(truth), "frames": frames, "ground_truth": ground["overall"], "round_trip": round_trip["overall"],
            "categories": {c: {"n": v["n"], "ground_truth": v["accuracy"],
                               "round_trip": round_trip["categories"][c]["accuracy"]}
                           for c, v in ground["categories"].items()},
            "criteria": {k: {"ground_truth": v, "round_trip": round_trip["criteria"][k]}
                         for k, v in ground["criteria"].items()},
            "frame_object_accuracy": {"ground_truth": ground["frame_object_accuracy"],
                                      "round_trip": round_trip["frame_object_accuracy"]}}
