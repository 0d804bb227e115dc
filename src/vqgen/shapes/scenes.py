"""Random scene specs, their layout and rendering.

Objects are placed so that they never overlap and every stated relation holds with a clear gap
(:func:`layout`), then drawn anti-aliased on white (:func:`render`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from vqgen.errors import VqgenError
from vqgen.shapes.captions import caption_of
from vqgen.shapes.vocabulary import (BACKGROUND, CATEGORIES, COLORS, MAX_OBJECTS, PALETTE, RELATIONS, SHAPES, SIZES,
                                     validate_spec)

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

