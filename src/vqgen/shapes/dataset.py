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
from vqgen.shapes.suite import held_out_prompts
from vqgen.shapes.vocabulary import CATEGORIES

@dataclass(frozen=True)
class Scene:
    """A sampled scene: its caption, category, spec and the objects as drawn."""

    caption: str
    category: str
    spec: dict
    objects: list[PlacedObject]


class ShapesDataset:
    """``num`` procedural scenes as :class:`~vqgen.data.records.Record` s, rendered on demand.

    Scene ``i`` depends only on ``(seed, i)``; captions never equal a prompt of the suite.
    Each record's ``meta`` holds ``spec`` and ``category``.
    """

    def __init__(self, num: int, size: int = 64, seed: int = 0):
        if num < 0:
            raise VqgenError(f"the number of scenes must be >= 0, got {num}")
        if not 16 <= size <= 1024:
            raise VqgenError(f"shapes image size must be between 16 and 1024 pixels, got {size}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise VqgenError(f"the shapes seed must be an integer >= 0, got {seed!r}")
        self.num, self.size, self.seed = num, size, seed

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
                return Scene(caption, category, spec, layout(spec, self.size, rng))
            except VqgenError:  # a rare spec that cannot be placed at this size: draw another scene
                continue

    def __getitem__(self, index: int) -> Record:
        s = self.scene(index)
        return Record(image=render(s.objects, self.size), text=s.caption,
                      meta={"spec": s.spec, "category": s.category}, key=f"shapes-{self.seed}-{index:06d}")

    def __iter__(self):
        return (self[i] for i in range(self.num))


def write_shapes_dataset(out_dir: str | Path, num: int, size: int = 64, seed: int = 0,
                         progress: bool = True) -> dict:
    """Write ``num`` scenes as an image folder (PNGs + ``metadata.jsonl`` with ``spec``, ``category``).

    Returns stats: ``num``, ``size``, ``seed``, ``out_dir``, per-category counts, distinct captions.
    """
    from vqgen.data.folder import METADATA_NAME, write_image_folder

    written = write_image_folder(ShapesDataset(num, size, seed), out_dir, progress=progress)
    rows = [json.loads(line) for line in (Path(out_dir) / METADATA_NAME).read_text(encoding="utf-8").splitlines()]
    return {"out_dir": str(out_dir), "num": written, "size": size, "seed": seed,
            "categories": dict(sorted(Counter(r["category"] for r in rows).items())),
            "distinct_captions": len({r["text"] for r in rows})}

