"""``vqgen data ...``: make and check image-folder data sets."""
from __future__ import annotations

from vqgen.cli import add_group


def register(sub) -> None:
    group = add_group(sub, "data", help="make and check data sets (image folder + metadata.jsonl)")
