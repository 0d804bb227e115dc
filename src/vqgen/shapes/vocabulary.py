"""The words and values of the ``shapes`` domain, and the scene *spec* every other module reads.

A scene holds 1–4 objects (circle, square, triangle; six palette colours; two sizes) on a white
background. A spec says what a caption asks for::

    {"objects": [{"shape": "circle", "color": "red", "count": 1, "size": "large"}, ...],
     "relations": [{"a": 0, "relation": "left of", "b": 1}, ...]}

``size`` is ``None`` when the caption does not name one (the renderer then picks one at random).
Within a spec, no two entries share both shape and colour, so every entry (and relation) refers
to one unambiguous group of objects. Captions fall into five categories (:data:`CATEGORIES`):
``single`` ("a red circle"), ``count`` ("three blue squares"), ``relation`` ("a green triangle to
the left of a yellow circle"), ``binding`` ("a red square and a blue circle") and ``multi`` (3–4
objects).
"""
from __future__ import annotations

from typing import Any

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

