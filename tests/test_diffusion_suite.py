"""The DrawBench-style categories of the public shapes suite (issue 16): misspellings, rare words,
long descriptions — appended, scored like the rest, and leaking nothing into training captions."""
from __future__ import annotations

import json

import numpy as np

from vqgen.shapes.captions import caption_of
from vqgen.shapes.suite import (DRAWBENCH_SIZES, SUITE_PATH, base_suite, build_holdout_suite, build_suite,
                                drawbench_items, held_out_prompts, load_suite, substitute_typo)
from vqgen.shapes.vocabulary import CATEGORIES
from vqgen.shapes.wording import TRAIN, held_out_phrases, parse_caption, same_scene


def test_new_categories_are_appended_and_the_old_prompts_unchanged():
    suite = load_suite()
    assert suite == build_suite() == base_suite() + drawbench_items()
    old = [item for item in suite if item["category"] in CATEGORIES]
    assert suite[:len(old)] == old and len(old) == 254  # the first 254 lines, as every earlier figure read them
    assert all(item["prompt"] == caption_of(item["spec"]) for item in old)
    new = suite[len(old):]
    assert {item["category"]: 0 for item in new}.keys() == DRAWBENCH_SIZES.keys()
    for category, n in DRAWBENCH_SIZES.items():
        assert sum(item["category"] == category for item in new) == n
    prompts = [item["prompt"] for item in suite]
    assert len(set(prompts)) == len(prompts) and max(map(len, prompts)) <= 200
    assert not set(prompts) & {item["prompt"] for item in build_holdout_suite()}
    assert held_out_prompts() == frozenset(item["prompt"] for item in old)  # training data unchanged
    lines = [json.loads(line) for line in SUITE_PATH.read_text().splitlines()]
    assert lines[:len(old)] == old


def test_each_new_category_says_its_scene_its_way():
    items = drawbench_items()
    by = {c: [i for i in items if i["category"] == c] for c in DRAWBENCH_SIZES}
    for item in by["rare_words"]:  # held-out synonyms only, the same scene
        assert same_scene(parse_caption(item["prompt"]), item["spec"])
        assert any(p in item["prompt"] for p in held_out_phrases())
    train_words = {w for table in TRAIN.values() for forms in table.values() for f in forms
                   for w in (" ".join(f) if isinstance(f, tuple) else str(f)).split()}
    for item in by["misspelling"]:  # a substituted letter: at least one word no caption uses
        assert set(item["prompt"].replace(",", "").split()) - train_words
        assert len(item["prompt"]) == len(caption_of(item["spec"]))
    for item in by["long"]:  # an opener, a sentence per object and per relation: longer than its caption
        spec, text = item["spec"], item["prompt"]
        assert text.count("there is ") + text.count("there are ") == len(spec["objects"])
        assert all(f" is {r['relation']} the " in text for r in spec["relations"])
        assert len(text) > len(caption_of(spec)) + 40 and len(spec["objects"]) >= 2


def test_substitute_typo_replaces_letters_in_place():
    rng = np.random.default_rng(0)
    text = "a large purple triangle to the left of a blue circle"
    out = substitute_typo(text, rng, 0.5)
    assert out != text and len(out) == len(text)
    assert sum(a != b for a, b in zip(out, text)) >= 1
    assert substitute_typo("a b c", rng, 1.0) == "a b c"  # no word of 4+ letters
