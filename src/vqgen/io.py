"""Files: atomic writes, config files, and saved models with the one model registry.

Writes go to a temp file in the same directory that is renamed onto the target, created with the
mode the umask allows (``0o666 & ~umask``, as ``open`` would). A saved model is a directory with
``config.json`` (the config's fields plus ``model_type``) and ``model.safetensors``; loading is
strict about tensors (a missing, unexpected or mis-shaped one is an error that names them).

Every model class is found by its ``model_type`` (for the token transformers, the family name)
through one registry, :func:`model_class`: built-in classes are listed in :data:`MODELS` by
where they live and imported on first use; :func:`register_model` declares a class's type and
adds classes defined elsewhere.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from vqgen.config import from_dict, missing_fields, to_dict
from vqgen.errors import ConfigError, ConfigWarning, VqgenError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _new_temp(path: Path) -> tuple[str, int]:
    """Create an empty temp file beside ``path``; returns it and the mode the umask gave it
    (``0o666 & ~umask``; ``mkstemp`` would give 0600)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return str(tmp), os.stat(tmp).st_mode & 0o777
        except FileExistsError:
            continue
    raise VqgenError(f"cannot create a temp file beside {path}")


def make_dir(path: str | Path) -> Path:
    """``path`` as a folder, made with its parents if needed; a one-line error naming it when it
    cannot be (a file in the way, no permission, a read-only or virtual file system)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VqgenError(f"cannot create the folder {path}: {e.strerror or e}") from None
    return path


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path`` (same directory).

    The file gets the mode a plain ``open(path, "w")`` would give (``0o666 & ~umask``).
    """
    path = Path(path)
    make_dir(path.parent)
    try:
        tmp, mode = _new_temp(path)
    except OSError as e:
        raise VqgenError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        write(tmp)
        os.chmod(tmp, mode)  # a writer that replaced the file (safetensors) may have left 0600
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


def read_json_object(path: str | Path) -> dict:
    """The JSON object in ``path``; anything else (missing, not JSON, ``null``, a list) is a
    one-line ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, got {type(data).__name__ if data is not None else 'null'}")
    return data


def save_config(cfg, path: str | Path, **extra) -> None:
    """Write ``cfg`` (plus reserved ``extra`` keys such as model_type) as JSON, atomically."""
    data = dict(extra)
    data.update(to_dict(cfg))
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def config_from_file(cls, path: str | Path, data: dict | None = None):
    """Build config ``cls`` from the JSON object in ``path`` (or its already-read ``data``).

    Unknown fields and wrong types are a ConfigError naming the file and the field. A field the
    file lacks takes the class's default (files saved before the field existed still load, as
    diffusers does), with a :class:`~vqgen.errors.ConfigWarning` naming the fields, so a
    hand-edited or truncated config does not pass unnoticed.
    """
    data = read_json_object(path) if data is None else data
    try:
        cfg = from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    missing = missing_fields(type(cfg), data)
    if missing:
        warnings.warn(f"{path} has no {_short(missing)}; using the defaults", ConfigWarning, stacklevel=2)
    return cfg


def load_config(cls, path: str | Path):
    """Read a config JSON written by ``save_config`` into ``cls`` (see :func:`config_from_file`)."""
    return config_from_file(cls, path)


def _short(names, limit: int = 6) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ----------------------------------------------------------------------------- the model registry
# Built-in models by model_type: "module:Class", imported on first use (by model_class), so that
# importing vqgen (or `vqgen --help`) loads no model code. Each class declares its type with
# @register_model, which replaces the entry by the class itself.
MODELS: dict[str, str | type] = {
    "vit_vqgan": "vqgen.tokenizer.vit_vqgan:ViTVQGAN",
    "cnn_vqgan": "vqgen.tokenizer.cnn_vqgan:CNNVQGAN",
    "stylegan_discriminator": "vqgen.tokenizer.discriminator:StyleGANDiscriminator",
    "vim": "vqgen.transformer.vim:VIM",
    "parti": "vqgen.transformer.parti:Parti",
    "unified": "vqgen.transformer.unified:Unified",
    "video": "vqgen.video.model:VideoTransformer",
    "hierarchical": "vqgen.transformer.hierarchical:HierarchicalSR",
    "clip_reranker": "vqgen.rerank.clip:ClipReranker",
    "superres": "vqgen.superres.model:SuperResolution",
    "diffusion_unet": "vqgen.diffusion.model:DiffusionUNet",
}


def register_model(model_type: str):
    """Class decorator: the class is the model of ``model_type`` (sets ``cls.model_type``)."""

    def deco(cls):
        known = MODELS.get(model_type)
        if isinstance(known, type) and known.__qualname__ != cls.__qualname__:
            raise VqgenError(f"model_type {model_type!r} is already taken by {known.__qualname__}")
        cls.model_type = model_type
        MODELS[model_type] = cls
        return cls

    return deco


def model_class(model_type: str) -> type:
    """The model class registered for ``model_type`` (imported on first use)."""
    entry = MODELS.get(model_type)
    if entry is None:
        raise VqgenError(f"unknown model_type {model_type!r} (known: {', '.join(sorted(MODELS))})")
    if isinstance(entry, str):
        import importlib

        module, name = entry.split(":")
        cls = getattr(importlib.import_module(module), name)
        if getattr(cls, "model_type", None) != model_type:
            raise VqgenError(f"{entry} does not declare @register_model({model_type!r})")
        MODELS[model_type] = entry = cls
    return entry


def read_model_type(directory: str | Path) -> str:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise VqgenError(f"{directory} is not a saved model: {CONFIG_NAME} is missing")
    data = read_json_object(path)
    if not isinstance(data.get("model_type"), str):
        raise VqgenError(f"{path} has no model_type")
    return data["model_type"]


def _load_weights(model, weights: Path, device) -> None:
    """Load ``weights`` into ``model`` strictly; a mismatch names the missing, unexpected and
    mis-shaped tensors (a few of each, with counts)."""
    try:
        missing, unexpected = load_model(model, str(weights), strict=False, device=str(device))
    except SafetensorError as e:
        raise VqgenError(f"cannot load {weights}: {e}") from None
    except RuntimeError as e:  # size mismatches, one line each
        lines = [line.strip() for line in str(e).splitlines() if line.strip().startswith("size mismatch")]
        detail = "; ".join(lines[:4]) + (f" and {len(lines) - 4} more" if len(lines) > 4 else "")
        raise VqgenError(f"cannot load {weights}: {detail or str(e).strip().splitlines()[0]}") from None
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_short(missing, 5)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_short(unexpected, 5)}")
    if problems:
        raise VqgenError(f"cannot load {weights}: it does not match {type(model).__name__} "
                         f"({'; '.join(problems)})")


class PretrainedMixin:
    """Mixin for ``nn.Module`` models built from ``self.config`` (a frozen config dataclass).

    Subclasses set ``config_class`` and declare their type with ``@register_model(name)``.
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
            target = model_class(model_type) if model_type in MODELS else None
            if target is None or not issubclass(target, cls):
                raise VqgenError(f"{directory} holds a {model_type!r} model, not a {cls.__name__}")
        config = config_from_file(target.config_class, directory / CONFIG_NAME)
        model = target(config)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise VqgenError(f"{directory} has no {WEIGHTS_NAME}")
        _load_weights(model, weights, device)
        return model.to(device).eval()


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu"):
    """Load any registered model from its directory, dispatching on ``model_type``."""
    model_type = read_model_type(directory)
    if model_type not in MODELS:
        raise VqgenError(f"{directory}: unknown model_type {model_type!r}")
    return model_class(model_type).from_pretrained(directory, device=device)
