"""Hard negatives for the ``shapes`` vocabulary: a caption or spec that differs in one detail.

``perturb_caption`` edits words (a colour, a shape, a count, a relation, or the colours of two
objects swapped); it works on any caption and returns ``None`` when no word can be edited.
``perturb_spec`` does the same on a scene spec, so the result can be rendered and judged by the
exact evaluator.
"""
from __future__ import annotations

import copy

import numpy as np

from vqgen.errors import VqgenError
from vqgen.shapes.captions import caption_of
from vqgen.shapes.vocabulary import COLORS, NUMBERS, PLURALS, SHAPES, validate_spec

_SINGULAR = {p: s for s, p in PLURALS.items()}
_COUNT_WORDS = {w: n for n, w in NUMBERS.items() if n > 1}
_FLIP_WORD = {"left": "right", "right": "left", "above": "below", "below": "above"}
_FLIP_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _fix_articles(words: list[str]) -> list[str]:
    """``a``/``an`` agree with the next word (an edit must not leave a tell such as "an red")."""
    out = list(words)
    for i in range(len(out) - 1):
        if out[i] in ("a", "an"):
            out[i] = "an" if out[i + 1][0] in "aeiou" else "a"
    return out


def _other(rng: np.random.Generator, choices, current: str) -> str:
    options = [c for c in choices if c != current]
    return options[rng.integers(len(options))]


def perturb_caption(text: str, rng: np.random.Generator) -> str | None:
    """A caption one edit away from ``text`` (lower-case shapes words), or None if none applies."""
    words = text.split(" ")
    edits = []
    colour_at = [i for i, w in enumerate(words) if w.strip(",") in COLORS]
    for i, w in enumerate(words):
        bare = w.strip(",")
        if bare in COLORS:
            edits.append(("colour", i))
        elif bare in SHAPES or bare in _SINGULAR:
            edits.append(("shape", i))
        elif bare in _COUNT_WORDS:
            edits.append(("count", i))
        elif bare in _FLIP_WORD:
            edits.append(("relation", i))
    if len({words[i].strip(",") for i in colour_at}) > 1:
        edits.append(("swap", -1))
    if not edits:
        return None
    kind, i = edits[rng.integers(len(edits))]
    out = list(words)

    def put(j: int, new: str) -> None:
        out[j] = new + ("," if words[j].endswith(",") else "")

    bare = words[i].strip(",") if i >= 0 else ""
    if kind == "colour":
        put(i, _other(rng, COLORS, bare))
    elif kind == "shape":
        if bare in SHAPES:
            put(i, _other(rng, SHAPES, bare))
        else:
            put(i, PLURALS[_other(rng, SHAPES, _SINGULAR[bare])])
    elif kind == "count":
        put(i, _other(rng, list(_COUNT_WORDS), bare))
    elif kind == "relation":
        put(i, _FLIP_WORD[bare])
    else:  # swap the colours of two objects whose colours differ
        while True:
            a, b = rng.choice(colour_at, size=2, replace=False)
            if words[a].strip(",") != words[b].strip(","):
                break
        put(a, words[b].strip(","))
        put(b, words[a].strip(","))
    new = " ".join(_fix_articles(out))
    return new if new != text else None


def perturb_spec(spec: dict, rng: np.random.Generator, tries: int = 50) -> dict:
    """A valid spec one edit away from ``spec`` whose caption differs (colour, shape, count,
    relation flipped, or two objects' colours swapped)."""
    spec = validate_spec(spec)
    base = caption_of(spec)
    for _ in range(tries):
        new = copy.deepcopy(spec)
        objects, relations = new["objects"], new["relations"]
        kinds = ["colour", "shape"]
        if any(o["count"] > 1 for o in objects):
            kinds.append("count")
        if relations:
            kinds.append("relation")
        if len({o["color"] for o in objects}) > 1:
            kinds.append("swap")
        kind = kinds[rng.integers(len(kinds))]
        if kind == "colour":
            o = objects[rng.integers(len(objects))]
            o["color"] = _other(rng, COLORS, o["color"])
        elif kind == "shape":
            o = objects[rng.integers(len(objects))]
            o["shape"] = _other(rng, SHAPES, o["shape"])
        elif kind == "count":
            o = [o for o in objects if o["count"] > 1][0]
            o["count"] = int(_other(rng, [2, 3, 4], o["count"]))
        elif kind == "relation":
            r = relations[rng.integers(len(relations))]
            r["relation"] = _FLIP_RELATION[r["relation"]]
        else:
            a, b = rng.choice(len(objects), size=2, replace=False)
            objects[a]["color"], objects[b]["color"] = objects[b]["color"], objects[a]["color"]
        try:
            new = validate_spec(new)
        except VqgenError:
            continue
        if caption_of(new) != base:
            return new
    raise VqgenError(f"could not perturb the spec of {base!r}")
