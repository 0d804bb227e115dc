"""The exact evaluator of the ``shapes`` domain: does an image show what its spec asks for?

Classical image analysis, no learned model:

0. **Noise.** When the background (the image border) is noisy, the image is first smoothed with
   a Gaussian whose width follows the noise level.
1. **Colour.** The background colour is the median of the image border. Every pixel is
   projected onto each segment background → palette colour in RGB; the nearest segment gives
   its colour and the projection its coverage ``alpha`` (an anti-aliased or blurred edge pixel
   is a mix of the two, so it lies on the segment). Pixels with ``alpha >= 0.5`` within
   ``COLOR_TOLERANCE`` of their segment are foreground; others are background or unknown.
2. **Objects.** Connected components of each colour (holes filled); components smaller than
   ``MIN_AREA`` (a fraction of the image area, a quarter of the smallest drawn object) are noise.
3. **Shape.** Each component is compared with ideal masks fitted to its bounding box: an
   ellipse, and squares and triangles (pointing any of four ways) with corners rounded as blur
   rounds them; the best intersection-over-union names the shape, and an IoU under
   ``MIN_SHAPE_IOU`` or a box more elongated than ``MAX_ASPECT`` is no shape. **Size** is
   the box's longer side: small and large are split at the geometric mean of their drawn sizes.
4. **Scoring.** For each spec entry: present (at least one component with its colour and shape,
   and size when the spec names one), count exact (the number of components with its colour and
   shape), size (all of them of the named size); for each relation: it holds between the
   centroids of every pair, by more than ``RELATION_MARGIN`` of the image side.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from vqgen.shapes.vocabulary import PALETTE, SIZES, validate_spec
from vqgen.errors import VqgenError

COLOR_TOLERANCE = 80.0      # RGB distance from a pixel to its colour's segment, at most
MIN_AREA = 0.25 * 0.5 * min(SIZES.values()) ** 2   # of the image area: a quarter of a small triangle
MIN_SHAPE_IOU = 0.65
MAX_ASPECT = 2.0
ROUNDINGS = (0.0, 0.016, 0.032)  # corner radii of square and triangle templates, of the image side
MAX_ROUNDING = 0.2               # ... and at most this much of the object's box
SIZE_SPLIT = math.sqrt(SIZES["small"] * SIZES["large"])  # of the image side
RELATION_MARGIN = 0.05      # of the image side
MIN_NOISE = 4.0             # background noise (std in 0..255) below which images are not smoothed
DENOISE_SIGMA = 0.7         # smoothing (pixels, at 64 px) for noise of std 25

_COLOR_NAMES = tuple(PALETTE)
_COLOR_RGB = np.array([PALETTE[c] for c in _COLOR_NAMES], dtype=np.float32)  # (K, 3)
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Detection:
    """One object found in an image: colour, shape (``None``: no known shape), size, geometry in pixels."""

    color: str
    shape: str | None
    size: str
    cx: float
    cy: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    area: int
    iou: float  # of the best shape template


@dataclass(frozen=True)
class ObjectResult:
    """How one spec entry fared: ``found`` components have its colour and shape."""

    index: int
    shape: str
    color: str
    count: int
    size: str | None
    found: int
    present: bool
    count_ok: bool
    size_ok: bool

    @property
    def passed(self) -> bool:
        return self.present and self.count_ok and self.size_ok


@dataclass(frozen=True)
class RelationResult:
    """Whether ``objects[a] relation objects[b]`` holds in the image."""

    a: int
    relation: str
    b: int
    holds: bool


@dataclass(frozen=True)
class ShapesScore:
    """The evaluator's verdict on one image: per-criterion results and ``passed`` (all of them)."""

    objects: list[ObjectResult]
    relations: list[RelationResult]
    detections: list[Detection] = field(repr=False)
    extra: list[Detection] = field(repr=False)  # components no spec entry asked for (not scored)

    @property
    def criteria(self) -> dict[str, bool]:
        """Every criterion by name: ``object{i}.present``, ``object{i}.count``, ``object{i}.size``, ``relation{j}``."""
        out: dict[str, bool] = {}
        for o in self.objects:
            out[f"object{o.index}.present"] = o.present
            out[f"object{o.index}.count"] = o.count_ok
            if o.size is not None:
                out[f"object{o.index}.size"] = o.size_ok
        for j, r in enumerate(self.relations):
            out[f"relation{j}"] = r.holds
        return out

    @property
    def passed(self) -> bool:
        return all(self.criteria.values())

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "criteria": self.criteria,
                "objects": [asdict(o) for o in self.objects],
                "relations": [asdict(r) for r in self.relations],
                "detections": [asdict(d) for d in self.detections]}


# ----------------------------------------------------------------------------- detection
def _to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """RGB as float32 (H, W, 3) in 0..255; a float array with values in 0..1 is scaled up."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise VqgenError(f"expected an RGB image of shape (H, W, 3), got {arr.shape}")
    scale = 255.0 if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0.0) <= 1.0 else 1.0
    return arr.astype(np.float32) * scale


def _border(rgb: np.ndarray) -> np.ndarray:
    return np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])  # (2H+2W, 3)


def noise_level(rgb: np.ndarray) -> float:
    """Robust standard deviation of the background (the image border), in 0..255.

    From the lower quartile's distance to the median, which clipping at white leaves intact.
    """
    q25, q50 = np.percentile(_border(rgb), [25, 50], axis=0)  # (3,) each
    return float(np.mean(q50 - q25) / 0.6745)


def denoise(rgb: np.ndarray) -> np.ndarray:
    """Smooth a noisy image before its pixels are classified; a clean one is returned as it is.

    A Gaussian whose width grows with the noise level and (more slowly) with the image side.
    """
    noise = noise_level(rgb)
    if noise < MIN_NOISE:
        return rgb
    side = math.sqrt(rgb.shape[0] * rgb.shape[1])
    sigma = DENOISE_SIGMA * math.sqrt(side / 64) * min(noise / 25, 1.5)
    return ndimage.gaussian_filter(rgb, (sigma, sigma, 0))


def classify_pixels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Palette colour index per pixel (-1: background or unknown) and coverage ``alpha``.

    rgb: (H, W, 3) float in 0..255. Returns ``(labels (H, W) int, alpha (H, W) float)``.
    """
    bg = np.median(_border(rgb), axis=0)                              # (3,)
    d = _COLOR_RGB - bg                                               # (K, 3)
    p = rgb - bg                                                      # (H, W, 3)
    pd = p @ d.T                                                      # (H, W, K)
    dd = (d * d).sum(1)                                               # (K,)
    t = np.clip(pd / dd, 0.0, 1.0)                                    # (H, W, K)
    resid2 = (p * p).sum(-1, keepdims=True) - 2 * t * pd + t * t * dd  # (H, W, K) squared distances
    k = resid2.argmin(-1)                                             # (H, W)
    alpha = np.take_along_axis(t, k[..., None], -1)[..., 0]           # (H, W)
    dist2 = np.take_along_axis(resid2, k[..., None], -1)[..., 0]      # (H, W)
    labels = np.where((alpha >= 0.5) & (dist2 <= COLOR_TOLERANCE ** 2), k, -1)
    return labels, alpha


@lru_cache(maxsize=4096)
def _ellipse(h: int, w: int) -> np.ndarray:
    """The ellipse filling an ``h`` x ``w`` box, sampled at pixel centres."""
    y = (np.arange(h) + 0.5)[:, None] / h   # (h, 1) in 0..1
    x = (np.arange(w) + 0.5)[None, :] / w   # (1, w)
    return (2 * x - 1) ** 2 + (2 * y - 1) ** 2 <= 1


@lru_cache(maxsize=4096)
def _rounded(h: int, w: int, shape: str, r: float) -> np.ndarray:
    """A square or upright triangle with corners rounded by ``r`` pixels, filling an ``h`` x ``w`` box.

    It is the shape fitted to the box shrunk by ``r`` on every side, dilated by a disc of radius
    ``r``: a blurred shape thresholded at half coverage looks like this (r grows with the blur).
    Cached: callers must not modify the result.
    """
    y = (np.arange(h) + 0.5)[:, None]       # (h, 1) pixels
    x = (np.arange(w) + 0.5)[None, :]       # (1, w)
    x0, y0, x1, y1 = r, r, w - r, h - r
    if shape == "square":
        dx, dy = np.maximum(np.maximum(x0 - x, x - x1), 0), np.maximum(np.maximum(y0 - y, y - y1), 0)
        return dx * dx + dy * dy <= r * r + 1e-9
    # distance from each pixel centre to the triangle (apex top centre, base at the bottom)
    verts = [(x0, y1), ((x0 + x1) / 2, y0), (x1, y1)]  # clockwise on screen
    inside = np.ones((h, w), dtype=bool)
    dist2 = np.full((h, w), np.inf)
    for (ax, ay), (bx, by) in zip(verts, verts[1:] + verts[:1]):
        ex, ey = bx - ax, by - ay
        inside &= ex * (y - ay) - ey * (x - ax) >= 0
        t = np.clip(((x - ax) * ex + (y - ay) * ey) / (ex * ex + ey * ey), 0, 1)
        dist2 = np.minimum(dist2, (x - ax - t * ex) ** 2 + (y - ay - t * ey) ** 2)
    return inside | (dist2 <= r * r + 1e-9)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def classify_shape(mask: np.ndarray, side: float) -> tuple[str | None, float]:
    """Name the shape of a component cropped to its box: ``(shape or None, best IoU)``.

    The mask is compared with an ellipse, and with squares and triangles (pointing up, down, left
    or right) whose corners are rounded by each of ``ROUNDINGS`` (fractions of the image side
    ``side``; blur rounds corners), at most ``MAX_ROUNDING`` of the box.
    """
    h, w = mask.shape
    radii = sorted({min(f * side, MAX_ROUNDING * min(h, w)) for f in ROUNDINGS})
    ious = {"circle": _iou(mask, _ellipse(h, w)),
            "square": max(_iou(mask, _rounded(h, w, "square", r)) for r in radii)}
    turned = [mask, mask[::-1], mask.T, mask.T[::-1]]  # each orientation turned to point up
    ious["triangle"] = max(_iou(m, _rounded(*m.shape, "triangle", r)) for m in turned for r in radii)
    best = max(ious, key=ious.get)
    if ious[best] < MIN_SHAPE_IOU or max(h, w) > MAX_ASPECT * min(h, w):
        return None, ious[best]
    return best, ious[best]


def detect(image: Image.Image | np.ndarray) -> list[Detection]:
    """Every coloured object in an image (components of one palette colour, noise specks dropped)."""
    rgb = denoise(_to_array(image))
    h, w = rgb.shape[:2]
    side = math.sqrt(h * w)
    labels, _ = classify_pixels(rgb)
    found = []
    for k, color in enumerate(_COLOR_NAMES):
        mask = labels == k
        if not mask.any():
            continue
        comp, _ = ndimage.label(mask, structure=_EIGHT)
        for i, sl in enumerate(ndimage.find_objects(comp), 1):
            crop = ndimage.binary_fill_holes(comp[sl] == i)
            area = int(crop.sum())
            if area < MIN_AREA * h * w:
                continue
            ys, xs = np.nonzero(crop)
            shape, iou = classify_shape(crop, side)
            y0, x0 = sl[0].start, sl[1].start
            extent = max(crop.shape) / side
            found.append(Detection(color=color, shape=shape, size="small" if extent < SIZE_SPLIT else "large",
                                   cx=float(x0 + xs.mean() + 0.5), cy=float(y0 + ys.mean() + 0.5),
                                   box=(x0, y0, sl[1].stop, sl[0].stop), area=area, iou=round(iou, 4)))
    return found


# ----------------------------------------------------------------------------- scoring
def _relation_holds(a: Detection, relation: str, b: Detection, margin: float) -> bool:
    return {"left of": b.cx - a.cx > margin, "right of": a.cx - b.cx > margin,
            "above": b.cy - a.cy > margin, "below": a.cy - b.cy > margin}[relation]


def score(image: Image.Image | np.ndarray, spec: dict) -> ShapesScore:
    """Score an image against a scene spec (see :mod:`vqgen.shapes.vocabulary` for the spec form)."""
    spec = validate_spec(spec)
    rgb = _to_array(image)
    detections = detect(rgb)
    margin = RELATION_MARGIN * math.sqrt(rgb.shape[0] * rgb.shape[1])
    objects, matched = [], []
    for i, o in enumerate(spec["objects"]):
        same = [d for d in detections if d.color == o["color"] and d.shape == o["shape"]]
        right_size = [d for d in same if o["size"] is None or d.size == o["size"]]
        matched.append(right_size)
        objects.append(ObjectResult(index=i, shape=o["shape"], color=o["color"], count=o["count"], size=o["size"],
                                    found=len(same), present=bool(right_size), count_ok=len(same) == o["count"],
                                    size_ok=len(right_size) == len(same)))
    relations = [RelationResult(r["a"], r["relation"], r["b"],
                                holds=bool(matched[r["a"]] and matched[r["b"]]) and all(
                                    _relation_holds(da, r["relation"], db, margin)
                                    for da in matched[r["a"]] for db in matched[r["b"]]))
                 for r in spec["relations"]]
    asked = {(o["color"], o["shape"]) for o in spec["objects"]}
    extra = [d for d in detections if (d.color, d.shape) not in asked]
    return ShapesScore(objects=objects, relations=relations, detections=detections, extra=extra)


def degrade(image: Image.Image | np.ndarray, blur: float = 0.0, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """An image as a generator might draw it: Gaussian blur of ``blur`` pixels, then Gaussian noise of
    std ``noise`` (a fraction of 255), clipped to uint8 (H, W, 3). For robustness checks of the evaluator.
    """
    rgb = _to_array(image)
    if blur > 0:
        rgb = ndimage.gaussian_filter(rgb, (blur, blur, 0))
    if noise > 0:
        rgb = rgb + np.random.default_rng(seed).normal(0.0, noise * 255.0, rgb.shape)
    return np.clip(rgb, 0, 255).round().astype(np.uint8)
