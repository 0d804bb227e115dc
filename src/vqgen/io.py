"""Saving and loading: atomic writes, ``save_pretrained`` / ``from_pretrained`` with safetensors.

A saved model is a directory with ``config.json`` (the config's fields plus ``model_type``) and
``model.safetensors``. Loading is strict: a missing or unexpected tensor is an error.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from vqgen.config import from_dict, save_config
from vqgen.errors import VqgenError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_MODEL_TYPES: dict[str, type] = {}


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path`` (same directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def replace_dir(tmp_dir: str | Path, final_dir: str | Path) -> None:
    """Move a fully written ``tmp_dir`` onto ``final_dir``; the old one is removed only afterwards."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    old = final_dir.with_name(final_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old.exists():
        shutil.rmtree(old)


def resolve_inside(directory: str | Path, sub: str) -> Path:
    """``directory/sub`` resolved, or a one-line error when ``sub`` leads outside ``directory``
    (an absolute path, ``..``, or a link out): a saved folder names only what it holds."""
    base = Path(directory).resolve()
    path = (base / sub).resolve()
    if path != base and base not in path.parents:
        raise VqgenError(f"{directory}: {sub!r} points outside the folder; a saved folder may only name "
                         "its own sub-folders")
    return path


def register_model(model_type: str):
    """Class decorator: make a model loadable by ``load_pretrained`` from its ``model_type``."""

    def deco(cls):
        cls.model_type = model_type
        _MODEL_TYPES[model_type] = cls
        return cls

    return deco


def read_model_type(directory: str | Path) -> str:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise VqgenError(f"{directory} is not a saved model: {CONFIG_NAME} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VqgenError(f"{path} is not valid JSON: {e}") from None
    if "model_type" not in data:
        raise VqgenError(f"{path} has no model_type")
    return data["model_type"]


class PretrainedMixin:
    """Mixin for ``nn.Module`` models built from ``self.config`` (a frozen config dataclass).

    Subclasses set ``config_class`` and are registered with ``@register_model(name)``.
    """

    config_class: type
    model_type: str

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (each atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_model(self, tmp))
        save_config(self.config, directory / CONFIG_NAME, model_type=self.model_type)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu"):
        """Rebuild the model from ``config.json`` alone and load its weights strictly."""
        directory = Path(directory)
        model_type = read_model_type(directory)
        target = cls
        if getattr(cls, "model_type", None) != model_type:
            target = _MODEL_TYPES.get(model_type)
            if target is None or not issubclass(target, cls):
                raise VqgenError(f"{directory} holds a {model_type!r} model, not a {cls.__name__}")
        data = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))
        config = from_dict(target.config_class, data)
        model = target(config)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise VqgenError(f"{directory} has no {WEIGHTS_NAME}")
        try:
            missing, unexpected = load_model(model, str(weights), strict=True, device=str(device))
        except (RuntimeError, SafetensorError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise VqgenError(f"cannot load {weights}: {first}") from None
        return model.to(device).eval()


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu"):
    """Load any registered model from its directory, dispatching on ``model_type``."""
    model_type = read_model_type(directory)
    if model_type not in _MODEL_TYPES:
        _import_model_modules()
    cls = _MODEL_TYPES.get(model_type)
    if cls is None:
        raise VqgenError(f"{directory}: unknown model_type {model_type!r}")
    return cls.from_pretrained(directory, device=device)


# Modules whose import registers model types (kept here so load_pretrained can find any model).
MODEL_MODULES: list[str] = [
    "vqgen.tokenizer.vit_vqgan",
    "vqgen.tokenizer.cnn_vqgan",
    "vqgen.tokenizer.discriminator",
    "vqgen.transformer.vim",
    "vqgen.transformer.parti",
    "vqgen.transformer.unified",
    "vqgen.rerank.clip",
    "vqgen.superres.model",
]


def _import_model_modules() -> None:
    import importlib

    for name in MODEL_MODULES:
        importlib.import_module(name)
