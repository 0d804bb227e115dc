"""The ``shapes`` domain: procedural scenes of coloured shapes with captions and exact scene specs.

A scene holds 1–4 objects (circle, square, triangle; six palette colours; two sizes) on a white
background, placed so that they never overlap and every stated relation holds with a clear gap.
Each scene has a caption built from canonical words only, and a *spec* that says what the caption
asks for, in the form the evaluator (:mod:`vqgen.eval.shapes`) reads back::

    {"objects": [{"shape": "circle", "color": "red", "count": 1, "size": "large"}, ...],
     "relations": [{"a": 0, "relation": "left of", "b": 1}, ...]}

``size`` is ``None`` when the caption does not name one (the renderer then picks one at random).
Within a spec, no two entries share both shape and colour, so every entry (and relation) refers
to one unambiguous group of objects.

Captions fall into five categories: ``single`` ("a red circle"), ``count`` ("three blue
squares"), ``relation`` ("a green triangle to the left of a yellow circle"), ``binding`` ("a red
square and a blue circle") and ``multi`` (3–4 objects). The prompt suite (:func:`build_suite`) is a
hold-out: :class:`ShapesDataset` never emits one of its prompts as a caption.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vqgen.data.records import Record
from vqgen.errors import VqgenError

SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
# Saturated palette colours, far apart in RGB and in hue; the background is white.
PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
    "orange": (250, 130, 20),
}
COLORS = tuple(PALETTE)
BACKGROUND = (255, 255, 255)
# Side of an object's square bounding box, as a fraction of the image side.
SIZES = {"small": 0.20, "large": 0.32}
RELATIONS = ("left of", "right of", "above", "below")
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of",
                    "above": "above", "below": "below"}
NUMBERS = {2: "two", 3: "three", 4: "four"}
CATEGORIES = ("single", "count", "relation", "binding", "multi")
MAX_OBJECTS = 4

# Layout, as fractions of the image side: free border, and the least gap between two objects'
# boxes (also the gap along the stated axis between the two sides of a relation).
BORDER = 0.04
GAP = 0.06
SUPERSAMPLE = 4  # shapes are drawn this much larger and box-filtered down (anti-aliasing)

# How often training scenes fall in each category, and how often a mention names a size.
CATEGORY_WEIGHTS = {"single": 0.15, "count": 0.2, "relation": 0.25, "binding": 0.15, "multi": 0.25}
SIZE_NAMED_PROB = 0.4
# Object counts of multi scenes without relations: every composition of 3 or 4 into 2–4 parts.
MULTI_COUNTS = ((2, 1), (1, 2), (1, 1, 1), (3, 1), (1, 3), (2, 2), (2, 1, 1), (1, 2, 1), (1, 1, 2),
                (1, 1, 1, 1))
# Prompts per category in the suite besides ``single``, which holds one size variant of every
# shape/colour pair (18 of the 54 single captions; the other caption spaces are far larger).
SUITE_SIZES = {"count": 36, "relation": 70, "binding": 60, "multi": 70}
SUITE_SEED = 0
SUITE_PATH = Path(__file__).resolve().parents[3] / "prompts" / "shapes_suite.jsonl"


# ----------------------------------------------------------------------------- specs and captions
def validate_spec(spec: Any) -> dict:
    """Check a scene spec and return it in canonical form (keys, order, ``size`` present).

    Raises :class:`VqgenError` naming the problem.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("objects"), list):
        raise VqgenError("a shapes spec must be an object with an 'objects' list")
    objects, seen = [], set()
    if not spec["objects"]:
        raise VqgenError("a shapes spec needs at least one object")
    for i, o in enumerate(spec["objects"]):
        if not isinstance(o, dict):
            raise VqgenError(f"spec object {i} is not an object")
        shape, color, count, size = o.get("shape"), o.get("color"), o.get("count", 1), o.get("size")
        if shape not in SHAPES:
            raise VqgenError(f"spec object {i}: shape {shape!r} is not one of {list(SHAPES)}")
        if color not in PALETTE:
            raise VqgenError(f"spec object {i}: color {color!r} is not one of {list(COLORS)}")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_OBJECTS:
            raise VqgenError(f"spec object {i}: count {count!r} is not an integer in 1..{MAX_OBJECTS}")
        if size is not None and size not in SIZES:
            raise VqgenError(f"spec object {i}: size {size!r} is not null or one of {list(SIZES)}")
        if (shape, color) in seen:
            raise VqgenError(f"spec object {i}: a second {color} {shape} entry is ambiguous")
        seen.add((shape, color))
        objects.append({"shape": shape, "color": color, "count": count, "size": size})
    relations = []
    for j, r in enumerate(spec.get("relations") or []):
        if not isinstance(r, dict):
            raise VqgenError(f"spec relation {j} is not an object")
        a, rel, b = r.get("a"), r.get("relation"), r.get("b")
        if rel not in RELATIONS:
            raise VqgenError(f"spec relation {j}: {rel!r} is not one of {list(RELATIONS)}")
        for end in (a, b):
            if not isinstance(end, int) or isinstance(end, bool) or not 0 <= end < len(objects):
                raise VqgenError(f"spec relation {j}: index {end!r} does not name a spec object")
        if a == b:
            raise VqgenError(f"spec relation {j}: an object cannot be related to itself")
        relations.append({"a": a, "relation": rel, "b": b})
    return {"objects": objects, "relations": relations}


def category_of(spec: dict) -> str:
    """The prompt category a spec belongs to (``single``, ``count``, ``relation``, ``binding``, ``multi``)."""
    objects = spec["objects"]
    if len(objects) == 1:
        return "single" if objects[0]["count"] == 1 else "count"
    if sum(o["count"] for o in objects) >= 3:
        return "multi"
    return "relation" if spec["relations"] else "binding"


def _mention(obj: dict) -> str:
    """``"a large red circle"`` / ``"two blue squares"``."""
    words = [obj["size"]] if obj["size"] else []
    words.append(obj["color"])
    if obj["count"] == 1:
        words.append(obj["shape"])
        article = "an" if words[0][0] in "aeiou" else "a"
        return " ".join([article] + words)
    return " ".join([NUMBERS[obj["count"]]] + words + [PLURALS[obj["shape"]]])


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption_of(spec: dict) -> str:
    """The canonical caption of a spec.

    Without relations the mentions are listed ("a, b and c"). With relations, every relation
    ``(a, rel, a + 1)`` is one clause ("a red circle above a blue square"), every other object is
    a clause of its own, and clauses are joined by ", and ".
    """
    objects, relations = spec["objects"], spec["relations"]
    if not relations:
        return _join([_mention(o) for o in objects])
    by_a = {r["a"]: r for r in relations}
    if any(r["b"] != r["a"] + 1 for r in relations) or any(r["a"] in {q["b"] for q in relations}
                                                          for r in relations):
        raise VqgenError("caption_of supports relations between consecutive objects only")
    clauses, i = [], 0
    while i < len(objects):
        r = by_a.get(i)
        if r:
            clauses.append(f"{_mention(objects[i])} {RELATION_PHRASES[r['relation']]} {_mention(objects[i + 1])}")
            i += 2
        else:
            clauses.append(_mention(objects[i]))
            i += 1
    return ", and ".join(clauses)


# Other words for the same scene: never used by training captions, so a model that only learnt the
# canonical template is tested on language it has not seen (`paraphrase_of`).
PARAPHRASE_SIZES = {"small": "tiny", "large": "big"}
PARAPHRASE_NUMBERS = {1: "one", 2: "2", 3: "3", 4: "4"}
PARAPHRASE_RELATIONS = {"left of": "on the left side of", "right of": "on the right side of",
                        "above": "on top of", "below": "underneath"}


def _paraphrase_mention(obj: dict) -> str:
    """``"one big red circle"`` / ``"3 tiny blue squares"``."""
    words = [PARAPHRASE_NUMBERS[obj["count"]]]
    if obj["size"]:
        words.append(PARAPHRASE_SIZES[obj["size"]])
    words += [obj["color"], obj["shape"] if obj["count"] == 1 else PLURALS[obj["shape"]]]
    return " ".join(words)


def paraphrase_of(spec: dict) -> str:
    """A caption of a spec in words the training captions never use (counts as "one"/digits,
    "tiny"/"big", "on top of"/"underneath"/"on the ... side of", lists joined by "plus")."""
    objects, relations = spec["objects"], spec["relations"]
    by_a = {r["a"]: r for r in relations}
    clauses, i = [], 0
    while i < len(objects):
        r = by_a.get(i)
        if r and r["b"] == i + 1:
            clauses.append(f"{_paraphrase_mention(objects[i])} {PARAPHRASE_RELATIONS[r['relation']]} "
                           f"{_paraphrase_mention(objects[i + 1])}")
            i += 2
        else:
            clauses.append(_paraphrase_mention(objects[i]))
            i += 1
    return " plus ".join(clauses)


def write_paraphrase_suite(path: str | Path, seed: int = SUITE_SEED) -> int:
    """The suite's specs with :func:`paraphrase_of` prompts, as JSON lines; returns the number of prompts."""
    from vqgen.io import atomic_write_text

    items = [{"prompt": paraphrase_of(item["spec"]), "category": item["category"], "spec": item["spec"]}
             for item in build_suite(seed)]
    atomic_write_text(Path(path), "".join(json.dumps(item) + "\n" for item in items))
    return len(items)


def _pairs(rng: np.random.Generator, n: int, distinct_attrs: bool = False) -> list[tuple[str, str]]:
    """``n`` different (shape, colour) pairs; with ``distinct_attrs`` no shape or colour repeats."""
    while True:
        pairs = [(SHAPES[rng.integers(len(SHAPES))], COLORS[rng.integers(len(COLORS))]) for _ in range(n)]
        if len(set(pairs)) < n:
            continue
        if distinct_attrs and (len({s for s, _ in pairs}) < n or len({c for _, c in pairs}) < n):
            continue
        return pairs


def _size(rng: np.random.Generator) -> str | None:
    return (None if rng.random() >= SIZE_NAMED_PROB else ("small", "large")[rng.integers(2)])


def sample_spec(rng: np.random.Generator, category: str) -> dict:
    """A random spec of one category."""
    def objs(counts, distinct_attrs=False):
        return [{"shape": s, "color": c, "count": k, "size": _size(rng)}
                for (s, c), k in zip(_pairs(rng, len(counts), distinct_attrs), counts)]

    def rel(a):
        return {"a": a, "relation": RELATIONS[rng.integers(len(RELATIONS))], "b": a + 1}

    if category == "single":
        return {"objects": objs([1]), "relations": []}
    if category == "count":
        return {"objects": objs([int(rng.integers(2, MAX_OBJECTS + 1))]), "relations": []}
    if category == "relation":
        return {"objects": objs([1, 1]), "relations": [rel(0)]}
    if category == "binding":
        return {"objects": objs([1, 1], distinct_attrs=True), "relations": []}
    if category == "multi":
        kind = rng.random()
        if kind < 0.5:
            return {"objects": objs(MULTI_COUNTS[rng.integers(len(MULTI_COUNTS))]), "relations": []}
        if kind < 0.75:  # a relation clause and one more mention (one or two objects)
            return {"objects": objs([1, 1, int(rng.integers(1, 3))]), "relations": [rel(0)]}
        return {"objects": objs([1, 1, 1, 1]), "relations": [rel(0), rel(2)]}
    raise VqgenError(f"unknown shapes category {category!r}; expected one of {list(CATEGORIES)}")


# ----------------------------------------------------------------------------- layout and rendering
@dataclass(frozen=True)
class PlacedObject:
    """One drawn object: its square box ``(x0, y0, side)`` in pixels and which spec entry it shows."""

    shape: str
    color: str
    size: str
    x0: float
    y0: float
    side: float
    entry: int

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.x0, self.y0, self.x0 + self.side, self.y0 + self.side


def _apart(a: PlacedObject, b: PlacedObject, gap: float) -> bool:
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    return ax1 + gap <= bx0 or bx1 + gap <= ax0 or ay1 + gap <= by0 or by1 + gap <= ay0


def _bounds(entry: int, side: float, placed: list[PlacedObject], relations: list[dict], size: int) -> list[float]:
    """``[xmin, xmax, ymin, ymax]`` for the top-left corner of a new box of ``entry`` that keeps
    every relation to the objects already placed (empty when ``xmin > xmax`` or ``ymin > ymax``)."""
    gap, lo, hi = GAP * size, BORDER * size, size - BORDER * size - side
    b = [lo, hi, lo, hi]
    for p in placed:
        px0, py0, px1, py1 = p.box
        for r in relations:
            if (r["a"], r["b"]) == (entry, p.entry):
                rel = r["relation"]
            elif (r["a"], r["b"]) == (p.entry, entry):  # seen from the new object, the relation turns round
                rel = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[r["relation"]]
            else:
                continue
            if rel == "left of":
                b[1] = min(b[1], px0 - gap - side)
            elif rel == "right of":
                b[0] = max(b[0], px1 + gap)
            elif rel == "above":
                b[3] = min(b[3], py0 - gap - side)
            else:
                b[2] = max(b[2], py1 + gap)
    return b


def layout(spec: dict, size: int, rng: np.random.Generator, tries: int = 100) -> list[PlacedObject]:
    """Place every object of a spec in a ``size`` x ``size`` image (rejection sampling).

    Objects keep a gap of ``GAP * size`` between their boxes, and each relation holds with that
    gap along its axis. Sizes the spec leaves open are drawn at random.
    """
    items = [(i, o["shape"], o["color"], o["size"] or ("small", "large")[rng.integers(2)])
             for i, o in enumerate(spec["objects"]) for _ in range(o["count"])]
    for _ in range(tries):
        placed: list[PlacedObject] = []
        for entry, shape, color, sz in items:
            side = SIZES[sz] * size
            xmin, xmax, ymin, ymax = _bounds(entry, side, placed, spec["relations"], size)
            if xmin > xmax or ymin > ymax:
                break
            for _ in range(tries):
                obj = PlacedObject(shape, color, sz, float(rng.uniform(xmin, xmax)), float(rng.uniform(ymin, ymax)),
                                   side, entry)
                if all(_apart(obj, p, GAP * size) for p in placed):
                    placed.append(obj)
                    break
            else:
                break
        if len(placed) == len(items):
            return placed
    raise VqgenError(f"could not place the objects of {caption_of(spec)!r} in a {size}px image")


def shape_polygon(shape: str, x0: float, y0: float, side: float) -> list[tuple[float, float]] | None:
    """The outline of a shape in its box (``None`` for a circle, which is drawn as an ellipse)."""
    if shape == "square":
        return [(x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side)]
    if shape == "triangle":  # upright, base and height equal to the box side
        return [(x0, y0 + side), (x0 + side, y0 + side), (x0 + side / 2, y0)]
    return None


def render(objects: list[PlacedObject], size: int) -> Image.Image:
    """Draw placed objects on a white ``size`` x ``size`` RGB image (anti-aliased by supersampling)."""
    f = SUPERSAMPLE
    canvas = Image.new("RGB", (size * f, size * f), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for o in objects:
        x0, y0, side = o.x0 * f, o.y0 * f, o.side * f
        poly = shape_polygon(o.shape, x0, y0, side)
        if poly is None:
            draw.ellipse([x0, y0, x0 + side, y0 + side], fill=PALETTE[o.color])
        else:
            draw.polygon(poly, fill=PALETTE[o.color])
    return canvas.resize((size, size), Image.Resampling.BOX)


def render_spec(spec: dict, size: int = 64, seed: int | np.random.Generator = 0) -> Image.Image:
    """Render one scene that satisfies ``spec`` (random layout from ``seed``)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return render(layout(validate_spec(spec), size, rng), size)


# ----------------------------------------------------------------------------- the prompt suite
def build_suite(seed: int = SUITE_SEED) -> list[dict]:
    """The held-out prompt suite: ``{"prompt", "category", "spec"}`` per prompt (deterministic).

    ``single`` holds one size variant of every shape/colour pair; the other categories hold
    ``SUITE_SIZES[category]`` distinct random prompts each.
    """
    rng = np.random.default_rng(seed)
    suite: list[dict] = []
    for shape in SHAPES:
        for color in COLORS:
            size = (None, "small", "large")[rng.integers(3)]
            suite.append(_suite_item({"objects": [{"shape": shape, "color": color, "count": 1, "size": size}],
                                      "relations": []}))
    for category, num in SUITE_SIZES.items():
        seen: set[str] = set()
        while len(seen) < num:
            item = _suite_item(sample_spec(rng, category))
            if item["category"] == category and item["prompt"] not in seen:
                seen.add(item["prompt"])
                suite.append(item)
    return suite


def _suite_item(spec: dict) -> dict:
    return {"prompt": caption_of(spec), "category": category_of(spec), "spec": spec}


def write_suite(path: str | Path = SUITE_PATH, seed: int = SUITE_SEED) -> int:
    """Write :func:`build_suite` as JSON lines; returns the number of prompts."""
    from vqgen.io import atomic_write_text

    suite = build_suite(seed)
    atomic_write_text(Path(path), "".join(json.dumps(item) + "\n" for item in suite))
    return len(suite)


def load_suite(path: str | Path | None = None) -> list[dict]:
    """Read a prompt suite file (default: the project's ``prompts/shapes_suite.jsonl``).

    Without ``path``, an installation that lacks the file gets :func:`build_suite` (same content).
    Every spec is validated; a bad line is an error naming the line.
    """
    if path is None and not SUITE_PATH.is_file():
        return build_suite()
    path = Path(path or SUITE_PATH)
    if not path.is_file():
        raise VqgenError(f"prompt suite {path} does not exist")
    suite = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                raise VqgenError("expected an object with a 'prompt' string")
            spec = validate_spec(item.get("spec"))
        except (ValueError, VqgenError) as e:
            raise VqgenError(f"{path}:{lineno}: {e}") from None
        suite.append({"prompt": item["prompt"], "category": item.get("category") or category_of(spec),
                      "spec": spec})
    return suite


@lru_cache(maxsize=4)
def held_out_prompts(seed: int = SUITE_SEED) -> frozenset[str]:
    """The suite's prompts: captions the training data never uses."""
    return frozenset(item["prompt"] for item in build_suite(seed))


# ----------------------------------------------------------------------------- the data set
@dataclass(frozen=True)
class Scene:
    """A sampled scene: its caption, category, spec and the objects as drawn."""

    caption: str
    category: str
    spec: dict
    objects: list[PlacedObject]


class ShapesDataset:
    """``num`` procedural scenes as :class:`~vqgen.data.records.Record` s, rendered on demand.

    Scene ``i`` depends only on ``(seed, i)``; captions never equal a prompt of the suite.
    Each record's ``meta`` holds ``spec`` and ``category``.
    """

    def __init__(self, num: int, size: int = 64, seed: int = 0):
        if num < 0:
            raise VqgenError(f"the number of scenes must be >= 0, got {num}")
        if not 16 <= size <= 1024:
            raise VqgenError(f"shapes image size must be between 16 and 1024 pixels, got {size}")
        self.num, self.size, self.seed = num, size, seed

    def __len__(self) -> int:
        return self.num

    def scene(self, index: int) -> Scene:
        """Sample scene ``index`` (no rendering)."""
        if not 0 <= index < self.num:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, index))
        held_out = held_out_prompts()
        weights = np.array(list(CATEGORY_WEIGHTS.values()))
        while True:
            category = CATEGORIES[rng.choice(len(CATEGORIES), p=weights / weights.sum())]
            spec = sample_spec(rng, category)
            caption = caption_of(spec)
            if caption in held_out:
                continue
            try:
                return Scene(caption, category, spec, layout(spec, self.size, rng))
            except VqgenError:  # a rare spec that cannot be placed at this size: draw another scene
                continue

    def __getitem__(self, index: int) -> Record:
        s = self.scene(index)
        return Record(image=render(s.objects, self.size), text=s.caption,
                      meta={"spec": s.spec, "category": s.category}, key=f"shapes-{self.seed}-{index:06d}")

    def __iter__(self):
        return (self[i] for i in range(self.num))


def write_shapes_dataset(out_dir: str | Path, num: int, size: int = 64, seed: int = 0,
                         progress: bool = True) -> dict:
    """Write ``num`` scenes as an image folder (PNGs + ``metadata.jsonl`` with ``spec``, ``category``).

    Returns stats: ``num``, ``size``, ``seed``, ``out_dir``, per-category counts, distinct captions.
    """
    from vqgen.data.folder import METADATA_NAME, write_image_folder

    written = write_image_folder(ShapesDataset(num, size, seed), out_dir, progress=progress)
    rows = [json.loads(line) for line in (Path(out_dir) / METADATA_NAME).read_text(encoding="utf-8").splitlines()]
    return {"out_dir": str(out_dir), "num": written, "size": size, "seed": seed,
            "categories": dict(sorted(Counter(r["category"] for r in rows).items())),
            "distinct_captions": len({r["text"] for r in rows})}
