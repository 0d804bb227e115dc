"""Decoding images and captions the same way for every source, and the reasons a record is skipped.

Every source turns raw bytes into a :class:`~vqgen.data.records.Record` with :func:`decode_image`
and :func:`decode_caption`; both raise :class:`SkipRecord` with one of the stable reason names in
:data:`SKIP_REASONS` when the input is bad, so sources can count what they skip by reason.
"""
from __future__ import annotations

import io
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from vqgen.errors import VqgenError

# Images with more pixels than this are skipped before decoding (decompression bombs).
DEFAULT_MAX_PIXELS = 64_000_000

# Stable short names of the reasons a record is skipped (counted by ImageFolder, the WebDataset
# source and printed by `vqgen data check`).
SKIP_REASONS = {
    "corrupt": "the image data cannot be decoded",
    "truncated": "the image file ends early",
    "empty_file": "the image file has zero bytes",
    "too_many_pixels": "the image has more pixels than the limit (decompression bomb)",
    "unsupported_mode": "the image's pixel format cannot be converted to RGB",
    "bad_caption_encoding": "the caption is not valid UTF-8",
    "empty_caption": "captions are required and this one is missing or blank",
    "missing_file": "a file named in the metadata does not exist",
    "missing_image": "a sample has no image (no .jpg/.png/... member)",
    "bad_metadata": "a metadata line is not a JSON object with a usable file_name, or has non-UTF-8 bytes",
    "bad_label": "the label is not a non-negative integer (or is outside classes.json)",
    "duplicate": "a file name appears more than once in the metadata (or in one tar sample)",
    "bad_shard": "a tar shard cannot be opened or holds no readable member (counted once a shard)",
    "bad_tar_header": "unreadable bytes (a damaged tar header) in a shard: the samples either side are "
                      "skipped, as either may miss a file; reading resumes at the next valid header",
    "truncated_shard": "the tar shard was cut short (inside a member, or no end-of-archive block): "
                       "its last sample is skipped, as it may miss a file",
    "unreadable_file": "an image file cannot be read (a symlink loop, no permission, not a regular file)",
    "missing_codes": "a code-shard sample has no codes (no .codes.npy member)",
    "bad_codes": "a code sample is not an integer grid of the model's shape, or has codes outside the codebook",
}

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class SkipRecord(VqgenError):
    """A record that cannot be used; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in SKIP_REASONS, reason
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _decode_error_reason(e: Exception) -> str:
    """PIL reports a short read as "image file is truncated", "Truncated File Read" or EOFError."""
    return "truncated" if isinstance(e, EOFError) or "truncat" in str(e).lower() else "corrupt"


def _read_file(path: Path) -> bytes:
    """An image file's bytes; a missing or unreadable path (a symlink loop, no permission, a
    folder or FIFO) is a SkipRecord, and nothing but a regular file is ever opened."""
    try:
        info = path.stat()  # follows symlinks: ELOOP for a loop, ENOENT for a dangling one
    except (FileNotFoundError, NotADirectoryError):
        raise SkipRecord("missing_file", str(path)) from None
    except OSError as e:
        raise SkipRecord("unreadable_file", f"{path}: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SkipRecord("unreadable_file", f"{path}: not a regular file")
    if info.st_size == 0:
        raise SkipRecord("empty_file", str(path))
    try:
        return path.read_bytes()
    except OSError as e:
        raise SkipRecord("unreadable_file", f"{path}: {e.strerror or e}") from None


def _open(data: bytes | str | Path, max_pixels: int) -> Image.Image:
    """Open (header only) and enforce the pixel limit before any pixel is decoded."""
    if isinstance(data, (str, Path)):
        data = _read_file(Path(data))
    if len(data) == 0:
        raise SkipRecord("empty_file")
    # PIL's own bomb check (a warning past Image.MAX_IMAGE_PIXELS, an error past twice that) is
    # a global setting; we apply our own limit instead and keep PIL's from leaking out of here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise SkipRecord("too_many_pixels", str(e)) from None
        except UnidentifiedImageError:
            raise SkipRecord("corrupt", "not a recognised image format") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise SkipRecord(_decode_error_reason(e), str(e)) from None
    w, h = im.size
    if w * h > max_pixels:
        raise SkipRecord("too_many_pixels", f"{w}x{h} > {max_pixels} pixels")
    if w == 0 or h == 0:
        raise SkipRecord("corrupt", f"{w}x{h} image")
    return im


def _load(im: Image.Image) -> Image.Image:
    """Decode all pixels; a short read is ``truncated``, anything else ``corrupt``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im.load()
        except Image.DecompressionBombError as e:
            raise SkipRecord("too_many_pixels", str(e)) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
            raise SkipRecord(_decode_error_reason(e), str(e)) from None
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:  # a broken EXIF orientation tag: the pixels are still good
        return im


def _to_8bit(im: Image.Image) -> Image.Image:
    """Integer (16/32-bit) and float greyscale to 8-bit ``L``.

    ``I;16*`` is 0..65535; ``I`` is treated as 16-bit when any value exceeds 255, else 8-bit;
    ``F`` as 0..1 when its maximum is at most 1, else 0..255.
    """
    a = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255):
        a = a / 257.0
    elif im.mode == "F" and a.max(initial=0) <= 1.0:
        a = a * 255.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL mode to RGB; transparency is composited over ``background``."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa", "RGBA") or (mode in ("L", "RGB") and "transparency" in im.info):
        im = im.convert("RGBA")
    elif mode.startswith("I") or mode == "F":
        im = _to_8bit(im)
    if im.mode == "RGBA":
        base = Image.new("RGBA", im.size, tuple(background) + (255,))
        return Image.alpha_composite(base, im).convert("RGB")
    try:
        return im.convert("RGB")  # L, 1, CMYK, YCbCr, HSV, ...
    except (ValueError, OSError) as e:
        raise SkipRecord("unsupported_mode", f"mode {mode}: {e}") from None


def resize_crop(im: Image.Image, size: int, resample: str = "auto") -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop to ``size`` x ``size``.

    ``resample="auto"`` uses Lanczos when shrinking (sharp, little aliasing) and bicubic when
    enlarging; sources with tiny images (the 8x8 digits) pass ``"nearest"`` to keep pixels crisp.
    """
    if im.size == (size, size):
        return im
    if resample == "auto":
        method = RESAMPLE["lanczos"] if min(im.size) > size else RESAMPLE["bicubic"]
    else:
        method = RESAMPLE[resample]
    return ImageOps.fit(im, (size, size), method=method, centering=(0.5, 0.5))


def decode_image(data: bytes | str | Path, size: int | None = None,
                 background: tuple[int, int, int] = (255, 255, 255),
                 max_pixels: int = DEFAULT_MAX_PIXELS, resample: str = "auto") -> Image.Image:
    """Bytes or a path to an RGB PIL image, ``size`` x ``size`` when ``size`` is given.

    Raises :class:`SkipRecord` (``empty_file``, ``missing_file``, ``too_many_pixels``,
    ``corrupt``, ``truncated``, ``unsupported_mode``) for input that cannot be used.
    """
    im = _load(_open(data, max_pixels))
    im = to_rgb(im, background)
    return resize_crop(im, size, resample) if size else im


def decode_caption(raw: bytes | str | None, required: bool = False) -> str | None:
    """A caption from bytes (must be UTF-8) or text, stripped; None when absent and not required.

    Raises :class:`SkipRecord` ``bad_caption_encoding`` for bytes that are not UTF-8 (or text with
    lone surrogates, which is what undecodable bytes become), ``empty_caption`` when ``required``
    and the caption is missing or blank.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SkipRecord("bad_caption_encoding", str(e)) from None
    if raw is not None and not isinstance(raw, str):
        raise SkipRecord("bad_metadata", f"caption is a {type(raw).__name__}, not text")
    if raw is not None:
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            raise SkipRecord("bad_caption_encoding", "caption holds bytes that are not UTF-8") from None
        raw = raw.removeprefix("\ufeff").strip()
    if not raw:
        if required:
            raise SkipRecord("empty_caption")
        return None
    return raw


def decode_label(raw, num_classes: int | None = None) -> int | None:
    """A class label: a non-negative int (below ``num_classes`` when given) or None."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise SkipRecord("bad_label", repr(raw))
    if isinstance(raw, str):
        if not raw.strip().isdigit():
            raise SkipRecord("bad_label", repr(raw))
        raw = int(raw)
    if raw < 0 or (num_classes is not None and raw >= num_classes):
        raise SkipRecord("bad_label", f"{raw} (classes: {num_classes})")
    return raw


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image to a (3, H, W) float32 tensor in [0, 1]."""
    a = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [0, 1], (3, H, W) or (N, 3, H, W) → uint8 arrays (H, W, 3) or (N, H, W, 3):
    clamped, scaled by 255 and rounded — the one conversion every PNG and score goes through."""
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise VqgenError(f"expected (3, H, W) or (N, 3, H, W) image tensors, got {tuple(images.shape)}")
    a = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)  # (..., 3, H, W)
    return a.movedim(-3, -1).cpu().numpy()  # (..., H, W, 3)


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [0, 1] to an RGB PIL image (values are clamped and rounded)."""
    if tensor.ndim != 3:
        raise VqgenError(f"expected a (3, H, W) image tensor, got {tuple(tensor.shape)}")
    return Image.fromarray(to_uint8(tensor))


def image_grid(images: list[Image.Image] | torch.Tensor, cols: int | None = None, pad: int = 2,
               background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Images of one size (PIL images, or an (N, 3, H, W) tensor in [0, 1]) → one PIL grid,
    ``cols`` wide (default: up to 8), ``pad`` pixels of ``background`` around every cell."""
    if isinstance(images, torch.Tensor):
        images = [Image.fromarray(a) for a in to_uint8(images)]
    if not images:
        raise VqgenError("no images to put in a grid")
    cols = max(1, min(cols or 8, len(images)))
    rows = -(-len(images) // cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), background)
    for i, im in enumerate(images):
        grid.paste(im, (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
    return grid


@dataclass
class Batch:
    """Records collated for a model: ``images`` (B, 3, H, W) in [0, 1]; ``labels`` (B,) or None."""

    images: torch.Tensor
    texts: list[str | None]
    labels: torch.Tensor | None
    keys: list[str]


def collate_records(records: list) -> Batch:
    """``DataLoader(collate_fn=collate_records)``: stack same-size Records into a :class:`Batch`.

    ``labels`` is a long tensor when every record has a label, else None.
    """
    images = torch.stack([to_tensor(r.image) for r in records])  # (B, 3, H, W)
    labels = [r.label for r in records]
    label_t = None if any(x is None for x in labels) else torch.tensor(labels, dtype=torch.long)  # (B,)
    return Batch(images=images, texts=[r.text for r in records], labels=label_t, keys=[r.key for r in records])
