"""The one record type every data source yields."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
