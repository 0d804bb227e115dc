"""The caption of a clip spec, in the shapes vocabulary: each object is a mention ("a small blue
square", from :mod:`vqgen.shapes.captions`) and a verb phrase; two objects are joined by "while",
a third by "and" ("a red circle moves up while a blue square grows and a green triangle appears")."""
from __future__ import annotations

from vqgen.shapes.captions import _mention

VERBS = {"move left": "moves to the left", "move right": "moves to the right", "move up": "moves up",
         "move down": "moves down", "grow": "grows", "shrink": "shrinks", "appear": "appears",
         "disappear": "disappears"}


def clause_of(obj: dict) -> str:
    """``"a red circle moves to the right"`` / ``"a blue square turns green"``."""
    mention = _mention({**obj, "count": 1})
    verb = f"turns {obj['to']}" if obj["action"] == "change color" else VERBS[obj["action"]]
    return f"{mention} {verb}"


def caption_of(spec: dict) -> str:
    """The canonical caption of a (validated) clip spec."""
    clauses = [clause_of(o) for o in spec["objects"]]
    if len(clauses) == 1:
        return clauses[0]
    return clauses[0] + " while " + " and ".join(clauses[1:])
