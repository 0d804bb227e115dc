"""The run lifecycle every trainer shares (vqgen.runtime): the same command resumes, corrupt
checkpoints fall back, metrics.jsonl keeps one row per step, skipped records are counted,
init_from + freeze."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vqgen.cli import main
from vqgen.data.folder import write_image_folder
from vqgen.data.records import Record
from vqgen.runtime import RESUME_NAME

from tests.test_tokenizer_train import _blocks
from tests.test_train import crash_after, make_codes


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifecycle") / "images"
    write_image_folder([Record(image=_blocks(i), text=f"image {i}") for i in range(24)], root, progress=False)
    return root


@pytest.fixture(scope="module")
def codes(tmp_path_factory):
    return make_codes(tmp_path_factory.mktemp("lifecycle") / "codes", n=48)


def tokenizer_cmd(data: Path, run: Path, steps: int = 6, *sets: str) -> list[str]:
    args = ["tokenizer", "train", "--data", str(data), "--preset", "tiny", "--out", str(run), "--steps", str(steps),
            "--no-progress", "--set", "ckpt_every=2", "--set", "log_every=1", "--set", "sample_every=100"]
    return args + [a for s in sets for a in ("--set", s)]


def transformer_cmd(data: Path, run: Path, steps: int = 8, *sets: str) -> list[str]:
    args = ["train", "--codes", str(data), "--preset", "vim-tiny", "--out", str(run), "--steps", str(steps),
            "--no-progress", "--set", "train.ckpt_every=4", "--set", "train.log_every=1",
            "--set", "train.batch_size=8", "--set", "model.dropout=0.1"]
    return args + [a for s in sets for a in ("--set", s)]


def weights(path: Path) -> dict:
    return load_file(str(path / "model.safetensors"))


def training_steps(run: Path, key: str) -> list[int]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if key in r]


# -- the same command line resumes ------------------------------------------------------------
def test_the_same_tokenizer_command_resumes_bit_identically(images, tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    assert main(tokenizer_cmd(images, straight)) == 0
    shutil.copytree(straight, resumed)
    crash_after(resumed, 4)
    assert main(tokenizer_cmd(images, resumed)) == 0  # today's main: "only --steps ... may change"
    a, b = weights(straight / "model"), weights(resumed / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert training_steps(resumed, "train/loss") == [1, 2, 3, 4, 5, 6]  # no step logged twice


def test_the_same_transformer_command_resumes_bit_identically(codes, tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    assert main(transformer_cmd(codes, straight)) == 0
    shutil.copytree(straight, resumed)
    crash_after(resumed, 4)
    assert main(transformer_cmd(codes, resumed)) == 0
    a, b = weights(straight / "model"), weights(resumed / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert training_steps(resumed, "loss") == list(range(1, 9))  # rows after step 4 were cut, then relogged
    assert training_steps(resumed, "val_loss") == [8]
    assert main(transformer_cmd(codes, resumed)) == 0  # a finished run re-run: nothing logged twice
    assert training_steps(resumed, "loss") == list(range(1, 9)) and training_steps(resumed, "val_loss") == [8]


def test_harmless_fields_may_change_on_resume_and_others_are_named(images, codes, tmp_path, capsys):
    run = tmp_path / "tok"
    assert main(tokenizer_cmd(images, run, 2)) == 0
    assert main(tokenizer_cmd(images, run, 4, "ckpt_every=3", "time_limit_min=5", "log_every=2")) == 0
    capsys.readouterr()
    assert main(tokenizer_cmd(images, run, 6, "optim.lr=0.5")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "optim.lr=0.001, this command asks for 0.5" in err

    run = tmp_path / "tr"
    assert main(transformer_cmd(codes, run, 4)) == 0
    assert main(transformer_cmd(codes, run, 6, "train.val_every=3", "train.ckpt_every=2")) == 0
    capsys.readouterr()
    assert main(transformer_cmd(codes, run, 8, "train.lr=0.5")) == 2  # today's main: silently trains on
    assert "train.lr=0.001, this command asks for 0.5" in capsys.readouterr().err


# -- corrupt checkpoints ----------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _malicious(path: Path) -> None:
    torch.save({"step": 2, "x": _Payload()}, path)


@pytest.mark.parametrize("broken", ["tokenizer/model.safetensors", RESUME_NAME])
def test_a_corrupt_newest_tokenizer_checkpoint_falls_back_to_the_one_before(images, tmp_path, capsys, broken):
    run = tmp_path / "r"
    assert main(tokenizer_cmd(images, run, 4)) == 0
    crash_after(run, 4)
    _truncate(run / "checkpoints" / "step-0000004" / broken)
    capsys.readouterr()
    assert main(tokenizer_cmd(images, run, 6)) == 0
    out = capsys.readouterr().out
    assert "vqgen: resuming from step-0000002: newer checkpoint step-0000004" in out
    assert training_steps(run, "train/loss") == [1, 2, 3, 4, 5, 6]


def test_a_corrupt_newest_transformer_checkpoint_falls_back(codes, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(transformer_cmd(codes, run, 8)) == 0
    crash_after(run, 8)
    _truncate(run / "checkpoints" / "step-0000008" / "model" / "model.safetensors")
    capsys.readouterr()
    assert main(transformer_cmd(codes, run, 8)) == 0
    assert "resuming from step-0000004" in capsys.readouterr().out
    assert training_steps(run, "loss") == list(range(1, 9))


@pytest.mark.parametrize("damage", [_truncate, _malicious], ids=["truncated", "malicious"])
def test_an_unreadable_resume_file_is_a_one_line_error(codes, tmp_path, capsys, damage):
    run = tmp_path / "r"
    assert main(transformer_cmd(codes, run, 4)) == 0  # one checkpoint: step 4
    damage(run / "checkpoints" / "step-0000004" / RESUME_NAME)
    capsys.readouterr()
    assert main(transformer_cmd(codes, run, 8)) == 2  # today's main: a torch.load traceback
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no usable checkpoint" in err and "Traceback" not in err


# -- skipped records ----------------------------------------------------------------------------
def test_skipped_records_are_printed_and_recorded(tmp_path, capsys):
    data = tmp_path / "data"
    write_image_folder([Record(image=_blocks(i)) for i in range(12)], data, progress=False)
    (data / "000003.png").write_bytes(b"not a png")
    with open(data / "metadata.jsonl", "a") as f:
        f.write('{"file_name": "missing.png"}\nnot json\n')
    capsys.readouterr()
    assert main(tokenizer_cmd(data, tmp_path / "run", 1)) == 0
    summary = json.loads((tmp_path / "run" / "data.json").read_text())
    assert summary["records"] == 11 and summary["skipped_total"] == 3, summary
    assert set(summary["skipped"]) >= {"bad_metadata"}
    assert "11 records, 3 skipped" in capsys.readouterr().out


# -- init_from + freeze -------------------------------------------------------------------------
def test_init_from_and_freeze(codes, tmp_path, capsys):
    base = tmp_path / "base"
    assert main(transformer_cmd(codes, base, 2)) == 0
    start = weights(base / "model")
    tuned = tmp_path / "tuned"
    assert main(transformer_cmd(codes, tuned, 3, f"train.init_from={base}", "train.freeze=blocks.0.*,tok_emb*")) == 0
    end = weights(tuned / "model")
    frozen = [k for k in start if k.startswith("blocks.0.") or k.startswith("tok_emb")]
    assert frozen and all(torch.equal(start[k], end[k]) for k in frozen)  # bit-identical
    assert all(not torch.equal(start[k], end[k]) for k in start if k not in frozen and "norm" not in k)
    state = torch.load(tuned / "checkpoints" / "step-0000003" / RESUME_NAME, weights_only=True)
    in_opt = {p for g in state["optimizer"]["param_groups"] for p in g["params"]}
    assert in_opt and not any(p.removeprefix("model.") in frozen for p in in_opt)  # frozen: not in the optimizer
    capsys.readouterr()
    assert main(transformer_cmd(codes, tmp_path / "typo", 1, "train.freeze=blocks.9.*")) == 2
    assert "matches no parameter" in capsys.readouterr().err


def test_init_from_with_a_fresh_text_side(codes, tmp_path, capsys):
    """``train.init_text=false``: the image decoder comes from ``init_from``, the text side (and its BPE)
    starts fresh; with the decoder frozen it stays bit-identical while the new text side trains."""
    def parti(run, steps, *sets):
        return [("parti-tiny" if a == "vim-tiny" else a) for a in transformer_cmd(codes, run, steps, *sets)]

    base = tmp_path / "base"
    assert main(parti(base, 2)) == 0
    start = weights(base / "model")
    tuned = tmp_path / "tuned"
    decoder = "blocks.*,tok_emb*,pos_emb*,head*,norm.*,bos,null_slot"
    assert main(parti(tuned, 2, f"train.init_from={base}", "train.init_text=false", f"train.freeze={decoder}")) == 0
    end = weights(tuned / "model")
    text = [k for k in end if k.startswith(("text_", "encoder.", "enc_norm."))]
    assert text and all(k in start for k in text)
    assert all(torch.equal(start[k], end[k]) for k in end if k not in text)  # the decoder: bit-identical
    assert not any(torch.equal(start[k], end[k]) for k in text if start[k].shape == end[k].shape and "norm" not in k)
    capsys.readouterr()
    assert main(transformer_cmd(codes, tmp_path / "vim", 1, f"train.init_from={tmp_path / 'base'}",
                                "train.init_text=false")) == 2
    assert "no separate text side" in capsys.readouterr().err
    assert main(parti(tmp_path / "alone", 1, "train.init_text=false")) == 2
    assert "train.init_text" in capsys.readouterr().err
