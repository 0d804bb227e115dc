"""Text-guided editing (issue 13 item 4) on tiny random models: the box → cells mapping, codes
outside the box kept, seeding and reranking, `vqgen edit` and its errors, the edit suite and its
evaluation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.config import apply_overrides, get_preset
from vqgen.errors import VqgenError
from vqgen.eval.edit import (EDIT_SUITE_PATH, EditSettings, build_edit_suite, evaluate_edits, load_edit_suite, outside_mask,
                             source_image, spec_difference, target_image)
from vqgen.pipelines import TextToImagePipeline
from vqgen.pipelines.edit import box_cells, can_infill, parse_box, square_source
from vqgen.sampling import SamplingConfig, image_generators
from tests.tiny import TINY_MODEL, tiny_components


def coglm_pipeline(**options) -> TextToImagePipeline:
    """The tiny text pipeline (16 px, 4x4 codes, CLIP reranker) with a CogLM-configured unified transformer."""
    from vqgen.transformer import build_model

    parts = tiny_components("unified", reranker="clip")
    torch.manual_seed(2)
    model = build_model(apply_overrides(get_preset("transformer", "unified-tiny"),
                                        TINY_MODEL + ["model.coglm_mix=0.5"]).model).eval()
    model.text_tokenizer = parts["transformer"].text_tokenizer
    return TextToImagePipeline(**{**parts, "transformer": model}, **options)


@pytest.fixture(scope="module")
def pipe():
    return coglm_pipeline(sampling=SamplingConfig(guidance_scale=2.0, temperature=1.0))


# ----------------------------------------------------------------------------- box -> cells
def test_box_cells_cover_every_touched_cell():
    # 16 px, 4x4 cells of 4 px: a box on cell edges covers exactly those cells
    assert box_cells((4, 4, 8, 12), 16, (4, 4)).nonzero().tolist() == [[1, 1], [2, 1]]
    # a box reaching one pixel into a cell takes the whole cell (partial cells are covered)
    assert box_cells((3, 4, 9, 8), 16, (4, 4)).nonzero().tolist() == [[1, 0], [1, 1], [1, 2]]
    assert box_cells((0, 0, 16, 16), 16, (4, 4)).all()
    assert box_cells((15, 15, 16, 16), 16, (4, 4)).nonzero().tolist() == [[3, 3]]
    assert box_cells((5.5, 6.2, 5.6, 6.3), 16, (4, 4)).sum() == 1  # a sub-pixel box: its one cell
    # 64 px, 8x8 cells of 8 px, the suite's boxes: a 14 px object box spans 2 to 3 cells per side
    cells = box_cells((37, 43, 51, 57), 64, (8, 8))
    assert cells.any(1).nonzero().flatten().tolist() == [5, 6, 7] and cells.any(0).nonzero().flatten().tolist() == [4, 5, 6]


@pytest.mark.parametrize("box, words", [((0, 0, 17, 4), "outside"), ((-1, 0, 4, 4), "outside"),
                                        ((4, 4, 4, 8), "empty"), ((5, 2, 3, 8), "empty")])
def test_boxes_outside_or_empty_are_one_line_errors(box, words):
    with pytest.raises(VqgenError, match=words):
        box_cells(box, 16, (4, 4))


def test_parse_box():
    assert parse_box("1,2, 30,40") == (1.0, 2.0, 30.0, 40.0)
    for bad in ("1,2,3", "a,b,c,d", "1,2,3,4,5", "1,2,nan,4"):
        with pytest.raises(VqgenError, match="four numbers"):
            parse_box(bad)


def test_a_non_square_image_is_cropped_and_its_box_carried_along():
    im = Image.new("RGB", (48, 32), (255, 255, 255))  # the centre 32x32 square starts at x = 8
    x, box = square_source(im, (8, 0, 24, 16), 16)
    assert x.shape == (3, 16, 16) and box == (0.0, 0.0, 8.0, 8.0)
    with pytest.raises(VqgenError, match="cropped away"):
        square_source(im, (0, 0, 6, 10), 16)
    with pytest.raises(VqgenError, match="outside the 48x32 image"):
        square_source(im, (0, 0, 10, 33), 16)


# ----------------------------------------------------------------------------- the edit
def test_codes_outside_the_box_are_kept_and_inside_are_regenerated(pipe):
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    for box, rerank, guidance in (((0, 0, 5, 5), 1, 1.0), ((6, 3, 14, 9), 3, 2.0), ((12, 12, 16, 16), 2, 0.0)):
        out = pipe.edit(image, box, "a red circle", num_images=3, rerank=rerank, guidance_scale=guidance,
                        generator=image_generators(0, 3), output_type="pt")
        cells = box_cells(box, 16, (4, 4))
        assert out.codes.shape == (3, 4, 4) and torch.equal(out.cells, cells)
        assert torch.equal(out.codes[:, ~cells], out.source_codes.expand(3, -1, -1)[:, ~cells])  # every outside code kept
        assert (out.codes[:, cells] != out.source_codes[:, cells]).any()  # a random model writes other codes inside
        assert torch.equal(out.source_codes, pipe.tokenizer.encode(image[None]))
        assert (out.scores is None) == (rerank == 1) and len(out.images) == 3 and out.images[0].shape == (3, 16, 16)


def test_edits_are_seeded_per_image(pipe):
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    a = pipe.edit(image, (0, 0, 9, 9), "two blue squares", num_images=2, generator=image_generators(4, 2))
    b = pipe.edit(image, (0, 0, 9, 9), "two blue squares", num_images=1, generator=image_generators(4, 1))
    assert torch.equal(a.codes[:1], b.codes)  # image 0 depends on its own generator only
    greedy = [pipe.edit(image, (0, 0, 9, 9), "two blue squares", temperature=0.0).codes for _ in range(2)]
    assert torch.equal(*greedy)


def test_reranking_keeps_the_best_candidate(pipe, monkeypatch):
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    seen = []
    score = pipe.rerank_scores
    monkeypatch.setattr(pipe, "rerank_scores", lambda *a: seen.append(score(*a)) or seen[-1])
    out = pipe.edit(image, (0, 0, 8, 8), "a green triangle above a red circle", num_images=2, rerank=4,
                    generator=image_generators(0, 2), output_type="pt")
    assert seen[0].shape == (8,)  # 2 images x 4 candidates, scored against the prompt
    assert torch.equal(out.scores, seen[0].view(2, 4).max(1).values)
    assert torch.allclose(score(torch.stack(out.images), out.codes, out.prompts), out.scores, atol=1e-5)


def test_a_model_without_coglm_training_cannot_edit():
    parts = tiny_components("unified")
    plain = TextToImagePipeline(**parts)
    assert not can_infill(plain.transformer)
    with pytest.raises(VqgenError, match="CogLM-trained unified model.*'unified' model without CogLM"):
        plain.edit(torch.rand(3, 16, 16), (0, 0, 8, 8), "a red circle")
    parti = TextToImagePipeline(**tiny_components("parti"))
    with pytest.raises(VqgenError, match="'parti' model"):
        parti.edit(torch.rand(3, 16, 16), (0, 0, 8, 8), "a red circle")


# ----------------------------------------------------------------------------- vqgen edit
def test_edit_command_writes_edits_and_a_before_after_grid(pipe, tmp_path, capsys):
    from vqgen.cli import main

    model = pipe.save_pretrained(tmp_path / "p")
    Image.fromarray(np.full((24, 32, 3), 200, np.uint8)).save(tmp_path / "in.png")
    args = ["edit", str(tmp_path / "in.png"), "a red circle", "--model", str(model), "--box", "4,4,20,12", "-n", "2",
            "--rerank", "2", "--seed", "3"]
    assert main(args + ["--out", str(tmp_path / "o")]) == 0
    names = sorted(f.name for f in (tmp_path / "o").glob("*.png"))
    assert names == ["a-red-circle-s3-0.png", "a-red-circle-s3-1.png", "a-red-circle-s3-before-after.png"]
    assert capsys.readouterr().out.splitlines()[-1].startswith("2 edits of ")
    assert Image.open(tmp_path / "o" / names[-1]).size == (4 * 18 + 2, 18 + 2)  # source, round trip, 2 edits
    direct = pipe.edit(Image.open(tmp_path / "in.png"), (4, 4, 20, 12), "a red circle", num_images=2, rerank=2,
                       generator=image_generators(3, 2), output_type="np")
    assert np.array_equal(direct.images[1], np.asarray(Image.open(tmp_path / "o" / names[1])))


def test_edit_command_errors_are_one_line(pipe, tmp_path, capsys):
    from vqgen.cli import main

    model = str(pipe.save_pretrained(tmp_path / "p"))
    Image.new("RGB", (16, 16)).save(tmp_path / "in.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    plain = str(TextToImagePipeline(**tiny_components("parti")).save_pretrained(tmp_path / "parti"))
    out = str(tmp_path / "o")
    cases = [([str(tmp_path / "in.png"), "a red circle", "--box", "0,0,20,8", "--model", model], "outside the 16x16"),
             ([str(tmp_path / "in.png"), "a red circle", "--box", "0,0,8", "--model", model], "four numbers"),
             ([str(tmp_path / "bad.png"), "a red circle", "--box", "0,0,8,8", "--model", model], "cannot read"),
             ([str(tmp_path / "nope.png"), "a red circle", "--box", "0,0,8,8", "--model", model], "cannot read"),
             ([str(tmp_path / "in.png"), "a red circle", "--box", "0,0,8,8", "--model", plain], "CogLM-trained"),
             ([str(tmp_path / "in.png"), "a red circle", "--box", "0,0,8,8"], "'parti' model"),  # the bundled model
             ([str(tmp_path / "in.png"), "  ", "--box", "0,0,8,8", "--model", model], "prompt is empty")]
    for argv, words in cases:
        assert main(["edit", *argv, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("vqgen: error: ") and words in err and err.count("\n") == 1, err


# ----------------------------------------------------------------------------- the edit suite
def test_the_shipped_edit_suite_parses_and_changes_one_attribute():
    suite = load_edit_suite()
    assert len(suite) == 60 and sum(it["change"] == "color" for it in suite) == 30
    assert [json.loads(line) for line in EDIT_SUITE_PATH.read_text().splitlines()] == build_edit_suite()  # the builder's
    for it in suite:
        obj, change = spec_difference(it["source_spec"], it["spec"])
        assert (obj, change) == (it["object"], it["change"])
        before, after = it["source_spec"]["objects"][obj], it["spec"]["objects"][obj]
        assert [k for k in before if before[k] != after[k]] == [change]


def test_the_suite_boxes_hold_the_changed_object():
    for it in load_edit_suite()[::7]:
        src, tgt = np.asarray(source_image(it), np.int16), np.asarray(target_image(it), np.int16)
        differs = np.abs(src - tgt).sum(-1) > 0  # (S, S)
        assert differs.any() and not (differs & outside_mask(it["box"], it["size"]).numpy()).any()


def test_bad_suite_lines_are_named(tmp_path):
    item = build_edit_suite()[0]
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(item) + "\n" + json.dumps({**item, "spec": item["source_spec"]}) + "\n")
    with pytest.raises(VqgenError, match=r"s.jsonl:2: .*colour or shape of one object"):
        load_edit_suite(path)
    path.write_text(json.dumps({**item, "box": [0, 0, 80, 10]}) + "\n")
    with pytest.raises(VqgenError, match=r"s.jsonl:1: 'box'"):
        load_edit_suite(path)


def test_evaluate_edits_on_a_tiny_suite(pipe, tmp_path):
    suite = build_edit_suite(size=16)[::21]  # one edit per category (colour, shape, colour), 16 px scenes
    summary = evaluate_edits(pipe, suite, EditSettings(samples=2, rerank=2), out_dir=tmp_path / "r",
                             show_progress=False)
    assert summary["edits"] == 6 and summary["codes_outside_kept"] == 1.0
    assert 0 <= summary["accuracy"] <= 1 and summary["psnr_roundtrip_outside_db"] > 0
    assert set(summary["groups"]) == {"change=color", "change=shape", "category=single", "category=binding",
                                      "category=relation"}
    rows = [json.loads(line) for line in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and json.loads((tmp_path / "r" / "summary.json").read_text()) == summary
    assert Image.open(tmp_path / "r" / "grid.png").size == (6 * 18 + 2, 3 * 18 + 2)
