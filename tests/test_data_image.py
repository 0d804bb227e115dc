import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.data.image import (SkipRecord, collate_records, decode_caption, decode_image, decode_label,
                              resize_crop, to_pil, to_tensor)
from vqgen.data.records import Record

BLUE = (0, 0, 255)


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (the pixel data is an 8x8 image's)."""
    data = encode(Image.new("RGB", (8, 8)))
    body = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:8] + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body)) + data[33:]


def reason(data, **kw) -> str:
    with pytest.raises(SkipRecord) as info:
        decode_image(data, **kw)
    return info.value.reason


def test_transparency_is_composited_on_background():
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30] * 256)
    cases = {
        "RGBA": encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0))),
        "LA": encode(Image.new("LA", (4, 4), (0, 0))),
        "P": encode(palette, transparency=0),
        "RGB": encode(Image.new("RGB", (4, 4), (10, 20, 30)), transparency=(10, 20, 30)),  # a tRNS colour key
    }
    for mode, data in cases.items():
        assert Image.open(io.BytesIO(data)).mode == mode
        im = decode_image(data, background=BLUE)
        assert im.mode == "RGB" and im.getpixel((0, 0)) == BLUE, mode
    half = decode_image(encode(Image.new("RGBA", (4, 4), (255, 255, 255, 128))), background=(0, 0, 0))
    assert half.getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("mode,image,fmt,expected", [
    ("CMYK", Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "TIFF", (255, 0, 0)),
    ("I;16", Image.fromarray(np.full((4, 4), 65535, np.uint16)), "PNG", (255, 255, 255)),
    ("I", Image.fromarray(np.full((4, 4), 257 * 100, np.int32)), "TIFF", (100, 100, 100)),
    ("F", Image.fromarray(np.full((4, 4), 0.5, np.float32)), "TIFF", (128, 128, 128)),
    ("L", Image.new("L", (4, 4), 77), "PNG", (77, 77, 77)),
    ("1", Image.new("1", (4, 4), 1), "PNG", (255, 255, 255)),
    ("P", Image.new("RGB", (4, 4), (0, 204, 0)).convert("P"), "PNG", (0, 204, 0)),  # web palette
])
def test_modes_convert_to_rgb(mode, image, fmt, expected):
    data = encode(image, fmt)
    assert Image.open(io.BytesIO(data)).mode == mode
    im = decode_image(data)
    assert im.mode == "RGB" and im.getpixel((2, 2)) == expected


def test_resize_shorter_side_then_center_crop():
    a = np.zeros((40, 80, 3), np.uint8)  # (H, W, 3): a wide image, centre third white
    a[:, 30:50] = 255
    im = decode_image(encode(Image.fromarray(a)), size=20)
    assert im.size == (20, 20)
    out = np.asarray(im)
    assert out[:, 10].min() > 200 and out[:, 0].max() < 40 and out[:, -1].max() < 40
    assert decode_image(encode(Image.new("RGB", (4, 6))), size=12).size == (12, 12)
    tiny = resize_crop(Image.fromarray(np.array([[0, 255]], np.uint8)).convert("RGB"), 4, "nearest")
    assert set(np.asarray(tiny).ravel().tolist()) == {0, 255}


def test_bad_images_have_reasons(tmp_path):
    noisy = Image.effect_noise((64, 64), 60).convert("RGB")
    png, jpg = encode(noisy), encode(noisy, "JPEG")
    assert reason(b"") == "empty_file"
    assert reason(b"this is not an image") == "corrupt"
    assert reason(png[:len(png) // 2]) == "truncated"
    assert reason(jpg[:len(jpg) // 2]) == "truncated"
    assert reason(tmp_path / "nope.png") == "missing_file"
    (tmp_path / "zero.png").write_bytes(b"")
    assert reason(tmp_path / "zero.png") == "empty_file"


def test_pixel_limit_checked_before_decoding_without_leaking_pil_state():
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning escaping would fail here
        assert reason(encode(Image.new("RGB", (20, 20))), max_pixels=399) == "too_many_pixels"
        assert decode_image(encode(Image.new("RGB", (20, 20))), max_pixels=400).size == (20, 20)
        assert reason(png_with_size(100_000, 100_000)) == "too_many_pixels"  # past PIL's own error limit
        assert reason(png_with_size(12_000, 12_000)) == "too_many_pixels"  # past PIL's warning limit
    assert Image.MAX_IMAGE_PIXELS == before


def test_captions_and_labels():
    assert decode_caption(b"  a cat \n") == "a cat"
    assert decode_caption("\ufeffhello") == "hello"
    assert decode_caption(None) is None and decode_caption("  ") is None
    for raw, required, why in [(b"\xff\xfe", False, "bad_caption_encoding"),
                               ("bad \udcff", False, "bad_caption_encoding"),
                               ("", True, "empty_caption"), (None, True, "empty_caption")]:
        with pytest.raises(SkipRecord) as info:
            decode_caption(raw, required=required)
        assert info.value.reason == why
    assert decode_label(3) == 3 and decode_label("4") == 4 and decode_label(None) is None
    for bad in (-1, True, 1.5, "x", 10):
        with pytest.raises(SkipRecord):
            decode_label(bad, num_classes=10)


def test_tensor_round_trip_and_collate():
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)  # (H, W, 3)
    t = to_tensor(Image.fromarray(a))
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1
    assert np.array_equal(np.asarray(to_pil(t)), a)
    recs = [Record(Image.fromarray(a), text=str(i), label=i, key=f"k{i}") for i in range(3)]
    batch = collate_records(recs)
    assert batch.images.shape == (3, 3, 5, 7) and batch.labels.tolist() == [0, 1, 2]
    assert batch.texts == ["0", "1", "2"] and batch.keys == ["k0", "k1", "k2"]
    recs[1].label = None
    assert collate_records(recs).labels is None
