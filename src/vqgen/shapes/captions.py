"""Captions of a scene spec: the canonical template the training data uses, and paraphrases in
words it never uses (so a model that only learnt the template is tested on unseen language)."""
from __future__ import annotations

from vqgen.errors import VqgenError
from vqgen.shapes.vocabulary import NUMBERS, PLURALS, RELATION_PHRASES


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

