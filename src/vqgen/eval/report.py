"""The shapes evaluation report of a text-to-image pipeline (``vqgen eval shapes --model DIR``).

Every prompt of a suite is generated ``samples`` times at each guidance scale, every image is
scored with the exact evaluator (:func:`vqgen.shapes.evaluator.score`), and a report folder is written::

    REPORT_DIR/
      report.md                   accuracy per category and setting, criteria, rerank gain
      summary.json                the JSON summary (the CLI prints it as its last line)
      results.jsonl               one line per generated image, rerank candidates included: setting,
                                  guidance, prompt_index, prompt, category, sample, candidate, passed,
                                  criteria, rerank_score, random_pick, best_pick, files (setting → PNG)
      grid_<category>.png         sample grid: prompts x (setting, sample); green frame = passed
      accuracy_vs_guidance.svg    with two or more guidance values
      images/<setting>/           PNGs + metadata.jsonl (text, spec, category) of the kept images,
                                  which `vqgen eval shapes --images` re-scores (unless not kept)

A *setting* is one guidance scale (named ``g3`` for 3.0). With ``rerank=N`` every kept image is
chosen among ``N`` candidates drawn for it: setting ``g3`` keeps a random candidate (seeded) and
``g3-best8`` the one the pipeline's reranker scores highest, so both picks come from the same
candidates and their difference is the reranker's gain. ``candidates`` also gives the mean
accuracy over all candidates (the expected accuracy of a random pick) and the oracle (some
candidate passes).
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vqgen.shapes.vocabulary import CATEGORIES
from vqgen.errors import VqgenError
from vqgen.sampling.settings import MAX_RERANK, SamplingConfig, check_guidance, check_seed

REPORT_NAME = "report.md"
SUMMARY_NAME = "summary.json"
RESULTS_NAME = "results.jsonl"
PLOT_NAME = "accuracy_vs_guidance.svg"
IMAGES_DIR = "images"
PASS_RGB, FAIL_RGB = (40, 170, 60), (220, 40, 40)


@dataclass(frozen=True)
class ReportSettings:
    """What to generate: ``samples`` kept images per prompt at each ``guidance`` scale, each the best
    (and a random one) of ``rerank`` candidates when ``rerank`` > 1; ``batch`` images per call.
    ``sampling``: the decoder settings (None: the pipeline's own); its guidance and rerank are
    replaced by the sweep's."""

    guidance: tuple[float, ...] = (3.0,)
    samples: int = 4
    rerank: int = 0
    sampling: SamplingConfig | None = None
    seed: int = 0
    batch: int = 64
    keep_images: bool = True
    grid_prompts: int = 6

    def __post_init__(self):
        if not self.guidance:
            raise VqgenError("give at least one guidance value")
        for g in self.guidance:
            check_guidance(g, "--guidance")
        if len(set(self.guidance)) != len(self.guidance):
            raise VqgenError(f"guidance values repeat: {list(self.guidance)}")
        if self.samples < 1:
            raise VqgenError(f"samples must be >= 1, got {self.samples}")
        if self.rerank < 0 or self.rerank == 1 or self.rerank > MAX_RERANK:
            raise VqgenError(f"rerank must be 0 (off) or 2..{MAX_RERANK} candidates, got {self.rerank}")
        check_seed(self.seed)
        if self.batch < 1 or self.grid_prompts < 1:
            raise VqgenError("batch and grid_prompts must be >= 1")

    @property
    def candidates(self) -> int:
        """Images drawn per kept image."""
        return max(self.rerank, 1)


def parse_guidance(text: str) -> tuple[float, ...]:
    """``"1,3,5"`` → ``(1.0, 3.0, 5.0)``; a clear error for anything else."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise VqgenError(f"--guidance takes comma-separated numbers such as 1,3,5, got {text!r}") from None
    return values


def setting_name(guidance: float, best_of: int = 0) -> str:
    """``g3`` (guidance 3.0), ``g1.5``; ``g3-best8`` for the reranker's pick of 8."""
    name = f"g{guidance:g}"
    return f"{name}-best{best_of}" if best_of > 1 else name


def select_prompts(suite: list[dict], per_category: int | None = None) -> list[dict]:
    """The suite, or its first ``per_category`` prompts of each category (suite order kept)."""
    if per_category is None:
        return list(suite)
    if per_category < 1:
        raise VqgenError(f"per_category must be >= 1, got {per_category}")
    seen: dict[str, int] = defaultdict(int)
    out = []
    for item in suite:
        if seen[item["category"]] < per_category:
            seen[item["category"]] += 1
            out.append(item)
    return out


def _prompt_seed(seed: int, index: int, guidance: float) -> int:
    return int(np.random.SeedSequence([seed, index, int(round(guidance * 1000))]).generate_state(1)[0])


def _criterion_kind(name: str) -> str:
    return "relation" if name.startswith("relation") else name.split(".")[1]


# ----------------------------------------------------------------------------- generation + scoring
def generate_and_score(pipe, suite: list[dict], settings: ReportSettings,
                       show_progress: bool = True) -> tuple[list[dict], dict[int, Image.Image]]:
    """Generate and score every (guidance, prompt, sample, candidate) image.

    Returns the per-image rows (see the module docstring) and the kept images by row index
    (random and best picks only). Images of a prompt depend only on ``seed``, the prompt's index
    and the guidance scale, not on ``batch``.
    """
    from dataclasses import replace

    from vqgen.data.image import to_uint8
    from vqgen.runtime import progress
    from vqgen.shapes.evaluator import score

    n_cand = settings.candidates
    per_prompt = settings.samples * n_cand
    if n_cand > 1 and pipe.rerank_stage is None:
        raise VqgenError("rerank needs a pipeline with a reranker/ component")
    sampling = replace(settings.sampling or pipe.sampling, rerank=1)  # candidates are ranked below
    chunk = max(1, settings.batch // per_prompt)
    rows: list[dict] = []
    kept: dict[int, Image.Image] = {}
    bar = progress(total=len(settings.guidance) * len(suite) * per_prompt, desc="generating", enabled=show_progress)
    try:
        for g in settings.guidance:
            name = setting_name(g)
            for start in range(0, len(suite), chunk):
                items = suite[start:start + chunk]
                gens = [torch.Generator().manual_seed(_prompt_seed(settings.seed, start + j, g))
                        for j in range(len(items))]
                out = pipe([it["prompt"] for it in items], num_images=per_prompt, settings=sampling,
                           guidance_scale=g, generator=gens, output_type="pt")
                images = torch.stack(out.images)  # (chunk*K*N, 3, H, W)
                rscores = None
                if n_cand > 1:
                    rscores = pipe.rerank_scores(images.to(pipe.device), out.codes, out.prompts)
                    rscores = rscores.view(-1, n_cand).cpu()  # (chunk*K, N)
                for j, item in enumerate(items):
                    index = start + j
                    for s in range(settings.samples):
                        first = (j * settings.samples + s) * n_cand
                        group = None if rscores is None else rscores[first // n_cand]  # (N,)
                        best = 0 if group is None else int(group.argmax())
                        rand = int(np.random.default_rng([settings.seed, index, s]).integers(n_cand))
                        for c in range(n_cand):
                            arr = to_uint8(images[first + c])  # (H, W, 3)
                            verdict = score(arr, item["spec"])
                            row = {"setting": name, "guidance": g, "prompt_index": index, "prompt": item["prompt"],
                                   "category": item["category"], "sample": s, "candidate": c,
                                   "passed": verdict.passed, "criteria": verdict.criteria,
                                   "rerank_score": None if group is None else round(float(group[c]), 5),
                                   "random_pick": c == rand, "best_pick": group is not None and c == best,
                                   "files": {}}
                            if row["random_pick"] or row["best_pick"]:
                                kept[len(rows)] = Image.fromarray(arr)
                            rows.append(row)
                bar.update(len(items) * per_prompt)
    finally:
        bar.close()
    return rows, kept


def _accuracy(rows: list[dict]) -> dict[str, Any]:
    by_cat: dict[str, list[bool]] = defaultdict(list)
    by_crit: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        by_cat[r["category"]].append(r["passed"])
        for name, ok in r["criteria"].items():
            by_crit[_criterion_kind(name)].append(ok)
    order = [c for c in CATEGORIES if c in by_cat] + sorted(set(by_cat) - set(CATEGORIES))
    core = [r["passed"] for r in rows if r["category"] in CATEGORIES]
    extra = {}
    if core and len(core) < len(rows):  # the five categories every earlier figure was measured on
        extra["core_overall"] = {"n": len(core), "accuracy": round(sum(core) / len(core), 4)}
    return {"n": len(rows), "overall": round(sum(r["passed"] for r in rows) / max(len(rows), 1), 4), **extra,
            "categories": {c: {"n": len(by_cat[c]), "accuracy": round(sum(by_cat[c]) / len(by_cat[c]), 4)}
                           for c in order},
            "criteria": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_crit.items())}}


def in_setting(row: dict, name: str) -> bool:
    """Whether a row is a kept image of a setting: ``g3`` → random picks, ``g3-best8`` → the reranker's."""
    base, best = (name.split("-best")[0], True) if "-best" in name else (name, False)
    return row["setting"] == base and row["best_pick" if best else "random_pick"]


def _rate(rows: list[dict], category: str | None = None) -> float:
    """Pass rate of rows (of one category), unrounded."""
    passed = [r["passed"] for r in rows if category is None or r["category"] == category]
    return sum(passed) / len(passed)


def setting_rows(rows: list[dict], name: str) -> list[dict]:
    """The kept images of a setting, in generation order."""
    return [r for r in rows if in_setting(r, name)]


def summarize(rows: list[dict], settings: ReportSettings) -> dict[str, Any]:
    """Accuracy per setting (overall, per category, per criterion), the rerank gain and candidate stats."""
    names = [setting_name(g) for g in settings.guidance]
    if settings.rerank > 1:
        names += [setting_name(g, settings.rerank) for g in settings.guidance]
    summary: dict[str, Any] = {
        "prompts": len({r["prompt_index"] for r in rows}), "samples": settings.samples,
        "sampling": None if settings.sampling is None else  # the sweep sets guidance and rerank
        {k: v for k, v in asdict(settings.sampling).items() if k not in ("guidance_scale", "rerank")},
        "rerank": settings.rerank, "guidance": list(settings.guidance), "seed": settings.seed,
        "settings": {n: _accuracy(setting_rows(rows, n)) for n in names}}
    if settings.rerank > 1:
        gain, cand = {}, {}
        for g in settings.guidance:
            base, best = setting_rows(rows, setting_name(g)), setting_rows(rows, setting_name(g, settings.rerank))
            gain[setting_name(g)] = {"overall": round(_rate(best) - _rate(base), 4),
                                     **{c: round(_rate(best, c) - _rate(base, c), 4)
                                        for c in summary["settings"][setting_name(g)]["categories"]}}
            all_rows = [r for r in rows if r["setting"] == setting_name(g)]
            groups: dict[tuple, list[bool]] = defaultdict(list)
            for r in all_rows:
                groups[(r["prompt_index"], r["sample"])].append(r["passed"])
            cand[setting_name(g)] = {"mean": round(sum(r["passed"] for r in all_rows) / len(all_rows), 4),
                                     "oracle": round(sum(any(v) for v in groups.values()) / len(groups), 4)}
        summary["rerank_gain"] = gain
        summary["candidates"] = cand
    return summary


# ----------------------------------------------------------------------------- report files
def _font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line] if line else lines


def sample_grid(rows: list[dict], kept: dict[int, Image.Image], names: list[str], category: str,
                max_prompts: int) -> Image.Image | None:
    """One category's grid: a row per prompt (up to ``max_prompts``, spread over the category; its
    text on the left), a column group per setting holding its kept samples; each image framed
    green (passed) or red (failed)."""
    index = {id(r): i for i, r in enumerate(rows)}
    prompts = sorted({r["prompt_index"] for r in rows if r["category"] == category})
    if not prompts:
        return None
    prompts = [prompts[i] for i in sorted({round(float(x)) for x in np.linspace(0, len(prompts) - 1, max_prompts)})]
    cells = {n: {p: sorted((r for r in setting_rows(rows, n) if r["prompt_index"] == p), key=lambda r: r["sample"])
                 for p in prompts} for n in names}
    samples = max(len(v) for c in cells.values() for v in c.values())
    side = next(iter(kept.values())).size[0]
    scale = max(1, 64 // side)
    cell, pad, text_w, head = side * scale + 4, 8, 230, 18
    width = text_w + len(names) * (samples * cell + pad)
    height = head + len(prompts) * cell
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = _font()
    for k, n in enumerate(names):
        draw.text((text_w + k * (samples * cell + pad), 3), n, fill=(0, 0, 0), font=font)
    prompt_text = {r["prompt_index"]: r["prompt"] for r in rows}
    for y, p in enumerate(prompts):
        top = head + y * cell
        for i, line in enumerate(_wrap(prompt_text[p], 36)[:4]):
            draw.text((4, top + 2 + 13 * i), line, fill=(0, 0, 0), font=font)
        for k, n in enumerate(names):
            for s, r in enumerate(cells[n][p]):
                x = text_w + k * (samples * cell + pad) + s * cell
                draw.rectangle([x, top, x + cell - 1, top + cell - 1], fill=PASS_RGB if r["passed"] else FAIL_RGB)
                img = kept[index[id(r)]].resize((side * scale, side * scale), Image.Resampling.NEAREST)
                grid.paste(img, (x + 2, top + 2))
    return grid


def accuracy_plot_svg(summary: dict, title: str = "shapes suite: accuracy vs guidance scale") -> str:
    """An SVG line plot: accuracy per category (and overall) against the guidance scale; the
    reranker's picks, when present, as dashed lines of the same colours."""
    guidance = summary["guidance"]
    settings = summary["settings"]
    cats = list(settings[setting_name(guidance[0])]["categories"]) + ["overall"]
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#000000"]
    w, h, left, right, top, bottom = 640, 400, 60, 150, 40, 50
    lo, hi = min(guidance), max(guidance)
    span = hi - lo or 1.0

    def x(g: float) -> float:
        return left + (g - lo) / span * (w - left - right)

    def y(a: float) -> float:
        return top + (1 - a) * (h - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{(left + w - right) / 2:.1f}" y="20" text-anchor="middle" font-size="14">{title}</text>']
    for a in (0, 0.2, 0.4, 0.6, 0.8, 1.0):
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y(a):.1f}" y2="{y(a):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(a) + 4:.1f}" text-anchor="end">{a:.1f}</text>')
    for g in guidance:
        out.append(f'<text x="{x(g):.1f}" y="{h - bottom + 18}" text-anchor="middle">{g:g}</text>')
    out.append(f'<text x="{(left + w - right) / 2:.1f}" y="{h - 12}" text-anchor="middle">guidance scale</text>')
    out.append(f'<text x="16" y="{(top + h - bottom) / 2:.1f}" transform="rotate(-90 16 {(top + h - bottom) / 2:.1f})" '
               f'text-anchor="middle">accuracy</text>')
    series = [("", 0)] + ([(f"best of {summary['rerank']}", summary["rerank"])] if summary["rerank"] > 1 else [])
    legend_y = top
    for label, best_of in series:
        dash = ' stroke-dasharray="6,4"' if best_of else ""
        for cat, color in zip(cats, colors):
            pts = []
            for g in guidance:
                s = settings[setting_name(g, best_of)]
                acc = s["overall"] if cat == "overall" else s["categories"].get(cat, {}).get("accuracy")
                if acc is not None:
                    pts.append((x(g), y(acc)))
            width = 3 if cat == "overall" else 1.8
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="{width}"{dash} points="'
                       + " ".join(f"{px:.1f},{py:.1f}" for px, py in pts) + '"/>')
            out.extend(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}"/>' for px, py in pts)
            name = f"{cat} ({label})" if label else cat
            out.append(f'<line x1="{w - right + 10}" x2="{w - right + 30}" y1="{legend_y}" y2="{legend_y}" '
                       f'stroke="{color}" stroke-width="{width}"{dash}/>')
            out.append(f'<text x="{w - right + 34}" y="{legend_y + 4}" font-size="11">{name}</text>')
            legend_y += 15
    out.append("</svg>")
    return "\n".join(out) + "\n"


def markdown_tables(summary: dict) -> str:
    """Accuracy per category × setting, pass rate per criterion × setting, and the rerank gain."""
    names = list(summary["settings"])
    first = summary["settings"][names[0]]
    lines = ["| category | prompts x samples | " + " | ".join(names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for cat, v in first["categories"].items():
        lines.append(f"| {cat} | {v['n']} | " + " | ".join(
            f"{summary['settings'][n]['categories'][cat]['accuracy']:.3f}" for n in names) + " |")
    lines.append(f"| **overall** | {first['n']} | " + " | ".join(
        f"**{summary['settings'][n]['overall']:.3f}**" for n in names) + " |")
    if "core_overall" in first:
        lines.append(f"| overall of the five core categories | {first['core_overall']['n']} | " + " | ".join(
            f"{summary['settings'][n]['core_overall']['accuracy']:.3f}" for n in names) + " |")
    lines += ["", "| criterion | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for crit in first["criteria"]:
        lines.append(f"| {crit} | " + " | ".join(f"{summary['settings'][n]['criteria'].get(crit, float('nan')):.3f}"
                                                for n in names) + " |")
    if "rerank_gain" in summary:
        n = summary["rerank"]
        lines += ["", f"Reranker best-of-{n} vs a random pick of the same {n} candidates (accuracy points; "
                      f"'mean' = all candidates, 'oracle' = some candidate passes):", "",
                  "| guidance | random pick | best of " + str(n) + " | gain | mean | oracle |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for g in summary["guidance"]:
            base = summary["settings"][setting_name(g)]["overall"]
            best = summary["settings"][setting_name(g, n)]["overall"]
            cand = summary["candidates"][setting_name(g)]
            lines.append(f"| {g:g} | {base:.3f} | {best:.3f} | {100 * (best - base):+.1f} | "
                         f"{cand['mean']:.3f} | {cand['oracle']:.3f} |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, rows: list[dict], kept: dict[int, Image.Image], summary: dict,
                 settings: ReportSettings, suite: list[dict], header: str = "",
                 data_dir: str | Path | None = None) -> Path:
    """Write the report folder (see the module docstring); ``results.jsonl`` and ``images/`` go to
    ``data_dir`` when given (keeps a report in ``docs/`` small). Fills each kept row's ``files``
    (setting → image path relative to where ``images/`` is) when images are kept."""
    from vqgen.data.folder import write_image_folder
    from vqgen.data.records import Record
    from vqgen.io import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    data = Path(data_dir) if data_dir is not None else out
    out.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    names = list(summary["settings"])
    if settings.keep_images:
        for name in names:
            picked = [(i, r) for i, r in enumerate(rows) if in_setting(r, name)]
            records = [Record(image=kept[i], text=r["prompt"], key=f"{name}-{i}",
                              meta={"spec": suite[r["prompt_index"]]["spec"], "category": r["category"],
                                    "guidance": r["guidance"], "sample": r["sample"], "candidate": r["candidate"]})
                       for i, r in picked]
            write_image_folder(records, data / IMAGES_DIR / name, progress=False)
            for k, (i, r) in enumerate(picked):
                r["files"][name] = f"{IMAGES_DIR}/{name}/{k:06d}.png"
    atomic_write_text(data / RESULTS_NAME, "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(out / SUMMARY_NAME, summary)
    body = [f"# shapes evaluation\n\n{header}".rstrip() + "\n",
            f"{summary['prompts']} prompts x {summary['samples']} samples, guidance {summary['guidance']}"
            + (f", rerank best-of-{summary['rerank']}" if summary["rerank"] > 1 else "") + ".\n",
            markdown_tables(summary)]
    for cat in CATEGORIES + tuple(sorted({r["category"] for r in rows} - set(CATEGORIES))):
        grid = sample_grid(rows, kept, names, cat, settings.grid_prompts)
        if grid is not None:
            grid.save(out / f"grid_{cat}.png", optimize=True)
            body.append(f"\n### {cat}\n\n![{cat}](grid_{cat}.png)\n")
    if len(summary["guidance"]) > 1:
        atomic_write_text(out / PLOT_NAME, accuracy_plot_svg(summary))
        body.insert(2, f"![accuracy vs guidance]({PLOT_NAME})\n")
    atomic_write_text(out / REPORT_NAME, "\n".join(body))
    return out


def evaluate_pipeline(pipe, suite: list[dict], out_dir: str | Path, settings: ReportSettings,
                      show_progress: bool = True, meta: dict | None = None,
                      data_dir: str | Path | None = None) -> dict[str, Any]:
    """Generate, score and write the report (results and images to ``data_dir`` if given);
    returns the summary (also in ``summary.json``).

    ``meta`` (e.g. ``model``, ``command``) goes into the summary; its ``command`` heads report.md.
    """
    if not suite:
        raise VqgenError("the prompt suite is empty")
    t0 = time.time()
    rows, kept = generate_and_score(pipe, suite, settings, show_progress)
    summary = {**(meta or {}), **summarize(rows, settings)}
    summary["images_generated"] = len(rows)
    summary["seconds"] = round(time.time() - t0, 1)
    summary["date"] = time.strftime("%Y-%m-%d")
    summary["report"] = str(out_dir)
    if data_dir is not None:
        summary["data"] = str(data_dir)
    command = (meta or {}).get("command")
    header = f"Measured {summary['date']}" + (f" with `{command}`" if command else "") + "\n"
    write_report(out_dir, rows, kept, summary, settings, suite, header, data_dir)
    return summary
