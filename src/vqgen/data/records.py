"""The record types data sources yield: images (:class:`Record`) and image codes (:class:`CodeRecord`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image


@dataclass
class Record:
    """One example: an RGB image, and optionally a caption, an integer class label and metadata.

    ``key`` identifies the record in its source (a file name or a shard sample key).
    """

    image: Image.Image
    text: str | None = None
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = ""


@dataclass
class CodeRecord:
    """One pre-tokenized example: ``codes`` (*grid) long, and optionally a caption, a label and metadata."""

    codes: torch.Tensor
    text: str | None = None
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = ""
