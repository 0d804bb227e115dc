"""The exact evaluator of the ``motion`` domain: does a clip show what its spec asks for?

No learned model and no timing needed (it scores 5 key frames, 17 interpolated frames or a
33-frame ground-truth clip alike):

1. **Read.** Every frame goes through the shapes evaluator's :func:`~vqgen.shapes.evaluator.detect`
   (palette colour segmentation, shape templates, named size).
2. **Track.** Shapes differ within a clip (:mod:`vqgen.motion.vocabulary`), so object ``i`` in
   frame ``t`` is the detection with its shape and one of its colours (its own, or its new one
   for ``change color``); when there are several, the one nearest its last position.
3. **Score** each object on three criteria:

   ``object``       every frame: present where the action says so (all frames; an appearing one
                    in the last frame and not the first, a disappearing one the reverse; a colour
                    changer in its old colour first and its new one last, either or neither in
                    between, as it fades), in an allowed colour, at most once, of the named size
                    (for grow/shrink: the start size in the first frame).
   ``action``       start against end: for appear / disappear the first and last frames
                    (absent then present / present then absent); for the others the earliest
                    sighting in the first quarter of the frames against the latest in the last
                    quarter (a misread end frame already fails ``object``). Move: the centroid
                    travels at least ``MOVE_MIN`` of the frame side along the direction, less
                    than ``MAX_PERP`` of that across; grow/shrink: end size over start size (or
                    the reverse) at least ``GROWTH_MIN``; change color: old colour, then new.
   ``consistency``  identity and size stable where they should be: visible in one unbroken run
                    (all frames, a suffix when appearing, a prefix when disappearing, old colour
                    a prefix and new a suffix when changing); a still object's centroid within
                    ``STILL_TOL`` of the side; a mover's motion without steps back or sideways
                    beyond ``STEP_TOL``; a constant size within ``SIZE_TOL`` of its median
                    (``FADE_SIZE_TOL`` for one that fades: its edges drop below half coverage
                    first); a resizing object's size monotone within ``STEP_TOL``.

A clip passes when every criterion of every object holds; ``frame_objects[t]`` says whether
frame ``t`` alone had every object right (per-frame object accuracy).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vqgen.motion.vocabulary import ACTION_KINDS, MOVES, START_SIZE, validate_spec
from vqgen.shapes.evaluator import Detection, detect

MOVE_MIN = 0.10     # of the frame side: the least travel of a moving object (ground truth: 0.25..0.45)
MAX_PERP = 0.5      # sideways travel, at most this fraction of the travel along the direction
GROWTH_MIN = 1.25   # the least ratio of end to start size of a growing object (ground truth: 1.6)
STILL_TOL = 0.06    # of the side: how far a still object's centroid may wander
STEP_TOL = 0.04     # of the side: the largest step back (or sideways) of a mover, or against a resize
SIZE_TOL = 0.2      # relative spread of a constant size about its median
FADE_SIZE_TOL = 0.35  # ... of an object that fades in or out (a half-faded edge drops below the 0.5 coverage rule)


@dataclass(frozen=True)
class ObjectVerdict:
    """How one spec object fared: the three criteria, its per-frame object check and the track."""

    index: int
    shape: str
    color: str
    action: str
    object_ok: bool
    action_ok: bool
    consistency_ok: bool
    frame_ok: list[bool] = field(repr=False)
    track: list[dict | None] = field(repr=False)  # per frame: colour, cx, cy, extent of its detection

    @property
    def passed(self) -> bool:
        return self.object_ok and self.action_ok and self.consistency_ok


@dataclass(frozen=True)
class ClipScore:
    """The evaluator's verdict on one clip."""

    objects: list[ObjectVerdict]
    frames: int

    @property
    def criteria(self) -> dict[str, bool]:
        """``object``, ``action``, ``consistency``: each holds for every object."""
        return {"object": all(o.object_ok for o in self.objects),
                "action": all(o.action_ok for o in self.objects),
                "consistency": all(o.consistency_ok for o in self.objects)}

    @property
    def passed(self) -> bool:
        return all(self.criteria.values())

    @property
    def frame_objects(self) -> list[bool]:
        """Per frame: every object right in that frame."""
        return [all(o.frame_ok[t] for o in self.objects) for t in range(self.frames)]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "criteria": self.criteria, "frames": self.frames,
                "frame_objects": self.frame_objects,
                "objects": [{k: v for k, v in asdict(o).items() if k != "frame_ok"} for o in self.objects]}


def _track(per_frame: list[list[Detection]], obj: dict) -> tuple[list[Detection | None], list[int]]:
    """The object's detection in each frame (or ``None``) and how many candidates each frame had."""
    colors = {obj["color"], obj["to"]} - {None}
    track: list[Detection | None] = []
    counts = []
    last = None
    for dets in per_frame:
        cands = [d for d in dets if d.shape == obj["shape"] and d.color in colors]
        counts.append(len(cands))
        if not cands:
            track.append(None)
            continue
        if last is None:
            pick = max(cands, key=lambda d: d.area)
        else:
            pick = min(cands, key=lambda d: (d.cx - last.cx) ** 2 + (d.cy - last.cy) ** 2)
        track.append(pick)
        last = pick
    return track, counts


def _extent(d: Detection) -> int:
    return max(d.box[2] - d.box[0], d.box[3] - d.box[1])


def _one_run(flags: list[bool]) -> bool:
    """The true entries form one unbroken run (or there are none)."""
    idx = [i for i, f in enumerate(flags) if f]
    return not idx or idx[-1] - idx[0] + 1 == len(idx)


def _judge(obj: dict, track: list[Detection | None], counts: list[int],
           side: float) -> tuple[bool, bool, bool, list[bool]]:
    """``(object_ok, action_ok, consistency_ok, per-frame object checks)`` of one object's track."""
    action, kind, T = obj["action"], ACTION_KINDS[obj["action"]], len(track)
    first, last = track[0], track[-1]
    seen = [d is not None for d in track]
    # -- object, per frame
    frame_ok = []
    for t, d in enumerate(track):
        if action == "appear":
            need = {0: False, T - 1: True}.get(t)
        elif action == "disappear":
            need = {0: True, T - 1: False}.get(t)
        elif action == "change color":
            need = True if t in (0, T - 1) else None
        else:
            need = True
        ok = counts[t] <= 1 and (need is None or need == (d is not None))
        if d is not None and action == "change color" and t in (0, T - 1):
            ok &= d.color == (obj["color"] if t == 0 else obj["to"])
        if d is not None and obj["size"] is not None and kind != "size":
            ok &= d.size == obj["size"]
        if t == 0 and kind == "size" and d is not None:
            ok &= d.size == START_SIZE[action]
        frame_ok.append(bool(ok))
    object_ok = all(frame_ok)
    # -- action: the start against the end (appear/disappear: the first and last frames exactly; the
    # others: the earliest sighting in the first quarter against the latest in the last quarter, so a
    # misread end frame counts against `object` and not twice)
    if kind != "presence":
        edge = (T - 1) // 4
        first = next((d for d in track[:edge + 1] if d is not None), None)
        last = next((d for d in reversed(track[T - 1 - edge:]) if d is not None), None)
    if kind == "move":
        ux, uy = MOVES[action]
        ok = first is not None and last is not None
        if ok:
            dx, dy = last.cx - first.cx, last.cy - first.cy
            along, across = dx * ux + dy * uy, abs(dx * uy - dy * ux)
            ok = along >= MOVE_MIN * side and across <= MAX_PERP * along
    elif kind == "size":
        ok = first is not None and last is not None
        if ok:
            a, b = _extent(first), _extent(last)
            ok = (b / a if action == "grow" else a / b) >= GROWTH_MIN
    elif action == "change color":
        ok = first is not None and last is not None and first.color == obj["color"] and last.color == obj["to"]
    else:
        ok = (first is None) == (action == "appear") and (last is None) == (action == "disappear")
    action_ok = bool(ok)
    # -- consistency over the frames where it is seen
    if action == "change color":
        old = [d is not None and d.color == obj["color"] for d in track]
        new = [d is not None and d.color == obj["to"] for d in track]
        runs = _one_run(old) and _one_run(new) and (not any(old) or old[0]) and (not any(new) or new[-1]) \
            and (not (any(old) and any(new)) or old.index(True) < new.index(True))
    elif action == "appear":
        runs = _one_run(seen) and (not any(seen) or seen[-1])
    elif action == "disappear":
        runs = _one_run(seen) and (not any(seen) or seen[0])
    else:
        runs = all(seen)
    dets = [d for d in track if d is not None]
    steady = True
    if dets:
        xs, ys = np.array([d.cx for d in dets]), np.array([d.cy for d in dets])
        ext = np.array([_extent(d) for d in dets], dtype=float)
        tol = STEP_TOL * side
        if kind == "move":
            ux, uy = MOVES[action]
            along, across = xs * ux + ys * uy, xs * uy - ys * ux
            steady = bool(np.all(np.diff(along) >= -tol) and np.ptp(across) <= 2 * tol)
        else:
            steady = bool(max(np.ptp(xs), np.ptp(ys)) <= STILL_TOL * side)
        if kind == "size":
            steps = np.diff(ext) if action == "grow" else -np.diff(ext)
            steady &= bool(np.all(steps >= -tol))
        else:
            spread = SIZE_TOL if kind == "move" else FADE_SIZE_TOL
            steady &= bool(np.all(np.abs(ext - np.median(ext)) <= spread * np.median(ext)))
    return object_ok, action_ok, bool(runs and steady), frame_ok


def score_clip(frames, spec: dict) -> ClipScore:
    """Score a clip against a motion spec. ``frames``: anything :func:`vqgen.motion.dataset.as_frames`
    takes ((T, H, W, 3) uint8, (T, 3, H, W) floats in [0, 1], a list of PIL images)."""
    from vqgen.motion.dataset import as_frames

    spec = validate_spec(spec)
    arr = as_frames(frames)                                 # (T, H, W, 3)
    side = math.sqrt(arr.shape[1] * arr.shape[2])
    per_frame = [detect(f) for f in arr]
    verdicts = []
    for i, obj in enumerate(spec["objects"]):
        track, counts = _track(per_frame, obj)
        object_ok, action_ok, consistency_ok, frame_ok = _judge(obj, track, counts, side)
        verdicts.append(ObjectVerdict(
            index=i, shape=obj["shape"], color=obj["color"], action=obj["action"], object_ok=object_ok,
            action_ok=action_ok, consistency_ok=consistency_ok, frame_ok=frame_ok,
            track=[None if d is None else {"color": d.color, "cx": round(d.cx, 2), "cy": round(d.cy, 2),
                                           "extent": _extent(d)} for d in track]))
    return ClipScore(objects=verdicts, frames=len(arr))
