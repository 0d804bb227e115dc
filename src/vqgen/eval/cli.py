"""``vqgen eval ...``: evaluation commands."""
from __future__ import annotations

from vqgen.cli import add_group


def register(sub) -> None:
    group = add_group(sub, "eval", help="evaluate images and models")
