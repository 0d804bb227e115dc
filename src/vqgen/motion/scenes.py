"""Random clip specs, their timing and layout, per-frame states and rendering.

A clip has ``frames`` frames at :data:`~vqgen.motion.framerate.BASE_FPS`. Its *action window*
``[s, e]`` lasts ``4 * k`` frame intervals for a stride ``k`` of the frame-rate set (so the
frame-rate rule picks 5 key frames from ``s`` to ``e`` exactly); one object acts over the whole
window, the others over sub-intervals of it (actions of different durations). Before its action an
object shows its start state, after it its end state. An action's progress ``p`` runs linearly
from 0 to 1 over its frames:

    move      the box slides ``MOVE_RANGE`` of the image side along its direction
    grow      small -> large about the box centre (shrink: the reverse)
    appear    opacity 0 until p = 1/4, rising to 1 at p = 3/4 (disappear: the reverse)
    change    the old colour fades to the background by p = 1/2, the new one fades in by p = 3/4

Faded objects are blends with the white background, which the shapes evaluator reads as coverage,
so a half-faded object is seen or not by the same 0.5 rule as an anti-aliased edge. Objects never
overlap: the boxes each sweeps over the clip keep the shapes layout's gap (``GAP``, ``BORDER``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from vqgen.errors import VqgenError
from vqgen.motion.framerate import FRAME_RATES, KEY_FRAMES, stride_of
from vqgen.motion.vocabulary import (ACTIONS, CATEGORIES, COLORS, END_SIZE, MOVES, SHAPES, SIZES, START_SIZE,
                                     validate_spec)
from vqgen.shapes.evaluator import SIZE_SPLIT
from vqgen.shapes.scenes import BORDER, GAP, SUPERSAMPLE, shape_polygon
from vqgen.shapes.vocabulary import BACKGROUND, PALETTE

DEFAULT_FRAMES = 33                       # 2 s at 16 fps: room for the longest action window (32 intervals)
MOVE_RANGE = (0.25, 0.45)                 # distance a moving object travels, of the image side
CATEGORY_WEIGHTS = {"move": 0.2, "size": 0.12, "color": 0.12, "presence": 0.12, "two": 0.24, "three": 0.2}
SIZE_NAMED_PROB = 0.4
RENDER_ATTEMPTS = 5  # render_spec: layouts tried (each of `layout`'s tries) before a spec is called unplaceable
SINGLE_ACTIONS = {"move": tuple(MOVES), "size": ("grow", "shrink"), "color": ("change color",),
                  "presence": ("appear", "disappear")}


def sample_spec(rng: np.random.Generator, category: str) -> dict:
    """A random spec of one category (canonical form; see :mod:`vqgen.motion.vocabulary`)."""
    if category in SINGLE_ACTIONS:
        actions = [SINGLE_ACTIONS[category][rng.integers(len(SINGLE_ACTIONS[category]))]]
    elif category in ("two", "three"):
        actions = [ACTIONS[rng.integers(len(ACTIONS))] for _ in range(2 if category == "two" else 3)]
    else:
        raise VqgenError(f"unknown motion category {category!r}; expected one of {list(CATEGORIES)}")
    shapes = rng.permutation(len(SHAPES))[:len(actions)]
    colors = [COLORS[i] for i in rng.permutation(len(COLORS))]   # first ones taken, later ones for 'to'
    objects = []
    for i, action in enumerate(actions):
        size = None
        if rng.random() < SIZE_NAMED_PROB:
            size = START_SIZE.get(action) or ("small", "large")[rng.integers(2)]
        to = colors.pop() if action == "change color" else None
        objects.append({"shape": SHAPES[shapes[i]], "color": colors[i], "size": size, "action": action, "to": to})
    return {"objects": objects}


@dataclass(frozen=True)
class Track:
    """One object over a clip: its spec entry, boxes ``(x0, y0, side)`` in pixels at the start and
    end of its action, and the action's first and last frames."""

    entry: int
    shape: str
    color: str
    to: str | None
    action: str
    start_box: tuple[float, float, float]  # x0, y0, side
    end_box: tuple[float, float, float]
    start: int
    end: int

    def progress(self, t: int) -> float:
        if t <= self.start:
            return 0.0
        return 1.0 if t >= self.end else (t - self.start) / (self.end - self.start)

    def state(self, t: int, image_size: int) -> dict:
        """What frame ``t`` shows of this object: entry, shape, colour, named size, box, opacity."""
        p = self.progress(t)
        x0, y0, side = (float(a + p * (b - a)) for a, b in zip(self.start_box, self.end_box))
        color, alpha = self.color, 1.0
        if self.action == "appear":
            alpha = _clip01(2 * p - 0.5)
        elif self.action == "disappear":
            alpha = _clip01(1.5 - 2 * p)
        elif self.action == "change color":
            color, alpha = (self.color, _clip01(2 - 4 * p)) if p < 0.5 else (self.to, _clip01(4 * p - 2))
        return {"entry": self.entry, "shape": self.shape, "color": color,
                "size": "small" if side / image_size < SIZE_SPLIT else "large",
                "x0": round(x0, 3), "y0": round(y0, 3), "side": round(side, 3), "alpha": round(alpha, 3)}


def _clip01(v: float) -> float:
    return min(max(v, 0.0), 1.0)


def sample_timing(rng: np.random.Generator, n: int, frames: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The action window ``(s, e)`` and each of ``n`` objects' ``(start, end)`` inside it.

    The window lasts ``4 * k`` intervals for a stride ``k`` of the rate set that fits the clip;
    one random object acts over all of it, the others over at least half of it.
    """
    spans = [(KEY_FRAMES - 1) * stride_of(r) for r in FRAME_RATES if (KEY_FRAMES - 1) * stride_of(r) <= frames - 1]
    if not spans:
        raise VqgenError(f"a clip needs at least {KEY_FRAMES} frames, got {frames}")
    span = spans[rng.integers(len(spans))]
    s = int(rng.integers(0, frames - span))
    timing = []
    full = int(rng.integers(n))
    for i in range(n):
        length = span if i == full else int(rng.integers(max(span // 2, 1), span + 1))
        start = s + int(rng.integers(0, span - length + 1))
        timing.append((start, start + length))
    return (s, s + span), timing


Box = tuple[float, float, float]  # x0, y0, side in pixels


def _boxes(rng: np.random.Generator, obj: dict, size: int) -> tuple[Box, Box]:
    """Start and end boxes of one object, the box it sweeps placed uniformly inside the border."""
    start_size = START_SIZE.get(obj["action"]) or obj["size"] or ("small", "large")[rng.integers(2)]
    end_size = END_SIZE.get(obj["action"], start_size)
    a, b = SIZES[start_size] * size, SIZES[end_size] * size
    big = max(a, b)
    dx, dy = MOVES.get(obj["action"], (0, 0))
    dist = rng.uniform(*MOVE_RANGE) * size
    lo, hi = BORDER * size, size - BORDER * size
    x, y = rng.uniform(lo, max(hi - big - abs(dx) * dist, lo)), rng.uniform(lo, max(hi - big - abs(dy) * dist, lo))
    cx, cy = x + big / 2 + max(-dx, 0) * dist, y + big / 2 + max(-dy, 0) * dist  # centre at the start
    return (cx - a / 2, cy - a / 2, a), (cx + dx * dist - b / 2, cy + dy * dist - b / 2, b)


def _swept(start: Box, end: Box) -> tuple[float, float, float, float]:
    """The box covering an object's start and end boxes (all it passes over: moves and resizes are linear)."""
    return (min(start[0], end[0]), min(start[1], end[1]),
            max(start[0] + start[2], end[0] + end[2]), max(start[1] + start[2], end[1] + end[2]))


def layout(spec: dict, timing: list[tuple[int, int]], size: int, rng: np.random.Generator,
           tries: int = 2000) -> list[Track]:
    """Place every object of a spec (rejection sampling): each swept box inside the border, and
    every two swept boxes ``GAP * size`` apart, so objects never touch in any frame."""
    lo, hi, gap = BORDER * size, size - BORDER * size, GAP * size
    for _ in range(tries):
        tracks, swept = [], []
        for i, (o, (start, end)) in enumerate(zip(spec["objects"], timing)):
            a, b = _boxes(rng, o, size)
            box = _swept(a, b)
            if box[0] < lo or box[1] < lo or box[2] > hi or box[3] > hi:
                break
            if any(not (box[2] + gap <= q[0] or q[2] + gap <= box[0] or box[3] + gap <= q[1] or q[3] + gap <= box[1])
                   for q in swept):
                break
            swept.append(box)
            tracks.append(Track(i, o["shape"], o["color"], o["to"], o["action"], a, b, start, end))
        if len(tracks) == len(spec["objects"]):
            return tracks
    raise VqgenError(f"could not place the objects of a {len(spec['objects'])}-object clip in a {size}px frame")


def clip_states(tracks: list[Track], frames: int, size: int) -> list[list[dict]]:
    """Per frame, the state of every object (the clip's full spec per frame)."""
    return [[tr.state(t, size) for tr in tracks] for t in range(frames)]


def render_frame(states: list[dict], size: int) -> np.ndarray:
    """Draw one frame's object states on white: (H, W, 3) uint8, anti-aliased by supersampling.

    Each object is its colour blended over the background by coverage times opacity.
    """
    f = SUPERSAMPLE
    rgb = np.empty((size, size, 3), dtype=np.float32)  # (H, W, 3)
    rgb[:] = BACKGROUND
    for st in states:
        if st["alpha"] <= 0:
            continue
        mask = Image.new("L", (size * f, size * f), 0)
        draw = ImageDraw.Draw(mask)
        x0, y0, side = st["x0"] * f, st["y0"] * f, st["side"] * f
        poly = shape_polygon(st["shape"], x0, y0, side)
        if poly is None:
            draw.ellipse([x0, y0, x0 + side, y0 + side], fill=255)
        else:
            draw.polygon(poly, fill=255)
        cover = np.asarray(mask.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255  # (H, W)
        color = np.array(PALETTE[st["color"]], dtype=np.float32)                                     # (3,)
        rgb += (color - rgb) * (cover * st["alpha"])[..., None]
    return np.clip(rgb, 0, 255).round().astype(np.uint8)


def render_clip(states: list[list[dict]], size: int) -> np.ndarray:
    """Every frame of a clip: (T, H, W, 3) uint8."""
    return np.stack([render_frame(s, size) for s in states])



def render_spec(spec: dict, size: int = 64, frames: int = DEFAULT_FRAMES,
                seed: int | np.random.Generator = 0) -> tuple[np.ndarray, list[list[dict]]]:
    """A ground-truth clip of a spec (random timing and layout from ``seed``): ``(frames (T, H, W, 3)
    uint8, per-frame states)``. Raises :class:`VqgenError` when the objects cannot be placed."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    spec = validate_spec(spec)
    for attempt in range(RENDER_ATTEMPTS):
        _, timing = sample_timing(rng, len(spec["objects"]), frames)
        try:
            tracks = layout(spec, timing, size, rng)
            break
        except VqgenError:
            if attempt == RENDER_ATTEMPTS - 1:
                raise
    states = clip_states(tracks, frames, size)
    return render_clip(states, size), states
