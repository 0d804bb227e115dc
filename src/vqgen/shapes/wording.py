"""Many ways to say one scene: synonyms, number forms, clause orders, templates and typos.

Every word list and template comes in two parts: ``TRAIN`` (what ``vqgen data shapes --captions K``
may write) and ``HELD_OUT`` (only the hold-out suite ``vqgen/prompts/shapes_holdout.jsonl`` uses
them). The held-out part also holds the words of the paraphrase suite except digits ("one",
"tiny", "big", "on top of", "underneath", "on the left/right side of", "plus"), so that suite stays
unseen too. Only true synonyms: the spec is unchanged, so the exact evaluator reads any wording.

:func:`caption_variants` draws captions of a spec from one part, seeded; :func:`parse_caption`
reads any of them (either part, the canonical caption, the paraphrases) back to a spec, and
:func:`same_scene` compares specs up to object order and inverted relations.
"""
from __future__ import annotations

import re

import numpy as np

from vqgen.errors import VqgenError
from vqgen.shapes.captions import caption_of

# Each part: colour / shape (singular, plural) / size / count / relation -> its phrases.
TRAIN = {
    "color": {"red": ["red", "crimson", "scarlet"], "green": ["green", "emerald", "grassy"],
              "blue": ["blue", "cobalt", "sapphire"], "yellow": ["yellow", "lemon", "canary"],
              "purple": ["purple", "violet", "plum"], "orange": ["orange", "tangerine", "pumpkin"]},
    "shape": {"circle": [("circle", "circles"), ("disc", "discs"), ("dot", "dots")],
              "square": [("square", "squares"), ("block", "blocks"), ("box", "boxes")],
              "triangle": [("triangle", "triangles"), ("trigon", "trigons"), ("wedge", "wedges")]},
    "size": {"small": ["small", "little", "mini"], "large": ["large", "huge", "giant"]},
    "count": {1: ["a", "a single"], 2: ["two", "2"], 3: ["three", "3"], 4: ["four", "4"]},
    "relation": {"left of": ["to the left of", "left of", "on the left of"],
                 "right of": ["to the right of", "right of", "on the right of"],
                 "above": ["above", "over", "higher than"], "below": ["below", "under", "beneath"]},
}
HELD_OUT = {
    "color": {"red": ["ruby", "vermilion"], "green": ["jade", "verdant"], "blue": ["azure", "ultramarine"],
              "yellow": ["golden", "sunflower"], "purple": ["amethyst", "grape"], "orange": ["amber", "marigold"]},
    "shape": {"circle": [("disk", "disks"), ("circular shape", "circular shapes")],
              "square": [("tile", "tiles"), ("square shape", "square shapes")],
              "triangle": [("pyramid", "pyramids"), ("triangular shape", "triangular shapes")]},
    "size": {"small": ["tiny", "miniature"], "large": ["big", "enormous"]},
    "count": {1: ["one", "just one"], 2: ["a pair of"], 3: ["a trio of"], 4: ["a quartet of"]},
    "relation": {"left of": ["on the left side of", "leftward of"], "right of": ["on the right side of", "rightward of"],
                 "above": ["on top of", "atop"], "below": ["underneath", "lower than"]},
}
# Templates: {x} is the scene; clause forms join a relation's two mentions; joiners join the last
# clause of a list (the others are separated by commas).
TEMPLATES = {"train": ["{x}", "a picture of {x}", "an image of {x}", "a drawing of {x}", "{x} on a white background",
                       "a scene with {x}", "draw {x}", "there is {x}"],
             "held_out": ["a photo of {x}", "a sketch showing {x}", "please render {x}",
                          "{x} against a plain backdrop"]}
CLAUSES = {"train": ["{a} {rel} {b}", "{a} is {rel} {b}", "{a} which is {rel} {b}"],
           "held_out": ["{a} sitting {rel} {b}", "{a} placed {rel} {b}"]}
JOINERS = {"train": [" and ", ", and ", " as well as ", " with "],
           "held_out": [" plus ", " together with ", " alongside "]}
PARTS = {"train": TRAIN, "held_out": HELD_OUT}
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
TYPO_MIN_LEN = 4  # shorter words are never misspelt


def held_out_phrases() -> list[str]:
    """Every word, phrase and template marker of the held-out part (none occurs in training captions)."""
    out: list[str] = []
    for kind, table in HELD_OUT.items():
        for forms in table.values():
            for f in forms:
                out.extend(f if kind == "shape" else [f])
    out += [t.replace("{x}", "").strip() for t in TEMPLATES["held_out"]]
    out += [c.split("{rel}")[0].replace("{a}", "").strip() for c in CLAUSES["held_out"]]
    out += [j.strip() for j in JOINERS["held_out"]]
    return sorted(set(out))


def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def _mention(obj: dict, words: dict, rng: np.random.Generator) -> str:
    singular, plural = _pick(rng, words["shape"][obj["shape"]])
    parts = [_pick(rng, words["count"][obj["count"]])]
    if obj["size"]:
        parts.append(_pick(rng, words["size"][obj["size"]]))
    parts += [_pick(rng, words["color"][obj["color"]]), singular if obj["count"] == 1 else plural]
    if parts[0] == "a" and parts[1][0] in "aeiou":
        parts[0] = "an"
    return " ".join(parts)


def caption_variant(spec: dict, rng: np.random.Generator, part: str = "train") -> str:
    """One random caption of ``spec`` in the words and templates of ``part`` (``train``/``held_out``).

    Relation clauses may be said either way round ("b below a"); clauses and plain mentions come
    in random order.
    """
    if part not in PARTS:
        raise VqgenError(f"unknown wording part {part!r}; expected 'train' or 'held_out'")
    words, objects = PARTS[part], spec["objects"]
    related = {i for r in spec["relations"] for i in (r["a"], r["b"])}
    clauses = []
    for r in spec["relations"]:
        a, rel, b = r["a"], r["relation"], r["b"]
        if rng.random() < 0.5:
            a, rel, b = b, INVERSE[rel], a
        clauses.append(_pick(rng, CLAUSES[part]).format(a=_mention(objects[a], words, rng),
                                                          rel=_pick(rng, words["relation"][rel]),
                                                          b=_mention(objects[b], words, rng)))
    clauses += [_mention(o, words, rng) for i, o in enumerate(objects) if i not in related]
    clauses = [clauses[i] for i in rng.permutation(len(clauses))]
    text = ", ".join(clauses[:-1]) + _pick(rng, JOINERS[part]) + clauses[-1] if len(clauses) > 1 else clauses[0]
    return _pick(rng, TEMPLATES[part]).format(x=text)


def typo(text: str, rng: np.random.Generator, rate: float) -> str:
    """Misspell each word of ``TYPO_MIN_LEN``+ letters with probability ``rate`` (swap, drop or double a letter)."""
    def one(m: re.Match) -> str:
        w = m.group(0)
        if len(w) < TYPO_MIN_LEN or rng.random() >= rate:
            return w
        i, kind = int(rng.integers(1, len(w) - 1)), int(rng.integers(3))
        if kind == 0:
            return w[:i] + w[i + 1] + w[i] + w[i + 2:]
        return w[:i] + w[i + 1:] if kind == 1 else w[:i] + w[i] + w[i:]
    return re.sub(r"[a-z]+", one, text)


def caption_variants(spec: dict, k: int, rng: np.random.Generator, typo_rate: float = 0.0,
                     exclude: frozenset[str] = frozenset()) -> list[str]:
    """``k`` captions of ``spec``: the canonical one first, then ``k - 1`` training-part variants
    (distinct where the wording space allows, never one of ``exclude``), each misspelt at ``typo_rate``."""
    if k < 1:
        raise VqgenError(f"the number of captions per scene must be >= 1, got {k}")
    if not 0.0 <= typo_rate < 1.0:
        raise VqgenError(f"the typo rate must be in [0, 1), got {typo_rate}")
    out = [caption_of(spec)]
    for attempt in range(20 * k):
        if len(out) == k:
            break
        text = caption_variant(spec, rng)
        if typo_rate:
            text = typo(text, rng, typo_rate)
        if text not in exclude and (text not in out or attempt >= 10 * k):
            out.append(text)
    return out


def _phrase_table() -> list[tuple[tuple[str, ...], str, object]]:
    """(tokens, kind, value) for every phrase of both parts and the canonical/paraphrase words, longest first."""
    rows = []
    for words in (TRAIN, HELD_OUT):
        for kind, table in words.items():
            for value, forms in table.items():
                for f in forms:
                    if kind == "shape":
                        rows += [(tuple(f[0].split()), "shape", (value, False)),
                                 (tuple(f[1].split()), "shape", (value, True))]
                    else:
                        rows.append((tuple(f.split()), kind, value))
    rows += [(("an",), "count", 1), (("tiny",), "size", "small")]
    return sorted(set(rows), key=lambda r: -len(r[0]))


_TABLE = _phrase_table()


def parse_caption(text: str) -> dict:
    """Read a caption of any wording back to a spec (objects in caption order).

    Words outside the phrase table are filler. A relation phrase between two mentions relates
    them. Raises :class:`VqgenError` when a shape is never named or a plural has no number.
    """
    tokens = re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()
    objects, relations, pending, rel = [], [], {}, None
    i = 0
    while i < len(tokens):
        for phrase, kind, value in _TABLE:
            if tuple(tokens[i:i + len(phrase)]) == phrase:
                break
        else:
            i += 1
            continue
        i += len(phrase)
        if kind == "relation":
            rel = value
        elif kind == "shape":
            shape, plural = value
            count = pending.get("count", 1)
            if plural == (count == 1) or "color" not in pending:
                raise VqgenError(f"cannot read {' '.join(phrase)!r} in caption {text!r}")
            objects.append({"shape": shape, "color": pending["color"], "count": count, "size": pending.get("size")})
            if rel and len(objects) > 1:
                relations.append({"a": len(objects) - 2, "relation": rel, "b": len(objects) - 1})
            pending, rel = {}, None
        else:
            pending[kind] = value
    if not objects:
        raise VqgenError(f"caption {text!r} names no shape")
    return {"objects": objects, "relations": relations}


def same_scene(x: dict, y: dict) -> bool:
    """Whether two specs ask for the same scene, whatever the object order or relation direction."""
    def norm(spec):
        objs = spec["objects"]
        key = [(o["shape"], o["color"]) for o in objs]
        rels = set()
        for r in spec["relations"]:
            a, rel, b = key[r["a"]], r["relation"], key[r["b"]]
            if rel in ("right of", "below"):
                a, rel, b = b, INVERSE[rel], a
            rels.add((a, rel, b))
        return {(o["shape"], o["color"], o["count"], o["size"]) for o in objs}, rels
    return norm(x) == norm(y)
