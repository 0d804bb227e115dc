"""Emoji artwork from the ``emoji-datasource-<style>`` npm packages.

``npm pack emoji-datasource-google`` gives a ``.tgz`` holding ``package/emoji.json`` (one entry per
emoji: ``name``, ``short_names``, ``category``, ``subcategory``, ``unified``, ``image``,
``has_img_<style>``, optional ``skin_variations``), ``package/categories.json`` (the category
order) and ``package/img/<style>/64/<image>``. Either the ``.tgz`` or its extracted directory works.

Each record is one emoji in one style: the caption joins the lower-cased name with those short
names that add words to it ("father christmas, santa"), the label indexes the category, and
``meta`` keeps ``unified``, ``category``, ``subcategory`` and ``style``. Skin-tone variations are
left out by default: they redraw ~320 people and hands five to 25 times in other colours, which
would nearly double the set with near-duplicates and tilt it towards "People & Body".
"""
from __future__ import annotations

import json
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vqgen.data.image import SkipRecord, decode_image
from vqgen.data.records import Record
from vqgen.errors import VqgenError

IMAGE_DIR_SIZE = 64  # the artwork size these packages ship as separate PNGs
SKIN_TONES = {"1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
              "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone"}


@dataclass
class EmojiSet:
    """Records from one or more packages, the category names their labels index, and what was skipped."""

    records: list[Record]
    class_names: list[str]
    skipped: Counter = field(default_factory=Counter)
    styles: list[str] = field(default_factory=list)


def _words(text: str) -> list[str]:
    return re.sub(r"[_\-]+", " ", text.lower().replace("\u2019", "'")).split()


def emoji_caption(name: str | None, short_names: list[str]) -> str:
    """Lower-case caption: the name, then each short name that adds a word ("tiger2" adds none)."""
    parts = [" ".join(_words(name or ""))] if name else []
    known = set(parts[0].split()) if parts else set()
    for short in short_names:
        words = _words(short)
        if not words or {w.rstrip("0123456789") or w for w in words} <= known:
            continue
        parts.append(" ".join(words))
        known.update(words)
    return ", ".join(p for p in parts if p)


class _Package:
    """Read access to a package directory or ``.tgz``: ``emoji.json``, ``categories.json``, images."""

    def __init__(self, path: Path, styles: list[str] | None):
        self.path = path
        self.files: dict[str, bytes] = {}
        if path.is_dir():
            root = path / "package" if (path / "package" / "emoji.json").is_file() else path
            if not (root / "emoji.json").is_file():
                raise VqgenError(f"{path} holds no emoji.json (expected an emoji-datasource-* package)")
            self.root: Path | None = root
            self.available = sorted(p.parent.name for p in (root / "img").glob(f"*/{IMAGE_DIR_SIZE}") if p.is_dir())
        elif path.is_file():
            self.root = None
            self._read_tgz(path, styles)
        else:
            raise VqgenError(f"emoji package {path} does not exist")

    def _read_tgz(self, path: Path, styles: list[str] | None) -> None:
        pattern = re.compile(rf"^(?:package/)?(?:(emoji\.json|categories\.json)|img/([^/]+)/{IMAGE_DIR_SIZE}/([^/]+\.png))$")
        found = set()
        try:
            with tarfile.open(path, "r:*") as tf:
                for member in tf:
                    m = pattern.match(member.name)
                    if not m or not member.isfile():
                        continue
                    if m.group(2):
                        found.add(m.group(2))
                        if styles is not None and m.group(2) not in styles:
                            continue
                    f = tf.extractfile(member)
                    name = m.group(1) or f"img/{m.group(2)}/{IMAGE_DIR_SIZE}/{m.group(3)}"
                    self.files[name] = f.read() if f else b""
        except tarfile.ReadError:
            raise VqgenError(f"cannot read emoji package {path}: not a .tgz or tar archive") from None
        except (tarfile.TarError, OSError, EOFError) as e:
            raise VqgenError(f"cannot read emoji package {path}: {e}") from None
        if "emoji.json" not in self.files:
            raise VqgenError(f"{path} holds no emoji.json (expected an emoji-datasource-* package)")
        self.available = sorted(found)

    def read(self, name: str) -> bytes | None:
        if self.root is None:
            return self.files.get(name)
        p = self.root / name
        return p.read_bytes() if p.is_file() else None

    def json(self, name: str):
        raw = self.read(name)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise VqgenError(f"{self.path}: {name} is not valid JSON: {e}") from None


def load_emoji(packages: list[str | Path] | str | Path, styles: list[str] | None = None, size: int | None = 64,
               skin_tones: bool = False, background: tuple[int, int, int] = (255, 255, 255),
               progress: bool = True) -> EmojiSet:
    """Records for every emoji with artwork in each requested style (all the packages' styles if None).

    Emoji a package marks as having no artwork in a style are not records; artwork it claims but
    lacks is counted as ``missing_file``, undecodable artwork by its reason.
    """
    from vqgen.runtime import progress as progress_bar

    paths = [Path(p) for p in (packages if isinstance(packages, (list, tuple)) else [packages])]
    opened = [_Package(p, styles) for p in paths]
    available = sorted({s for pkg in opened for s in pkg.available})
    if not available:
        raise VqgenError(f"{', '.join(map(str, paths))} holds no img/<style>/{IMAGE_DIR_SIZE}/ artwork")
    wanted = list(styles) if styles else available
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise VqgenError(f"style(s) {', '.join(unknown)} not in {', '.join(map(str, paths))} "
                         f"(it has: {', '.join(available) or 'none'}); pass the emoji-datasource-<style> package")
    entries = opened[0].json("emoji.json")
    if not isinstance(entries, list):
        raise VqgenError(f"{paths[0]}: emoji.json is not a list of emoji")
    order = opened[0].json("categories.json")
    class_names = list(order) if isinstance(order, dict) else []
    for e in entries:
        if e.get("category") and e["category"] not in class_names:
            class_names.append(e["category"])
    index = {c: i for i, c in enumerate(class_names)}

    items = []  # (entry, unified, image file name, caption suffix)
    for e in sorted(entries, key=lambda e: e.get("sort_order", 0)):
        items.append((e, e.get("unified"), e.get("image"), ""))
        for tones, var in (e.get("skin_variations") or {}).items() if skin_tones else ():
            suffix = ", ".join(SKIN_TONES.get(t, t.lower()) for t in tones.split("-"))
            items.append(({**e, **var}, var.get("unified"), var.get("image"), suffix))

    records, skipped = [], Counter()
    for style in wanted:
        owner = next(pkg for pkg in opened if style in pkg.available)
        for e, unified, image, suffix in progress_bar(items, desc=f"emoji {style}", enabled=progress):
            if not e.get(f"has_img_{style}") or not image or e.get("category") not in index:
                continue
            caption = emoji_caption(e.get("name"), e.get("short_names") or [])
            if suffix:
                caption = f"{caption}, {suffix}"
            data = owner.read(f"img/{style}/{IMAGE_DIR_SIZE}/{image}")
            try:
                if data is None:
                    raise SkipRecord("missing_file", image)
                if not caption:
                    raise SkipRecord("empty_caption", image)
                img = decode_image(data, size, background)
            except SkipRecord as err:
                skipped[err.reason] += 1
                continue
            meta = {"unified": unified, "category": e["category"], "subcategory": e.get("subcategory"),
                    "style": style}
            records.append(Record(image=img, text=caption, label=index[e["category"]], meta=meta,
                                  key=f"{style}/{image}"))
    return EmojiSet(records=records, class_names=class_names, skipped=skipped, styles=wanted)


def write_emoji_dataset(packages, out_dir: str | Path, styles: list[str] | None = None, size: int = 64,
                        skin_tones: bool = False, background: tuple[int, int, int] = (255, 255, 255),
                        progress: bool = True) -> dict:
    """Write emoji artwork as an image folder; returns a summary (count, per-style and per-class counts, skipped)."""
    from vqgen.data.folder import check_out_dir, write_image_folder

    check_out_dir(out_dir)
    es = load_emoji(packages, styles, size, skin_tones, background, progress)
    if not es.records:
        raise VqgenError("no emoji artwork found for the requested styles")
    n = write_image_folder(es.records, out_dir, class_names=es.class_names, progress=progress)
    per_class = Counter(es.class_names[r.label] for r in es.records)
    return {"out": str(out_dir), "count": n, "styles": {s: sum(r.meta["style"] == s for r in es.records) for s in es.styles},
            "classes": dict(per_class), "skipped": dict(es.skipped)}
