"""The shapes evaluator: right on clean held-out renders, wrong images fail, graceful under blur and noise."""
import copy
import json

import numpy as np
import pytest
from PIL import Image

from vqgen.cli import main
from vqgen.shapes.dataset import ShapesDataset, write_shapes_dataset
from vqgen.shapes.scenes import render_spec
from vqgen.shapes.suite import load_suite
from vqgen.shapes.vocabulary import COLORS, SHAPES
from vqgen.errors import VqgenError
from vqgen.shapes.evaluate import score_folder
from vqgen.shapes.evaluator import degrade, detect, score

SUITE = load_suite()


def accuracy(images_and_specs):
    return float(np.mean([score(img, s).passed for img, s in images_and_specs]))


@pytest.mark.parametrize("size", [32, 64, 128])
def test_clean_held_out_renders_pass(size):
    """Every suite prompt (held out of training), rendered at ``size``, at least 99% pass."""
    pairs = [(render_spec(item["spec"], size, seed=i), item["spec"]) for i, item in enumerate(SUITE)]
    assert accuracy(pairs) >= 0.99


def test_detections_match_what_was_drawn():
    data = ShapesDataset(40, 64, seed=9)
    for i in range(len(data)):
        drawn = sorted((o.color, o.shape, o.size) for o in data.scene(i).objects)
        found = sorted((d.color, d.shape, d.size) for d in detect(data[i].image))
        assert found == drawn


def _swap(spec, i, key, value):
    out = copy.deepcopy(spec)
    out["objects"][i][key] = value
    return out


def _wrong_variants(spec, rng):
    """(kind, the spec of a wrong image) for each way an image can disagree with ``spec``."""
    objs = spec["objects"]
    i = int(rng.integers(len(objs)))
    taken = {(o["shape"], o["color"]) for o in objs}
    colors = [c for c in COLORS if (objs[i]["shape"], c) not in taken]
    shapes = [s for s in SHAPES if (s, objs[i]["color"]) not in taken]
    out = [("color", _swap(spec, i, "color", colors[rng.integers(len(colors))]))]
    if shapes:
        out.append(("shape", _swap(spec, i, "shape", shapes[rng.integers(len(shapes))])))
    total = sum(o["count"] for o in objs)
    if objs[i]["count"] > 1 or total < 4:
        out.append(("count", _swap(spec, i, "count", objs[i]["count"] + (1 if total < 4 else -1))))
    if objs[i]["size"]:
        out.append(("size", _swap(spec, i, "size", {"small": "large", "large": "small"}[objs[i]["size"]])))
    if spec["relations"]:
        turned = copy.deepcopy(spec)
        r = turned["relations"][0]
        r["relation"] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[r["relation"]]
        out.append(("relation", turned))
    return out


def test_wrong_images_fail_on_the_right_criterion():
    rng = np.random.default_rng(0)
    kinds = {"color": 0, "shape": 0, "count": 0, "size": 0, "relation": 0}
    for j, item in enumerate(SUITE[::3]):
        for kind, wrong in _wrong_variants(item["spec"], rng):
            result = score(render_spec(wrong, 64, seed=j), item["spec"])
            assert not result.passed, (kind, item["prompt"], wrong)
            failed = {name for name, ok in result.criteria.items() if not ok}
            expected = {"color": "present", "shape": "present", "count": "count", "size": "size",
                        "relation": "relation"}[kind]
            assert any(expected in name for name in failed), (kind, item["prompt"], failed)
            kinds[kind] += 1
    assert min(kinds.values()) >= 10, kinds  # every kind of wrong image was tried


def test_blank_and_extra_objects():
    spec = SUITE[0]["spec"]
    blank = Image.new("RGB", (64, 64), "white")
    result = score(blank, spec)
    assert not result.passed and not result.objects[0].present and result.detections == []
    # an object the prompt did not ask for is reported, not scored
    extra = {"objects": spec["objects"] + [{"shape": "square", "color": "blue", "count": 1, "size": None}]}
    if ("square", "blue") not in {(o["shape"], o["color"]) for o in spec["objects"]}:
        result = score(render_spec(extra, 64, seed=1), spec)
        assert result.passed and [(d.color, d.shape) for d in result.extra] == [("blue", "square")]


def test_array_inputs_score_like_images():
    item = SUITE[100]
    img = render_spec(item["spec"], 64, seed=0)
    arr = np.asarray(img)
    assert score(arr, item["spec"]).criteria == score(img, item["spec"]).criteria
    assert score(arr / 255.0, item["spec"]).criteria == score(img, item["spec"]).criteria
    with pytest.raises(VqgenError, match="RGB"):
        score(arr[..., 0], item["spec"])
    with pytest.raises(VqgenError, match="shape"):
        score(img, {"objects": [{"shape": "star", "color": "red"}]})


def test_degrades_gracefully_under_blur_and_noise():
    """Mild blur and noise (as a generator draws) still pass; heavy blur and noise are caught."""
    data = ShapesDataset(80, 64, seed=21)
    recs = [data[i] for i in range(len(data))]

    def acc(blur, noise):
        return accuracy([(degrade(r.image, blur, noise, seed=i), r.meta["spec"]) for i, r in enumerate(recs)])

    assert acc(1.0, 0.0) >= 0.95
    assert acc(0.0, 0.05) >= 0.95
    assert acc(1.0, 0.05) >= 0.95
    assert acc(4.0, 0.0) < 0.5
    assert acc(2.0, 0.3) < 0.5


def test_folder_scoring_and_cli(tmp_path, capsys):
    out = tmp_path / "s"
    write_shapes_dataset(out, num=16, size=32, seed=2, progress=False)
    folder = score_folder(out, progress=False)
    assert folder.num == 16 and folder.overall == 1.0 and sum(c["n"] for c in folder.categories.values()) == 16

    details = tmp_path / "details.jsonl"
    assert main(["eval", "shapes", "--images", str(out), "--no-progress", "--details", str(details)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["overall"] == 1.0 and summary["num"] == 16
    assert any(line.startswith("overall") for line in lines)
    assert len(details.read_text().splitlines()) == 16

    # a wrong image in the folder lowers the score
    Image.new("RGB", (32, 32), "white").save(out / "000000.png")
    assert score_folder(out, progress=False).overall == 15 / 16


def test_folder_errors_and_skipped_rows(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    Image.new("RGB", (32, 32), "white").save(empty / "a.png")
    assert main(["eval", "shapes", "--images", str(empty), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metadata.jsonl" in err[0]

    (empty / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "a red circle"}) + "\n")
    assert main(["eval", "shapes", "--images", str(empty), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "spec" in err[0]

    out = tmp_path / "s"
    write_shapes_dataset(out, num=4, size=32, seed=2, progress=False)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    del rows[0]["spec"]
    rows[1]["spec"] = {"objects": [{"shape": "blob", "color": "red"}]}
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = score_folder(out, progress=False)
    assert folder.num == 2 and folder.skipped == {"missing_spec": 1, "bad_spec": 1}


def test_tokenizer_round_trip_scores_renders_before_and_after(capsys):
    import torch

    from vqgen.shapes.suite import load_suite
    from vqgen.shapes.evaluate import tokenizer_round_trip

    class Identity:  # a perfect tokenizer: the round trip keeps every render as it is
        class config:
            image_size = 64

        def encode(self, x):
            return x

        def decode(self, codes):
            return codes

    class Blank(Identity):  # a useless one: decodes everything to white
        def decode(self, codes):
            return torch.ones_like(codes)

    suite = load_suite()[::25]
    good = tokenizer_round_trip(Identity(), suite, samples=1)
    assert good["num"] == len(suite) and good["ground_truth"] == 1.0 and good["round_trip"] >= 0.99
    bad = tokenizer_round_trip(Blank(), suite, samples=1)
    assert bad["ground_truth"] == 1.0 and bad["round_trip"] == 0.0
    assert sum(c["n"] for c in bad["categories"].values()) == len(suite)
