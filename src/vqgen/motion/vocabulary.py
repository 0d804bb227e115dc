"""The words of the ``motion`` domain and the clip *spec* every other module reads.

A clip shows 1–3 objects of the shapes vocabulary (shape, palette colour, size), each doing one
action over the clip. A spec says what a caption asks for::

    {"objects": [{"shape": "circle", "color": "red", "size": None, "action": "move right", "to": None},
                 {"shape": "square", "color": "blue", "size": "small", "action": "change color", "to": "green"}]}

``size`` is the size at the start of the clip (``None``: the caption names none); ``grow`` starts
small and ends large, ``shrink`` the reverse, so a named size must agree. ``to`` is the new colour
of ``change color`` and ``None`` otherwise. Within a clip shapes differ and colours differ (also
the new colours), so every object is told apart by its shape in every frame whatever its colour.

Prompt categories (:data:`CATEGORIES`): ``move``, ``size`` (grow/shrink), ``color``, ``presence``
(appear/disappear) for one object; ``two`` and ``three`` for two and three objects.
"""
from __future__ import annotations

from typing import Any

from vqgen.errors import VqgenError
from vqgen.shapes.vocabulary import COLORS, PALETTE, SHAPES, SIZES

MOVES = {"move left": (-1, 0), "move right": (1, 0), "move up": (0, -1), "move down": (0, 1)}  # unit (dx, dy)
ACTIONS = (*MOVES, "grow", "shrink", "change color", "appear", "disappear")
ACTION_KINDS = {**{a: "move" for a in MOVES}, "grow": "size", "shrink": "size", "change color": "color",
                "appear": "presence", "disappear": "presence"}
START_SIZE = {"grow": "small", "shrink": "large"}  # the size a resizing object starts with
END_SIZE = {"grow": "large", "shrink": "small"}
CATEGORIES = ("move", "size", "color", "presence", "two", "three")
MAX_OBJECTS = 3



def validate_spec(spec: Any) -> dict:
    """Check a clip spec and return it in canonical form (keys, order, ``size`` and ``to`` present).

    Raises :class:`VqgenError` naming the problem.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("objects"), list):
        raise VqgenError("a motion spec must be an object with an 'objects' list")
    if not 1 <= len(spec["objects"]) <= MAX_OBJECTS:
        raise VqgenError(f"a motion spec needs 1..{MAX_OBJECTS} objects, got {len(spec['objects'])}")
    objects = []
    for i, o in enumerate(spec["objects"]):
        if not isinstance(o, dict):
            raise VqgenError(f"spec object {i} is not an object")
        shape, color, size, action, to = o.get("shape"), o.get("color"), o.get("size"), o.get("action"), o.get("to")
        if shape not in SHAPES:
            raise VqgenError(f"spec object {i}: shape {shape!r} is not one of {list(SHAPES)}")
        if color not in PALETTE:
            raise VqgenError(f"spec object {i}: color {color!r} is not one of {list(COLORS)}")
        if size is not None and size not in SIZES:
            raise VqgenError(f"spec object {i}: size {size!r} is not null or one of {list(SIZES)}")
        if action not in ACTIONS:
            raise VqgenError(f"spec object {i}: action {action!r} is not one of {list(ACTIONS)}")
        if size is not None and START_SIZE.get(action, size) != size:
            raise VqgenError(f"spec object {i}: a {size} object cannot {action} (it starts {START_SIZE[action]})")
        if action == "change color":
            if to not in PALETTE or to == color:
                raise VqgenError(f"spec object {i}: 'change color' needs 'to', a palette colour other than {color!r}")
        elif to is not None:
            raise VqgenError(f"spec object {i}: 'to' goes with 'change color' only")
        objects.append({"shape": shape, "color": color, "size": size, "action": action, "to": to})
    if len({o["shape"] for o in objects}) < len(objects):
        raise VqgenError("the objects of a motion spec must have different shapes")
    colors = [o["color"] for o in objects] + [o["to"] for o in objects if o["to"]]
    if len(set(colors)) < len(colors):
        raise VqgenError("the objects of a motion spec must have different colours (new colours included)")
    return {"objects": objects}


def category_of(spec: dict) -> str:
    """The prompt category of a spec: the action kind of a single object, else ``two`` / ``three``."""
    objects = spec["objects"]
    if len(objects) == 1:
        return ACTION_KINDS[objects[0]["action"]]
    return "two" if len(objects) == 2 else "three"
