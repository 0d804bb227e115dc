"""The image-folder format every source writes, and the data set that reads it.

Layout (the Hugging Face ``imagefolder`` convention)::

    DIR/metadata.jsonl   one {"file_name": "000000.png", "text": ..., "label": ..., ...extra} a line
    DIR/classes.json     optional list of class names; ``label`` indexes it
    DIR/000000.png ...   the images (``file_name`` is relative to DIR, subfolders allowed)

A folder without ``metadata.jsonl`` is read as HF does: every image file below DIR, labelled by
its first-level subfolder when all images sit in subfolders.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from vqgen.data.image import (DEFAULT_MAX_PIXELS, SkipRecord, decode_caption, decode_image,
                              decode_label)
from vqgen.data.records import Record
from vqgen.errors import VqgenError
from vqgen.io import atomic_write_json, atomic_write_text, replace_dir
from vqgen.runtime import progress as progress_bar

METADATA_NAME = "metadata.jsonl"
CLASSES_NAME = "classes.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
RESERVED_COLUMNS = ("file_name", "text", "label")


def check_out_dir(out_dir: str | Path) -> None:
    """Refuse an output folder that cannot become an image folder, before any work is done."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise VqgenError(f"{out_dir} exists and is not a directory")
    above = next((p for p in out_dir.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise VqgenError(f"cannot write the image folder {out_dir}: {above} is a file")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / METADATA_NAME).is_file():
        raise VqgenError(f"{out_dir} is not empty and holds no {METADATA_NAME}; "
                         "refusing to replace it (pick a new or empty directory)")


def write_image_folder(records: Iterable[Record], out_dir: str | Path,
                       class_names: list[str] | None = None, progress: bool = True) -> int:
    """Write records as PNGs + ``metadata.jsonl`` (+ ``classes.json``); returns the count.

    The folder is built under a temporary name beside ``out_dir`` and moved into place when
    complete, so readers never see a partial data set; an existing image folder at ``out_dir``
    is replaced. Each record's ``meta`` keys become extra columns (JSON values).
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    except OSError as e:
        raise VqgenError(f"cannot write the image folder {out_dir}: {e.strerror or e}") from None
    tmp.chmod(0o755)  # mkdtemp makes it private; the data set is an ordinary folder
    try:
        lines = []
        total = len(records) if hasattr(records, "__len__") else None
        for i, rec in enumerate(progress_bar(records, total=total, desc=f"writing {out_dir.name}",
                                             enabled=progress)):
            clash = [k for k in rec.meta if k in RESERVED_COLUMNS]
            if clash:
                raise VqgenError(f"record {rec.key or i}: meta keys {clash} clash with metadata.jsonl columns")
            if rec.label is not None and class_names is not None and not 0 <= rec.label < len(class_names):
                raise VqgenError(f"record {rec.key or i}: label {rec.label} is outside the "
                                 f"{len(class_names)} class names")
            name = f"{i:06d}.png"
            rec.image.convert("RGB").save(tmp / name, format="PNG")
            row: dict[str, Any] = {"file_name": name, "text": rec.text,
                                   "label": None if rec.label is None else int(rec.label)}
            row.update(rec.meta)
            try:
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            except (TypeError, ValueError) as e:
                raise VqgenError(f"record {rec.key or i}: meta is not JSON-serialisable ({e})") from None
        if class_names is not None:
            atomic_write_json(tmp / CLASSES_NAME, list(class_names))
        atomic_write_text(tmp / METADATA_NAME, "".join(lines))
        replace_dir(tmp, out_dir)
    except OSError as e:  # a full disk, a folder made read-only meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        raise VqgenError(f"cannot write the image folder {out_dir}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(lines)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _resolve_inside(root: Path, file_name: str) -> Path:
    """``root / file_name``, refusing absolute names and names that climb out of ``root``."""
    rel = Path(file_name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise SkipRecord("bad_metadata", f"file_name {file_name!r} must be a relative path inside the folder")
    return root / rel


class ImageFolder(Dataset):
    """A map-style data set of :class:`Record` s read from an image folder.

    Every line and image is checked when the data set is built (full decode), so ``__getitem__``
    never meets a bad record: what fails is skipped and counted in ``skipped`` (a Counter keyed
    by :data:`~vqgen.data.image.SKIP_REASONS`), with ``(key, reason, detail)`` in ``problems``.
    Images come back as RGB, ``size`` x ``size`` when ``size`` is given.
    """

    def __init__(self, root: str | Path, size: int | None = None, require_text: bool = False,
                 background: tuple[int, int, int] = (255, 255, 255), max_pixels: int = DEFAULT_MAX_PIXELS,
                 resample: str = "auto", progress: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise VqgenError(f"image folder {self.root} does not exist or is not a directory")
        self.size, self.require_text, self.background = size, require_text, tuple(background)
        self.max_pixels, self.resample = max_pixels, resample
        self.skipped: Counter = Counter()
        self.problems: list[tuple[str, str, str]] = []
        self.class_names = self._read_classes()
        num_classes = len(self.class_names) if self.class_names is not None else None
        candidates = self._read_metadata() if (self.root / METADATA_NAME).is_file() else self._scan()
        self._rows: list[tuple[Path, str | None, int | None, dict, str]] = []
        seen: set[Path] = set()
        for key, row in progress_bar(candidates, desc=f"checking {self.root.name}", enabled=progress):
            try:
                if isinstance(row, SkipRecord):
                    raise row
                path = _resolve_inside(self.root, row["file_name"])
                if path in seen:
                    raise SkipRecord("duplicate", row["file_name"])
                text = decode_caption(row.get("text"), required=require_text)
                label = decode_label(row.get("label"), num_classes)
                self._decode(path)
                seen.add(path)
                meta = {k: v for k, v in row.items() if k not in RESERVED_COLUMNS}
                self._rows.append((path, text, label, meta, row["file_name"]))
            except SkipRecord as e:
                self.skipped[e.reason] += 1
                self.problems.append((key, e.reason, e.detail))

    def _read_classes(self) -> list[str] | None:
        path = self.root / CLASSES_NAME
        if not path.is_file():
            return None
        try:
            names = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise VqgenError(f"{path} is not valid JSON: {e}") from None
        except OSError as e:
            raise VqgenError(f"cannot read {path}: {e.strerror or e}") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise VqgenError(f"{path} must be a JSON list of class names")
        return names

    def _read_metadata(self) -> list[tuple[str, dict | SkipRecord]]:
        """``(key, row)`` per non-blank line; ``row`` is a SkipRecord for a line that cannot be used."""
        out = []
        try:
            raw_lines = (self.root / METADATA_NAME).read_bytes().split(b"\n")
        except OSError as e:
            raise VqgenError(f"cannot read {self.root / METADATA_NAME}: {e.strerror or e}") from None
        for lineno, raw in enumerate(raw_lines, 1):
            if not raw.strip():
                continue
            key = f"{METADATA_NAME}:{lineno}"
            # Undecodable bytes become lone surrogates; a caption holding them is then reported as
            # bad_caption_encoding rather than losing the line as bad JSON.
            line = raw.decode("utf-8", errors="surrogateescape")
            try:
                row = json.loads(line)
            except ValueError as e:
                out.append((key, SkipRecord("bad_metadata", f"invalid JSON: {e}")))
                continue
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str) or not row["file_name"]:
                out.append((key, SkipRecord("bad_metadata", "line is not a JSON object with a file_name")))
                continue
            if _has_surrogates(json.dumps({k: v for k, v in row.items() if k != "text"}, ensure_ascii=False)):
                out.append((key, SkipRecord("bad_metadata", "non-UTF-8 bytes outside the caption")))
                continue
            out.append((row["file_name"], row))
        return out

    def _scan(self) -> list[tuple[str, dict]]:
        """No metadata.jsonl: every entry with an image suffix below root (symlinked subfolders are
        followed, each real folder read once); label = first-level subfolder if all have one.

        Entries that turn out unreadable (symlink loops, no permission, FIFOs) are counted when
        decoded; a subfolder that cannot be listed counts once as ``unreadable_file`` here."""
        def unlisted(e: OSError) -> None:
            if Path(e.filename) == self.root:
                raise VqgenError(f"cannot read {self.root}: {e.strerror or e}")
            self.skipped["unreadable_file"] += 1
            self.problems.append((Path(e.filename).relative_to(self.root).as_posix(), "unreadable_file",
                                  f"cannot list the folder: {e.strerror or e}"))

        files, seen = [], set()
        for folder, subfolders, names in os.walk(self.root, onerror=unlisted, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:  # a symlink back to a folder already read
                subfolders[:] = []
                continue
            seen.add(real)
            files += [Path(folder, n) for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
        files.sort()
        if not files:
            raise VqgenError(f"{self.root} holds no {METADATA_NAME} and no image files")
        rel = [p.relative_to(self.root) for p in files]
        if self.class_names is None and all(len(r.parts) > 1 for r in rel):
            self.class_names = sorted({r.parts[0] for r in rel})
        index = {n: i for i, n in enumerate(self.class_names or [])}
        return [(r.as_posix(), {"file_name": r.as_posix(),
                                "label": index.get(r.parts[0]) if len(r.parts) > 1 else None})
                for r in rel]

    def _decode(self, path: Path):
        return decode_image(path, self.size, self.background, self.max_pixels, self.resample)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> Record:
        path, text, label, meta, key = self._rows[index]
        return Record(image=self._decode(path), text=text, label=label, meta=dict(meta), key=key)

    @property
    def labels(self) -> list[int | None]:
        """Every record's label, without decoding images."""
        return [r[2] for r in self._rows]

    @property
    def texts(self) -> list[str | None]:
        """Every record's caption, without decoding images."""
        return [r[1] for r in self._rows]
