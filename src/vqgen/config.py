"""Frozen-dataclass configs: presets by name, overrides by field name, strict JSON round trips.

A config class is a ``@dataclass(frozen=True)`` whose fields are ``int``, ``float``, ``bool``,
``str``, ``Literal[...]``, ``X | None``, ``tuple[X, ...]`` or another config dataclass.
Value checks belong in the class's ``__post_init__`` (raise ``ConfigError`` naming the field).

    @register_preset("tokenizer", "tiny")
    def _tiny(): return TokenizerConfig(width=32, depth=1)

    cfg = get_preset("tokenizer", "tiny")
    cfg = apply_overrides(cfg, ["quantizer.codebook_size=64", "depth=2"])

A base config may stand for a family of configs: a classmethod ``config_for(data) -> type`` picks
the subclass a dict describes (e.g. by its ``family``), and ``from_dict`` and overrides follow it.
``legacy_keys`` (a class attribute) names keys older files may carry that the class no longer
has; they are dropped on load. ``quiet_defaults`` names fields added later whose defaults rebuild
what older files describe: ``missing_fields`` does not report them. This module touches no files: ``vqgen.io`` reads and writes them
(``save_config``, ``load_config``).
"""
from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from typing import Any, Callable, Literal, TypeVar, Union, get_args, get_origin

from vqgen.errors import ConfigError

C = TypeVar("C")

# Keys that config.json may carry beside the fields (written by vqgen.io); ignored on load.
RESERVED_KEYS = ("model_type", "vqgen_version")

_PRESETS: dict[str, dict[str, Callable[[], Any]]] = {}


def register_preset(family: str, name: str):
    """Decorator: register a zero-argument function returning a config as preset ``family/name``."""

    def deco(fn: Callable[[], Any]):
        _PRESETS.setdefault(family, {})[name] = fn
        return fn

    return deco


def preset_names(family: str) -> list[str]:
    """Names of the presets registered for ``family``, in registration order."""
    return list(_PRESETS.get(family, {}))


def get_preset(family: str, name: str):
    """Return a fresh config for preset ``family/name``; unknown names are a ConfigError."""
    presets = _PRESETS.get(family, {})
    if name not in presets:
        known = ", ".join(presets) or "none"
        raise ConfigError(f"unknown {family} preset {name!r} (known: {known})")
    return presets[name]()


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_optional(tp) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _type_name(tp) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check (and where lossless, convert) a JSON-like ``value`` to type ``tp``."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config field {name!r} must be {_type_name(tp)}, got null")
    tp = inner
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config field {name!r} must be an object ({tp.__name__}), got {value!r}")
        return from_dict(tp, value, prefix=f"{name}.")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"config field {name!r} must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field {name!r} must be a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        return tuple(_coerce(v, item_tp, f"{name}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"config field {name!r} has unsupported type {_type_name(tp)}")
    raise ConfigError(f"config field {name!r} must be {_type_name(tp)}, got {value!r}")


def concrete_class(cls: type, data: dict) -> type:
    """The config class ``data`` describes: ``cls`` itself, or the subclass its ``config_for`` picks."""
    pick = getattr(cls, "config_for", None)
    return pick(data) if pick is not None else cls


def from_dict(cls: type[C], data: dict, prefix: str = "") -> C:
    """Build config ``cls`` from a dict, strictly: unknown keys and wrong types name the field.

    Missing keys take the class's defaults (``missing_fields`` lists them; ``vqgen.io`` warns).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"config {prefix or cls.__name__} must be an object, got {data!r}")
    cls = concrete_class(cls, data)
    types_ = _field_types(cls)
    ignored = set(RESERVED_KEYS) | set(getattr(cls, "legacy_keys", ()))
    unknown = [k for k in data if k not in types_ and k not in ignored]
    if unknown:
        raise ConfigError(f"unknown config field {prefix + unknown[0]!r} for {cls.__name__}")
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in data.items() if k in types_}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without default is missing
        raise ConfigError(f"config {cls.__name__}: {e}") from None


def missing_fields(cls: type, data: dict, prefix: str = "") -> list[str]:
    """Fields of config ``cls`` (nested ones dotted) that ``data`` does not give, except the
    class's ``quiet_defaults``."""
    cls = concrete_class(cls, data)
    out = []
    for name, tp in _field_types(cls).items():
        if name not in data:
            if name not in getattr(cls, "quiet_defaults", ()):
                out.append(prefix + name)
            continue
        inner = _is_optional(tp)[1]
        if dataclasses.is_dataclass(inner) and isinstance(data[name], dict):
            out += missing_fields(inner, data[name], f"{prefix}{name}.")
    return out


def to_dict(cfg) -> dict:
    """A JSON-ready dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _parse_scalar(text: str, tp: Any, name: str) -> Any:
    """Parse a command-line string into a JSON-like value for type ``tp``."""
    optional, inner = _is_optional(tp)
    if optional and text.lower() in ("none", "null"):
        return None
    tp = inner
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        for c in choices:
            if str(c) == text:
                return c
        raise ConfigError(f"config field {name!r} must be one of {list(choices)}, got {text!r}")
    if origin in (tuple, list):
        text = text.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                raise ConfigError(f"config field {name!r}: cannot parse list {text!r}") from None
        item_tp = (get_args(tp) or (str,))[0]
        return [_parse_scalar(t.strip(), item_tp, name) for t in text.split(",") if t.strip()]
    if tp is bool:
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"config field {name!r} must be bool (true/false), got {text!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"config field {name!r} must be int, got {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"config field {name!r} must be float, got {text!r}") from None
    if tp is str or tp is Any:
        return text
    raise ConfigError(f"config field {name!r} cannot be set from the command line")


def _set_path(cfg, path: list[str], raw: str, full: str):
    types_ = _field_types(type(cfg))
    head = path[0]
    if head not in types_:
        raise ConfigError(f"unknown config field {full!r} for {type(cfg).__name__}")
    tp = types_[head]
    if len(path) > 1:
        child = getattr(cfg, head)
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"config field {'.'.join(full.split('.')[:-len(path) + 1])!r} has no sub-fields")
        return dataclasses.replace(cfg, **{head: _set_path(child, path[1:], raw, full)})
    value = _coerce(_parse_scalar(raw, tp, full), tp, full)
    data = dict(to_dict(cfg), **{head: to_dict(value) if dataclasses.is_dataclass(value) else value})
    target = concrete_class(type(cfg), data)
    if target is not type(cfg):  # e.g. model.family=parti turns a VIM config into a Parti one
        keep = _field_types(target)
        return from_dict(target, {k: v for k, v in data.items() if k in keep})
    try:
        return dataclasses.replace(cfg, **{head: value})
    except ConfigError as e:
        raise _qualified(e, type(cfg), full[: len(full) - len(head)]) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config field {full!r}: {e}") from None


def _qualified(err: ConfigError, cls: type, prefix: str) -> ConfigError:
    """``err`` with the field it names made whole (``'lr'`` -> ``'optim.lr'``) when a nested
    config's own check named one of its fields relative to itself."""
    m = re.match(r"config field '([^']+)'", str(err))
    if not prefix or not m or m.group(1).split(".")[0] not in _field_types(cls):
        return err
    return ConfigError(f"config field {prefix + m.group(1)!r}{str(err)[m.end():]}")


def apply_overrides(cfg: C, overrides: list[str] | None) -> C:
    """Return ``cfg`` with ``field.sub=value`` overrides applied (validated, one error per bad one)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like field.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has no field name")
        cfg = _set_path(cfg, key.split("."), raw, key)
    return cfg


def require(cond: bool, field: str, message: str) -> None:
    """Raise ConfigError naming ``field`` when ``cond`` is false (for ``__post_init__`` checks)."""
    if not cond:
        raise ConfigError(f"config field {field!r}: {message}", field)
