from dataclasses import dataclass, field
from typing import Literal

import pytest

from vqgen.config import apply_overrides, from_dict, get_preset, register_preset, require, to_dict
from vqgen.errors import ConfigError
from vqgen.io import load_config, save_config


@dataclass(frozen=True)
class Inner:
    size: int = 4
    rate: float = 0.5
    kind: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    flag: bool = False
    dims: tuple[int, ...] = (1, 2)
    path: str | None = None
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        require(self.inner.size > 0, "inner.size", "must be positive")


@register_preset("test-outer", "small")
def _small():
    return Outer(name="small", inner=Inner(size=2))


def test_preset_and_overrides():
    cfg = get_preset("test-outer", "small")
    cfg = apply_overrides(cfg, ["inner.size=8", "flag=true", "dims=3,4,5", "path=/tmp/x", "inner.kind=b",
                                "inner.rate=1"])
    assert cfg.inner.size == 8 and cfg.flag is True and cfg.dims == (3, 4, 5)
    assert cfg.path == "/tmp/x" and cfg.inner.kind == "b" and cfg.inner.rate == 1.0
    assert apply_overrides(cfg, ["path=none"]).path is None


@pytest.mark.parametrize("override, needle", [
    ("inner.sise=3", "inner.sise"),
    ("nope=1", "nope"),
    ("inner.size=abc", "inner.size"),
    ("flag=maybe", "flag"),
    ("inner.kind=c", "inner.kind"),
    ("inner.size=0", "inner.size"),
    ("name.sub=1", "name"),
    ("noequals", "field.sub=value"),
])
def test_bad_override_names_the_field(override, needle):
    with pytest.raises(ConfigError) as e:
        apply_overrides(Outer(), [override])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown test-outer preset 'huge'"):
        get_preset("test-outer", "huge")


def test_json_round_trip_and_strictness(tmp_path):
    cfg = Outer(name="n", dims=(7,), inner=Inner(rate=0.25))
    save_config(cfg, tmp_path / "config.json", model_type="outer")
    assert load_config(Outer, tmp_path / "config.json") == cfg
    with pytest.raises(ConfigError, match="'inner.extra'"):
        from_dict(Outer, {**to_dict(cfg), "inner": {"extra": 1}})
    with pytest.raises(ConfigError, match="'flag' must be bool"):
        from_dict(Outer, {"flag": 1})
    with pytest.raises(ConfigError, match="'inner.size' must be int"):
        from_dict(Outer, {"inner": {"size": 2.5}})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(Outer, tmp_path / "bad.json")


def test_config_module_touches_no_files_and_imports_no_io():
    """config.py sits below io.py (no cycle): reading and writing config files is vqgen.io's job."""
    import subprocess
    import sys

    code = "import sys, vqgen.config\nprint('vqgen.io' in sys.modules, hasattr(vqgen.config, 'save_config'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@dataclass(frozen=True)
class Animal:
    kind: str = "cat"
    legs: int = 4

    @classmethod
    def config_for(cls, data):
        return {"cat": Cat, "bird": Bird}[data.get("kind", "cat")]


@dataclass(frozen=True)
class Cat(Animal):
    legacy_keys = ("wings",)  # an older layout wrote it for every animal
    purrs: bool = True


@dataclass(frozen=True)
class Bird(Animal):
    kind: str = "bird"
    legs: int = 2
    wings: int = 2


@dataclass(frozen=True)
class Zoo:
    animal: Animal = field(default_factory=Cat)


def test_a_base_config_builds_the_subclass_its_data_names():
    from vqgen.config import missing_fields

    assert from_dict(Zoo, {"animal": {"kind": "bird", "wings": 4}}) == Zoo(Bird(wings=4))
    assert from_dict(Zoo, {"animal": {"kind": "cat", "wings": 2, "purrs": False}}) == Zoo(Cat(purrs=False))
    with pytest.raises(ConfigError, match="unknown config field 'animal.purrs' for Bird"):
        from_dict(Zoo, {"animal": {"kind": "bird", "purrs": True}})
    moved = apply_overrides(Zoo(), ["animal.kind=bird", "animal.wings=6"])
    assert moved == Zoo(Bird(wings=6, legs=4))  # shared fields carry over to the new class
    assert missing_fields(Zoo, {"animal": {"kind": "bird", "legs": 2}}) == ["animal.wings"]
    assert missing_fields(Outer, {"inner": {}}) == ["name", "flag", "dims", "path", "inner.size", "inner.rate",
                                                   "inner.kind"]


@dataclass(frozen=True)
class Sized:
    size: int = 1

    def __post_init__(self):
        require(self.size >= 1, "size", "must be >= 1")  # named relative to itself


@dataclass(frozen=True)
class Holder:
    part: Sized = field(default_factory=Sized)


def test_an_override_rejected_by_a_nested_check_names_the_whole_field():
    with pytest.raises(ConfigError, match=r"^config field 'part.size': must be >= 1$"):
        apply_overrides(Holder(), ["part.size=0"])
    with pytest.raises(ConfigError, match=r"^config field 'inner.size': must be positive$"):
        apply_overrides(Outer(), ["inner.size=0"])  # already whole: unchanged
