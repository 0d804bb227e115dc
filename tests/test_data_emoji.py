import json
import tarfile

import pytest
from PIL import Image

from tests.test_data_image import encode
from vqgen.cli import main
from vqgen.data import ImageFolder
from vqgen.data.emoji import emoji_caption, load_emoji
from vqgen.errors import VqgenError


def entry(name, short_names, category, subcategory, unified, google=True, twitter=True, **extra):
    return {"name": name, "unified": unified, "image": unified.lower() + ".png", "short_name": short_names[0],
            "short_names": short_names, "category": category, "subcategory": subcategory,
            "sort_order": extra.pop("sort_order", 0), "has_img_google": google, "has_img_twitter": twitter, **extra}


def make_package(root):
    """A tiny emoji-datasource package directory (``package/...``) with two styles; returns its dir."""
    pkg = root / "package"
    entries = [
        entry("GRINNING FACE", ["grinning"], "Smileys & Emotion", "face-smiling", "1F600", sort_order=1),
        entry("FATHER CHRISTMAS", ["santa"], "People & Body", "person-fantasy", "1F385", sort_order=2,
              skin_variations={"1F3FB": {"unified": "1F385-1F3FB", "image": "1f385-1f3fb.png",
                                         "has_img_google": True, "has_img_twitter": True}}),
        entry("TIGER", ["tiger2"], "Animals & Nature", "animal-mammal", "1F405", sort_order=3, twitter=False),
        entry("Yemen Flag", ["flag-ye"], "Flags", "country-flag", "1F1FE-1F1EA", sort_order=4),
        entry("LOST", ["lost"], "Objects", "tool", "1F999", sort_order=5),  # claimed, but no file
        entry("BROKEN", ["broken"], "Objects", "tool", "1F998", sort_order=6),  # corrupt file
    ]
    (pkg / "img").mkdir(parents=True)
    (pkg / "emoji.json").write_text(json.dumps(entries))
    (pkg / "categories.json").write_text(json.dumps(
        {c: {} for c in ["Smileys & Emotion", "People & Body", "Animals & Nature", "Objects", "Flags"]}))
    for style, colour in (("google", (255, 0, 0, 255)), ("twitter", (0, 0, 255, 255))):
        d = pkg / "img" / style / "64"
        d.mkdir(parents=True)
        for e in entries[:4]:
            if e[f"has_img_{style}"]:
                (d / e["image"]).write_bytes(encode(Image.new("RGBA", (64, 64), colour)))
        (d / "1f385-1f3fb.png").write_bytes(encode(Image.new("RGBA", (64, 64), colour)))
        (d / "1f998.png").write_bytes(b"not a png")
    return root


def test_captions():
    assert emoji_caption("GRINNING FACE", ["grinning"]) == "grinning face"
    assert emoji_caption("FATHER CHRISTMAS", ["santa"]) == "father christmas, santa"
    assert emoji_caption("TIGER", ["tiger2"]) == "tiger"
    assert emoji_caption("WOMAN TEACHER", ["female-teacher"]) == "woman teacher, female teacher"
    assert emoji_caption("Yemen Flag", ["flag-ye"]) == "yemen flag, flag ye"
    assert emoji_caption(None, ["thumbs_up", "+1"]) == "thumbs up, +1"


def test_load_from_directory_and_tgz(tmp_path):
    root = make_package(tmp_path / "pkgdir")
    tgz = tmp_path / "emoji-datasource-test-1.0.0.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(root / "package", arcname="package")
    for source in (root, root / "package", tgz):
        es = load_emoji(source, styles=["google"], size=32, progress=False)
        assert es.class_names == ["Smileys & Emotion", "People & Body", "Animals & Nature", "Objects", "Flags"]
        assert [r.text for r in es.records] == ["grinning face", "father christmas, santa", "tiger",
                                                "yemen flag, flag ye"]
        assert [r.label for r in es.records] == [0, 1, 2, 4]
        assert es.records[1].meta == {"unified": "1F385", "category": "People & Body",
                                      "subcategory": "person-fantasy", "style": "google"}
        assert es.records[0].image.size == (32, 32) and es.records[0].image.getpixel((5, 5)) == (255, 0, 0)
        assert dict(es.skipped) == {"missing_file": 1, "corrupt": 1}
    both = load_emoji(tgz, size=64, skin_tones=True, progress=False)
    assert both.styles == ["google", "twitter"]
    assert [r.meta["style"] for r in both.records].count("twitter") == 4  # no twitter tiger
    assert "father christmas, santa, light skin tone" in [r.text for r in both.records]
    with pytest.raises(VqgenError, match="apple"):
        load_emoji(root, styles=["apple"], progress=False)
    (tmp_path / "junk.tgz").write_bytes(b"junk" * 100)
    with pytest.raises(VqgenError, match="not a .tgz"):
        load_emoji(tmp_path / "junk.tgz", progress=False)


def test_emoji_command_writes_an_image_folder(tmp_path, capsys):
    root = make_package(tmp_path / "pkg")
    out = tmp_path / "out"
    assert main(["data", "emoji", "--package", str(root), "--out", str(out), "--styles", "google,twitter",
                 "--size", "16", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["count"] == 7 and summary["styles"] == {"google": 4, "twitter": 3}
    ds = ImageFolder(out)
    assert len(ds) == 7 and ds.class_names[ds[2].label] == "Animals & Nature" and ds[2].image.size == (16, 16)
    assert main(["data", "emoji", "--package", str(tmp_path / "nope.tgz"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
