import json

import numpy as np
import pytest

from vqgen.cli import main
from vqgen.data import ImageFolder
from vqgen.data.digits import DIGIT_WORDS, digits_records


def test_digits_records():
    recs = digits_records(size=16)
    assert len(recs) == 1797 and {r.label for r in recs} == set(range(10))
    assert all(r.text == DIGIT_WORDS[r.label] for r in recs)
    a = np.asarray(recs[0].image)  # (16, 16, 3)
    assert recs[0].image.size == (16, 16) and a.min() < 50 and a.max() == 255
    # nearest upscaling by 2: every 2x2 block is one of the 8x8 data's cells
    assert (a[0::2, 0::2] == a[1::2, 1::2]).all()


def test_digits_and_shapes_commands(tmp_path, capsys):
    assert main(["data", "digits", "--out", str(tmp_path / "d"), "--size", "8", "--no-progress"]) == 0
    ds = ImageFolder(tmp_path / "d")
    assert len(ds) == 1797 and ds.class_names == DIGIT_WORDS and ds[5].text == DIGIT_WORDS[ds[5].label]
    pytest.importorskip("vqgen.shapes.dataset")
    capsys.readouterr()
    assert main(["data", "shapes", "--out", str(tmp_path / "s"), "--num", "6", "--size", "16", "--seed", "1",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "wrote 6" in out[0] and json.loads(out[-1])
    assert len(ImageFolder(tmp_path / "s", require_text=True)) == 6


@pytest.mark.parametrize("command", ["shapes", "emoji", "digits", "check"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: vqgen data " + command in text and "--no-progress" in text


def test_bad_arguments_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", "digits", "--out", "x", "--size", "0"])
    assert info.value.code == 2 and "must be positive" in capsys.readouterr().err
