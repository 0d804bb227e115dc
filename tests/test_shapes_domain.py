"""The shapes domain: specs, captions, layouts, determinism, the held-out prompt suite, the writer."""
import json
from pathlib import Path

import numpy as np
import pytest

from vqgen.shapes.captions import caption_of
from vqgen.shapes.dataset import ShapesDataset, write_shapes_dataset
from vqgen.shapes.scenes import layout, render_spec, sample_spec
from vqgen.shapes.suite import DRAWBENCH_SIZES, SUITE_PATH, build_suite, held_out_prompts, load_suite
from vqgen.shapes.vocabulary import (CATEGORIES, COLORS, NUMBERS, PLURALS, RELATION_PHRASES, SHAPES, SIZES,
                                     category_of, validate_spec)
from vqgen.errors import VqgenError

# Every word a caption may use: canonical names only (no synonyms, no misspellings).
VOCABULARY = ({"a", "an", "and", "to", "the"} | set(SHAPES) | set(PLURALS.values()) | set(COLORS) | set(SIZES)
              | set(NUMBERS.values()) | {w for p in RELATION_PHRASES.values() for w in p.split()})


def spec(*objects, relations=()):
    return {"objects": [dict(shape=s, color=c, count=n, size=z) for s, c, n, z in objects],
            "relations": [dict(a=a, relation=r, b=b) for a, r, b in relations]}


@pytest.mark.parametrize("s, caption, category", [
    (spec(("circle", "red", 1, None)), "a red circle", "single"),
    (spec(("circle", "orange", 1, None)), "an orange circle", "single"),
    (spec(("square", "blue", 3, None)), "three blue squares", "count"),
    (spec(("triangle", "green", 1, None), ("circle", "yellow", 1, None), relations=[(0, "left of", 1)]),
     "a green triangle to the left of a yellow circle", "relation"),
    (spec(("square", "red", 1, "large"), ("circle", "blue", 1, "small")),
     "a large red square and a small blue circle", "binding"),
    (spec(("circle", "red", 2, None), ("square", "blue", 1, None), ("triangle", "green", 1, None)),
     "two red circles, a blue square and a green triangle", "multi"),
    (spec(("circle", "red", 1, None), ("square", "blue", 1, None), ("triangle", "green", 1, None),
          ("circle", "purple", 1, None), relations=[(0, "above", 1), (2, "below", 3)]),
     "a red circle above a blue square, and a green triangle below a purple circle", "multi"),
])
def test_captions_and_categories(s, caption, category):
    assert caption_of(s) == caption
    assert category_of(s) == category
    assert validate_spec(s) == s


@pytest.mark.parametrize("bad, words", [
    ({"objects": []}, "at least one"),
    (spec(("hexagon", "red", 1, None)), "shape"),
    (spec(("circle", "pink", 1, None)), "color"),
    (spec(("circle", "red", 0, None)), "count"),
    (spec(("circle", "red", 1, "huge")), "size"),
    (spec(("circle", "red", 1, None), ("circle", "red", 2, None)), "ambiguous"),
    (spec(("circle", "red", 1, None), relations=[(0, "near", 0)]), "relation"),
    (spec(("circle", "red", 1, None), relations=[(0, "above", 3)]), "index"),
    ("a red circle", "objects"),
])
def test_validate_spec_rejects_bad_specs(bad, words):
    with pytest.raises(VqgenError, match=words):
        validate_spec(bad)


def test_scenes_are_deterministic_and_seed_dependent():
    a, b, c = ShapesDataset(6, 32, seed=5), ShapesDataset(6, 32, seed=5), ShapesDataset(6, 32, seed=6)
    for i in range(6):
        ra, rb = a[i], b[i]
        assert ra.text == rb.text and ra.meta == rb.meta
        assert np.array_equal(np.asarray(ra.image), np.asarray(rb.image))
    assert [a[i].text for i in range(6)] != [c[i].text for i in range(6)]


def test_records_carry_valid_specs_and_canonical_captions():
    data = ShapesDataset(300, 64, seed=11)
    seen = set()
    for i in range(len(data)):
        scene = data.scene(i)
        assert validate_spec(scene.spec) == scene.spec
        assert scene.caption == caption_of(scene.spec)
        assert scene.category == category_of(scene.spec)
        assert set(scene.caption.replace(",", "").split()) <= VOCABULARY, scene.caption
        assert 1 <= len(scene.objects) <= 4
        seen.add(scene.category)
    assert seen == set(CATEGORIES)
    rec = data[0]
    assert rec.image.size == (64, 64) and rec.image.mode == "RGB"
    assert set(rec.meta) == {"spec", "category"}


def test_layouts_keep_objects_apart_inside_and_relations_true():
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = sample_spec(rng, ("relation", "multi")[int(rng.integers(2))])
        objs = layout(s, 64, rng)
        assert len(objs) == sum(o["count"] for o in s["objects"])
        for o in objs:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 and 0 <= y0 and x1 <= 64 and y1 <= 64
        for i, p in enumerate(objs):  # boxes never overlap
            for q in objs[i + 1:]:
                px0, py0, px1, py1 = p.box
                qx0, qy0, qx1, qy1 = q.box
                assert px1 <= qx0 or qx1 <= px0 or py1 <= qy0 or qy1 <= py0
        for r in s["relations"]:
            (a,), (b,) = [o for o in objs if o.entry == r["a"]], [o for o in objs if o.entry == r["b"]]
            ca, cb = np.array(a.box).reshape(2, 2).mean(0), np.array(b.box).reshape(2, 2).mean(0)
            dx, dy = cb - ca
            assert {"left of": dx > 0, "right of": dx < 0, "above": dy > 0, "below": dy < 0}[r["relation"]]


def test_render_draws_palette_colours_on_white():
    img = np.asarray(render_spec(spec(("square", "blue", 1, "large")), size=64, seed=0))
    assert (img[0, 0] == 255).all()
    colours = {tuple(p) for p in img.reshape(-1, 3)}
    assert (30, 70, 220) in colours


def test_suite_file_is_the_built_suite():
    assert SUITE_PATH.is_file(), "run vqgen.shapes.suite.write_suite() to write vqgen/prompts/shapes_suite.jsonl"
    lines = [json.loads(line) for line in SUITE_PATH.read_text().splitlines()]
    assert lines == build_suite()
    assert load_suite() == lines


def test_suite_has_enough_valid_distinct_prompts_in_every_category():
    suite = load_suite()
    assert len(suite) >= 200
    assert {item["category"] for item in suite} == set(CATEGORIES) | set(DRAWBENCH_SIZES)
    assert len({item["prompt"] for item in suite}) == len(suite)
    for item in suite:
        assert validate_spec(item["spec"]) == item["spec"]
        if item["category"] in DRAWBENCH_SIZES:  # misspelt / rare-word / long wordings: tests/test_diffusion_suite.py
            continue
        assert item["prompt"] == caption_of(item["spec"])
        assert item["category"] == category_of(item["spec"])
        assert set(item["prompt"].replace(",", "").split()) <= VOCABULARY
    multi = [item for item in suite if item["category"] == "multi"]
    assert all(3 <= sum(o["count"] for o in item["spec"]["objects"]) <= 4 for item in multi)


def test_suite_prompts_are_held_out_of_training_captions():
    held = held_out_prompts()
    # the sampler on its own would produce suite prompts: the hold-out is what keeps them out
    rng = np.random.default_rng(0)
    raw = {caption_of(sample_spec(rng, c)) for c in CATEGORIES for _ in range(300)}
    assert raw & held
    data = ShapesDataset(800, 32, seed=0)
    captions = {data.scene(i).caption for i in range(len(data))}
    assert not captions & held


def test_load_suite_reports_bad_lines(tmp_path):
    path = tmp_path / "suite.jsonl"
    path.write_text('{"prompt": "a red circle", "spec": {"objects": [{"shape": "circle", "color": "red"}]}}\n'
                    '{"prompt": "x", "spec": {"objects": [{"shape": "blob", "color": "red"}]}}\n')
    with pytest.raises(VqgenError, match="suite.jsonl:2"):
        load_suite(path)
    with pytest.raises(VqgenError, match="does not exist"):
        load_suite(tmp_path / "missing.jsonl")


def test_write_shapes_dataset(tmp_path):
    out = tmp_path / "shapes"
    stats = write_shapes_dataset(out, num=12, size=32, seed=3, progress=False)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert stats["num"] == len(rows) == 12
    assert sum(stats["categories"].values()) == 12
    data = ShapesDataset(12, 32, seed=3)
    for i, row in enumerate(rows):
        assert row["text"] == data.scene(i).caption
        assert row["spec"] == data.scene(i).spec and row["category"] == data.scene(i).category
        assert (out / row["file_name"]).is_file()


def test_bad_dataset_arguments():
    with pytest.raises(VqgenError, match="size"):
        ShapesDataset(3, size=8)
    with pytest.raises(VqgenError, match="category"):
        sample_spec(np.random.default_rng(0), "scribble")
    with pytest.raises(VqgenError, match="seed must be an integer >= 0"):
        ShapesDataset(3, seed=-1)


def test_a_spec_that_cannot_be_placed_is_redrawn_not_fatal():
    # seed 0 scene 10909 first draws a spec with no room at 64 px (it used to stop `vqgen data shapes`)
    from vqgen.shapes.dataset import ShapesDataset
    from vqgen.shapes.vocabulary import validate_spec
    scene = ShapesDataset(11000, size=64, seed=0).scene(10909)
    validate_spec(scene.spec)
    assert scene.objects


def test_paraphrase_suite_keeps_the_specs_and_uses_unseen_words(tmp_path):
    from vqgen.shapes.dataset import ShapesDataset
    from vqgen.shapes.suite import load_suite, write_paraphrase_suite

    suite = [s for s in load_suite() if s["category"] not in DRAWBENCH_SIZES]
    assert write_paraphrase_suite(tmp_path / "p.jsonl") == len(suite)
    para = load_suite(tmp_path / "p.jsonl")
    assert [p["spec"] for p in para] == [s["spec"] for s in suite]
    assert [p["category"] for p in para] == [s["category"] for s in suite]
    train_words = {w for i in range(300) for w in ShapesDataset(300, seed=3).scene(i).caption.replace(",", "").split()}
    for p in para:
        assert set(p["prompt"].split()) - train_words, p["prompt"]  # every paraphrase has an unseen word
    from vqgen.shapes.suite import SUITE_PATH
    assert (tmp_path / "p.jsonl").read_text() == (SUITE_PATH.parent / "shapes_paraphrases.jsonl").read_text()


def test_suite_files_ship_inside_the_package():
    """The suites are package data of ``vqgen`` (a wheel carries them), and the code reads them from there."""
    import fnmatch
    import tomllib
    from importlib.resources import files

    import vqgen
    from vqgen.shapes.suite import HOLDOUT_PATH, PARAPHRASES_PATH, SUITE_PATH

    package = files("vqgen")
    for path in (SUITE_PATH, PARAPHRASES_PATH, HOLDOUT_PATH):
        resource = package.joinpath("prompts", path.name)
        assert resource.is_file(), path.name
        assert Path(str(resource)).resolve() == path
    pyproject = Path(vqgen.__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file():  # a source checkout: the package-data globs name the files
        globs = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["vqgen"]
        rel = SUITE_PATH.relative_to(Path(vqgen.__file__).resolve().parent).as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), (rel, globs)
