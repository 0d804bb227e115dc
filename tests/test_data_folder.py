import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_data_image import encode, png_with_size
from vqgen.cli import main
from vqgen.data import ImageFolder, Record, write_image_folder
from vqgen.errors import VqgenError


def records(n=6):
    return [Record(Image.new("RGB", (10, 14), (i * 40, 255 - i * 40, 7)), text=f"thing {i}", label=i % 3,
                   meta={"source": "test", "index": i}, key=f"k{i}") for i in range(n)]


def test_write_then_read_round_trip(tmp_path):
    out = tmp_path / "set"
    assert write_image_folder(records(), out, class_names=["a", "b", "c"], progress=False) == 6
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert rows[1] == {"file_name": "000001.png", "text": "thing 1", "label": 1, "source": "test", "index": 1}
    assert json.loads((out / "classes.json").read_text()) == ["a", "b", "c"]
    ds = ImageFolder(out)
    assert len(ds) == 6 and ds.class_names == ["a", "b", "c"] and not ds.skipped
    rec = ds[4]
    assert rec.text == "thing 4" and rec.label == 1 and rec.meta == {"source": "test", "index": 4}
    assert rec.image.size == (10, 14) and rec.image.getpixel((0, 0)) == (160, 95, 7)
    assert ImageFolder(out, size=8)[0].image.size == (8, 8)
    assert ds.labels == [0, 1, 2, 0, 1, 2] and ds.texts[0] == "thing 0"


def test_writer_replaces_an_image_folder_but_not_other_directories(tmp_path):
    out = tmp_path / "set"
    write_image_folder(records(6), out, progress=False)
    write_image_folder(records(2), out, progress=False)  # a smaller set leaves no stale files
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "metadata.jsonl"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(VqgenError, match="refusing"):
        write_image_folder(records(1), other, progress=False)
    bad = [Record(Image.new("RGB", (2, 2)), meta={"label": 3})]
    with pytest.raises(VqgenError, match="clash"):
        write_image_folder(bad, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))


def test_folder_without_metadata_uses_subfolders_as_classes(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (4, 4)).save(tmp_path / cls / f"{i}.png")
    ds = ImageFolder(tmp_path)
    assert ds.class_names == ["cat", "dog"] and len(ds) == 4
    assert [ds[i].label for i in range(4)] == [0, 0, 1, 1] and ds[3].key == "dog/1.png"


def seed_bad_folder(root):
    """A folder with good records in many pixel formats and one or more of each kind of bad input.

    Returns (good file names, expected skip counts by reason).
    """
    root.mkdir()
    noisy = Image.effect_noise((48, 48), 60).convert("RGB")
    good = {
        "rgb.png": encode(noisy),
        "rgba.png": encode(Image.new("RGBA", (9, 9), (1, 2, 3, 0))),
        "palette.png": encode(noisy.convert("P")),
        "grey16.png": encode(Image.fromarray(np.full((6, 6), 4000, np.uint16))),
        "cmyk.jpg": encode(Image.new("CMYK", (8, 8), (0, 10, 20, 30)), "JPEG"),
        "photo.jpg": encode(noisy, "JPEG"),
        "sub/nested.png": encode(noisy),
    }
    bad_files = {
        "corrupt.png": b"\x89PNG\r\n\x1a\n this is not really a png",
        "truncated.png": encode(noisy)[:300],
        "truncated.jpg": encode(noisy, "JPEG")[:400],
        "empty.png": b"",
        "bomb.png": png_with_size(12_000, 12_000),
        "badcaption.png": encode(noisy), "nocaption.png": encode(noisy), "blank.png": encode(noisy),
        "badlabel.png": encode(noisy), "badextra.png": encode(noisy),
    }
    for name, data in {**good, **bad_files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    lines = [json.dumps({"file_name": n, "text": f"good {n}", "label": 1, "extra": [1, 2]}).encode()
             for n in good]
    for name in ("corrupt.png", "truncated.png", "truncated.jpg", "empty.png", "bomb.png"):
        lines.append(json.dumps({"file_name": name, "text": "a bad image", "label": 0}).encode())
    lines += [
        b'{"file_name": "badcaption.png", "text": "caf\xe9 latin-1", "label": 0}',
        b'{"file_name": "nocaption.png", "label": 0}',
        json.dumps({"file_name": "blank.png", "text": "   ", "label": 0}).encode(),
        json.dumps({"file_name": "badlabel.png", "text": "x", "label": "cat"}).encode(),
        b'{"file_name": "badextra.png", "text": "fine", "source": "caf\xe9"}',
        json.dumps({"file_name": "gone.png", "text": "x"}).encode(),
        json.dumps({"file_name": "rgb.png", "text": "again"}).encode(),
        json.dumps({"file_name": "../outside.png", "text": "x"}).encode(),
        json.dumps({"text": "no file name"}).encode(),
        b'{"file_name": "broken json", ',
        b"",
    ]
    (root / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (root / "classes.json").write_text(json.dumps(["zero", "one"]))
    expected = {"corrupt": 1, "truncated": 2, "empty_file": 1, "too_many_pixels": 1, "bad_caption_encoding": 1,
                "empty_caption": 2, "bad_label": 1, "missing_file": 1, "duplicate": 1, "bad_metadata": 4}
    return set(good), expected


def test_check_reports_every_bad_kind_and_keeps_every_good_record(tmp_path, capsys):
    root = tmp_path / "messy"
    good, expected = seed_bad_folder(root)
    assert main(["data", "check", str(root), "--require-text", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["good"] == len(good) and summary["skipped"] == expected
    for reason, n in expected.items():
        assert any(line.split()[:2] == [reason, str(n)] for line in out), reason
    ds = ImageFolder(root, require_text=True, size=16)
    assert {ds[i].key for i in range(len(ds))} == good and dict(ds.skipped) == expected
    assert all(ds[i].image.size == (16, 16) and ds[i].image.mode == "RGB" for i in range(len(ds)))
    assert ds[0].meta == {"extra": [1, 2]}
    # without --require-text, the caption-less records are good; --strict turns skips into status 1
    assert len(ImageFolder(root)) == len(good) + 2
    assert main(["data", "check", str(root), "--strict", "--no-progress"]) == 1


def test_check_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqgen: error:") and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert main(["data", "check", str(tmp_path / "empty")]) == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "classes.json").write_text("{nope")
    (tmp_path / "bad" / "metadata.jsonl").write_text("")
    assert main(["data", "check", str(tmp_path / "bad")]) == 2
    assert "classes.json is not valid JSON" in capsys.readouterr().err


def test_unreadable_entries_without_metadata_are_counted(tmp_path, monkeypatch, capsys):
    """Symlink loops, dangling links, FIFOs and unlistable subfolders used to vanish uncounted."""
    root, elsewhere = tmp_path / "set", tmp_path / "elsewhere"
    for folder in ("cat", "dog", "locked"):
        (root / folder).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(root / folder / "ok.png")
    elsewhere.mkdir()
    Image.new("RGB", (4, 4)).save(elsewhere / "linked.png")
    (root / "cat" / "loop.png").symlink_to("loop.png")  # ELOOP
    (root / "cat" / "gone.png").symlink_to("nowhere.png")
    os.mkfifo(root / "dog" / "pipe.png")  # never opened: reading it would block
    (root / "dog" / "folder.png").mkdir()  # a folder with an image suffix is no record
    (root / "dog" / "elsewhere").symlink_to(elsewhere)  # symlinked folders are followed
    (root / "dog" / "back").symlink_to(root)  # ... each real folder once
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    ds = ImageFolder(root)
    assert sorted(r[-1] for r in ds._rows) == ["cat/ok.png", "dog/elsewhere/linked.png", "dog/ok.png"]
    assert dict(ds.skipped) == {"unreadable_file": 3, "missing_file": 1}
    assert sorted(k for k, _, _ in ds.problems) == ["cat/gone.png", "cat/loop.png", "dog/pipe.png", "locked"]
    assert main(["data", "check", str(root), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == dict(sorted(ds.skipped.items()))
