"""Pre-tokenized code shards: what stage 1 writes once and stage 2 trains on.

Layout of a CODES directory::

    info.json             {"tokenizer": DIR, "grid": [h, w], "codebook_size": K,
                           "num_records": N, "shards": [...], "class_names": [...] | null}
    shard-00000.safetensors   {"codes": int16|int32 (n, h, w)}
    shard-00000.jsonl         one {"key", "text", "label", "meta"} per row of that shard
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vqgen.errors import VqgenError
from vqgen.io import atomic_write, atomic_write_json, atomic_write_text, read_json_object

INFO_NAME = "info.json"


class CodeShardWriter:
    """Accumulates code grids with their records' text/label/meta and writes shards of ``shard_size``.

    Use as a context manager; ``info.json`` is written last, so a reader never sees a partial set.
    """

    def __init__(self, out_dir: str | Path, grid: tuple[int, int], codebook_size: int,
                 tokenizer_dir: str | Path | None = None, shard_size: int = 10000,
                 class_names: list[str] | None = None):
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VqgenError(f"cannot write codes to {self.out_dir}: {e.strerror or e}") from None
        self.grid, self.codebook_size = tuple(grid), int(codebook_size)
        self.tokenizer_dir = str(Path(tokenizer_dir).resolve()) if tokenizer_dir else None
        self.shard_size, self.class_names = shard_size, class_names
        self.dtype = torch.int16 if codebook_size <= 32767 else torch.int32
        self._codes: list[torch.Tensor] = []
        self._rows: list[dict[str, Any]] = []
        self.shards: list[str] = []
        self.num_records = 0

    def add(self, codes: torch.Tensor, texts=None, labels=None, metas=None, keys=None) -> None:
        """Add a batch: ``codes`` (B, h, w) ints, and per-row lists (or None) of the rest."""
        if tuple(codes.shape[1:]) != self.grid:
            raise VqgenError(f"code grid {tuple(codes.shape[1:])} does not match {self.grid}")
        n = codes.shape[0]
        self._codes.extend(codes.to("cpu", self.dtype).unbind(0))
        for i in range(n):
            self._rows.append({
                "key": keys[i] if keys else "",
                "text": texts[i] if texts else None,
                "label": (int(labels[i]) if labels[i] is not None else None) if labels else None,
                "meta": metas[i] if metas else {},
            })
        while len(self._codes) >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        if n == 0:
            return
        name = f"shard-{len(self.shards):05d}"
        codes = torch.stack(self._codes[:n])  # (n, h, w)
        atomic_write(self.out_dir / f"{name}.safetensors", lambda tmp: save_file({"codes": codes}, tmp))
        atomic_write_text(self.out_dir / f"{name}.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self._rows[:n]))
        del self._codes[:n], self._rows[:n]
        self.shards.append(name)
        self.num_records += n

    def close(self) -> Path:
        self._flush(len(self._codes))
        atomic_write_json(self.out_dir / INFO_NAME, {
            "tokenizer": self.tokenizer_dir, "grid": list(self.grid), "codebook_size": self.codebook_size,
            "num_records": self.num_records, "shards": self.shards, "class_names": self.class_names,
        })
        return self.out_dir

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()


@dataclass
class CodeDataset:
    """A whole CODES directory in memory: ``codes`` (N, h, w) long and per-record lists."""

    codes: torch.Tensor
    texts: list[str | None]
    labels: list[int | None]
    metas: list[dict]
    keys: list[str]
    info: dict

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.info["grid"])

    @property
    def codebook_size(self) -> int:
        return int(self.info["codebook_size"])

    def __len__(self) -> int:
        return self.codes.shape[0]

    @classmethod
    def load(cls, directory: str | Path) -> "CodeDataset":
        directory = Path(directory)
        info_path = directory / INFO_NAME
        if not info_path.is_file():
            raise VqgenError(f"{directory} is not a code directory ({INFO_NAME} missing); "
                             "make one with `vqgen tokenizer encode`")
        info = read_json_object(info_path)
        for field, kind in (("shards", list), ("grid", list), ("codebook_size", int)):
            if not isinstance(info.get(field), kind):
                raise VqgenError(f"{info_path}: '{field}' is missing or not a {kind.__name__}")
        if not all(isinstance(n, str) and n and "/" not in n and n != ".." for n in info["shards"]):
            raise VqgenError(f"{info_path}: 'shards' must list shard names inside the folder")
        codes, rows = [], []
        for name in info["shards"]:
            shard = directory / f"{name}.safetensors"
            try:
                codes.append(load_file(str(shard))["codes"].long())
                with open(directory / f"{name}.jsonl", encoding="utf-8") as f:
                    rows.extend(json.loads(line) for line in f if line.strip())
            except (OSError, ValueError, KeyError, SafetensorError) as e:  # JSON errors are ValueErrors
                raise VqgenError(f"{directory}: shard {name} cannot be read ({type(e).__name__}: {e}); "
                                 "re-run `vqgen tokenizer encode`") from None
        if not codes:
            raise VqgenError(f"{directory} holds no code shards")
        all_codes = torch.cat(codes)  # (N, h, w)
        if all_codes.shape[0] != len(rows):
            raise VqgenError(f"{directory}: {all_codes.shape[0]} code grids but {len(rows)} records")
        return cls(codes=all_codes, texts=[r["text"] for r in rows], labels=[r["label"] for r in rows],
                   metas=[r["meta"] for r in rows], keys=[r["key"] for r in rows], info=info)
