"""The ``shapes`` training data: procedural scenes as records, and an image folder of them."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqgen.data.records import Record
from vqgen.errors import VqgenError
from vqgen.shapes.captions import caption_of
from vqgen.shapes.scenes import CATEGORY_WEIGHTS, PlacedObject, layout, render, sample_spec
from vqgen.shapes.suite import held_out_prompts, held_out_wordings
from vqgen.shapes.vocabulary import CATEGORIES
from vqgen.shapes.wording import caption_variants

@dataclass(frozen=True)
class Scene:
    """A sampled scene: its canonical caption, category, spec, the objects as drawn, and all its
    captions (the canonical one first; more with ``captions > 1``)."""

    caption: str
    category: str
    spec: dict
    objects: list[PlacedObject]
    texts: tuple[str, ...] = ()


class ShapesDataset:
    """``num`` procedural scenes as :class:`~vqgen.data.records.Record` s, rendered on demand.

    Scene ``i`` depends only on ``(seed, i)``; captions never equal a prompt of the suite.
    Each record's ``meta`` holds ``spec`` and ``category``; with ``captions > 1`` also ``texts``,
    the canonical caption then ``captions - 1`` training-part wordings (:mod:`vqgen.shapes.wording`,
    misspelt at ``typo_rate``), drawn from their own generator so scenes and images stay those of
    ``captions=1``.
    """

    def __init__(self, num: int, size: int = 64, seed: int = 0, captions: int = 1, typo_rate: float = 0.0):
        if num < 0:
            raise VqgenError(f"the number of scenes must be >= 0, got {num}")
        if not 16 <= size <= 1024:
            raise VqgenError(f"shapes image size must be between 16 and 1024 pixels, got {size}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise VqgenError(f"the shapes seed must be an integer >= 0, got {seed!r}")
        if isinstance(captions, bool) or not isinstance(captions, int) or captions < 1:
            raise VqgenError(f"the number of captions per scene must be an integer >= 1, got {captions!r}")
        if not 0.0 <= typo_rate < 1.0:
            raise VqgenError(f"the typo rate must be in [0, 1), got {typo_rate}")
        self.num, self.size, self.seed = num, size, seed
        self.captions, self.typo_rate = captions, typo_rate

    def __len__(self) -> int:
        return self.num

    def scene(self, index: int) -> Scene:
        """Sample scene ``index`` (no rendering)."""
        if not 0 <= index < self.num:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, index))
        held_out = held_out_prompts()
        weights = np.array(list(CATEGORY_WEIGHTS.values()))
        while True:
            category = CATEGORIES[rng.choice(len(CATEGORIES), p=weights / weights.sum())]
            spec = sample_spec(rng, category)
            caption = caption_of(spec)
            if caption in held_out:
                continue
            try:
                objects = layout(spec, self.size, rng)
            except VqgenError:  # a rare spec that cannot be placed at this size: draw another scene
                continue
            texts = (caption,)
            if self.captions > 1:
                texts = tuple(caption_variants(spec, self.captions, np.random.default_rng((self.seed, index, 1)),
                                               self.typo_rate, held_out_wordings()))
            return Scene(caption, category, spec, objects, texts)

    def __getitem__(self, index: int) -> Record:
        s = self.scene(index)
        meta = {"spec": s.spec, "category": s.category}
        if self.captions > 1:
            meta["texts"] = list(s.texts)
        return Record(image=render(s.objects, self.size), text=s.caption, meta=meta,
                      key=f"shapes-{self.seed}-{index:06d}")

    def __iter__(self):
        return (self[i] for i in range(self.num))


def write_shapes_dataset(out_dir: str | Path, num: int, size: int = 64, seed: int = 0,
                         progress: bool = True, captions: int = 1, typo_rate: float = 0.0) -> dict:
    """Write ``num`` scenes as an image folder (PNGs + ``metadata.jsonl`` with ``spec``, ``category``,
    and ``texts`` when ``captions > 1``).

    Returns stats: ``num``, ``size``, ``seed``, ``out_dir``, per-category counts, distinct captions
    (canonical ones; with ``captions > 1`` also ``captions`` and ``distinct_texts`` over all).
    """
    from vqgen.data.folder import METADATA_NAME, write_image_folder

    written = write_image_folder(ShapesDataset(num, size, seed, captions, typo_rate), out_dir, progress=progress)
    rows = [json.loads(line) for line in (Path(out_dir) / METADATA_NAME).read_text(encoding="utf-8").splitlines()]
    stats = {"out_dir": str(out_dir), "num": written, "size": size, "seed": seed,
             "categories": dict(sorted(Counter(r["category"] for r in rows).items())),
             "distinct_captions": len({r["text"] for r in rows})}
    if captions > 1:
        stats.update(captions=captions, typo_rate=typo_rate, distinct_texts=len({t for r in rows for t in r["texts"]}))
    return stats

