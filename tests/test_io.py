import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vqgen.errors import ConfigError, ConfigWarning, VqgenError
from vqgen.io import (MODELS, PretrainedMixin, atomic_torch_save, atomic_write_text, load_config, load_pretrained,
                      model_class, register_model, resolve_inside, save_config)


@dataclass(frozen=True)
class TinyConfig:
    width: int = 4
    tied: bool = True


@register_model("test_tiny")
class Tiny(PretrainedMixin, torch.nn.Module):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.embed = torch.nn.Embedding(5, config.width)
        self.head = torch.nn.Linear(config.width, 5, bias=False)
        if config.tied:
            self.head.weight = self.embed.weight

    def forward(self, x):
        return self.head(self.embed(x))


def test_save_load_identical(tmp_path):
    torch.manual_seed(0)
    model = Tiny(TinyConfig(width=6))
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = Tiny.from_pretrained(tmp_path / "m")
    x = torch.tensor([[0, 3, 4]])
    assert loaded.config == model.config
    assert torch.equal(loaded(x), model(x))
    assert loaded.head.weight is loaded.embed.weight  # ties survive
    assert isinstance(load_pretrained(tmp_path / "m"), Tiny)


def test_strict_loading(tmp_path):
    model = Tiny(TinyConfig(tied=False))
    model.save_pretrained(tmp_path / "m")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_file({"embed.weight": state["embed.weight"]}, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(VqgenError, match=r"cannot load .*1 missing tensor\(s\): 'head.weight'"):
        Tiny.from_pretrained(tmp_path / "m")
    save_file({**state, "extra": torch.zeros(1)}, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(VqgenError, match=r"1 unexpected tensor\(s\): 'extra'"):
        Tiny.from_pretrained(tmp_path / "m")
    with pytest.raises(VqgenError, match="config.json is missing"):
        Tiny.from_pretrained(tmp_path / "nowhere")


def test_atomic_write_keeps_old_file_on_crash(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "good")

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "bad")
    monkeypatch.undo()
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left behind


def test_state_dict_mismatch_lists_every_kind_in_one_line(tmp_path):
    """Not cut to the first line of torch's message: missing, unexpected (a few, with counts) and shapes."""
    model = Tiny(TinyConfig(tied=False))
    model.save_pretrained(tmp_path / "m")
    extra = {f"junk{i}": torch.zeros(1) for i in range(8)}
    save_file({"embed.weight": model.embed.weight.detach().clone(), **extra}, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(VqgenError) as err:
        Tiny.from_pretrained(tmp_path / "m")
    msg = str(err.value)
    assert "\n" not in msg
    assert "1 missing tensor(s): 'head.weight'" in msg and "8 unexpected tensor(s)" in msg and "and 3 more" in msg
    save_config(TinyConfig(width=7, tied=False), tmp_path / "m" / "config.json", model_type="test_tiny")
    model.save_pretrained(tmp_path / "w")
    (tmp_path / "m" / "model.safetensors").write_bytes((tmp_path / "w" / "model.safetensors").read_bytes())
    with pytest.raises(VqgenError, match="size mismatch for embed.weight.*; size mismatch for head.weight") as err:
        Tiny.from_pretrained(tmp_path / "m")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["null", "[1, 2]", "3", "{not json"])
def test_config_json_that_is_not_an_object_is_a_one_line_error_naming_the_file(tmp_path, text):
    Tiny(TinyConfig()).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(text)
    for load in (load_pretrained, Tiny.from_pretrained):
        with pytest.raises(VqgenError) as err:
            load(tmp_path / "m")
        assert str(tmp_path / "m" / "config.json") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="config.json"):
        load_config(TinyConfig, tmp_path / "m" / "config.json")


def test_config_json_missing_a_field_loads_with_the_default_and_warns(tmp_path):
    torch.manual_seed(0)
    Tiny(TinyConfig(width=4, tied=True)).save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    data = json.loads(path.read_text())
    del data["tied"]
    path.write_text(json.dumps(data))
    with pytest.warns(ConfigWarning, match=r"config.json has no 'tied'; using the defaults"):
        model = load_pretrained(tmp_path / "m")
    assert model.config == TinyConfig(width=4, tied=True)
    data["tied"] = "yes"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"config.json: config field 'tied' must be bool"):
        load_pretrained(tmp_path / "m")


def test_cli_prints_a_config_warning_as_one_line(tmp_path, capsys):
    import warnings

    from vqgen.cli import _format_warning

    line = _format_warning("m/config.json has no 'x'; using the defaults", ConfigWarning, "f.py", 1)
    assert line == "vqgen: warning: m/config.json has no 'x'; using the defaults\n"
    assert "UserWarning" in _format_warning("other", UserWarning, "f.py", 1)
    assert warnings.formatwarning is not _format_warning or True


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_torch_save({"x": 1}, tmp_path / "b.pt")
        Tiny(TinyConfig()).save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    for path in [tmp_path / "a.txt", tmp_path / "b.pt", tmp_path / "m" / "config.json",
                 tmp_path / "m" / "model.safetensors"]:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_resolve_inside_refuses_paths_that_leave_the_folder(tmp_path):
    (tmp_path / "pipe" / "transformer").mkdir(parents=True)
    (tmp_path / "runs" / "A" / "model").mkdir(parents=True)
    assert resolve_inside(tmp_path / "pipe", "transformer") == (tmp_path / "pipe" / "transformer").resolve()
    (tmp_path / "pipe" / "out").symlink_to(tmp_path / "runs")
    for sub in ["../runs/A/model", "../../runs/A/model", str(tmp_path / "runs"), "out/A/model", "transformer/../.."]:
        with pytest.raises(VqgenError, match="outside"):
            resolve_inside(tmp_path / "pipe", sub)


def test_one_registry_finds_every_model_by_its_type_lazily():
    from vqgen.transformer import TransformerConfig, build_model

    assert isinstance(MODELS["vim"], (str, type))
    assert model_class("vim").__name__ == "VIM" and model_class("vim").model_type == "vim"
    assert model_class("clip_reranker").__name__ == "ClipReranker"
    assert type(build_model(TransformerConfig(family="parti", dim=8, heads=2, depth=1, mlp_dim=8, grid=(2, 2),
                                              codebook_size=4))).__name__ == "Parti"
    assert model_class("test_tiny") is Tiny
    with pytest.raises(VqgenError, match="unknown model_type 'nope'"):
        model_class("nope")
    with pytest.raises(VqgenError, match="already taken"):
        register_model("test_tiny")(type("Other", (), {}))


@pytest.mark.parametrize("module", ["vqgen.data.cli", "vqgen.shapes.cli", "vqgen.eval.cli", "vqgen.serve.cli", "vqgen.tokenizer.cli",
                                    "vqgen.transformer.cli", "vqgen.rerank.cli", "vqgen.superres.cli"])
def test_command_parsers_import_no_torch(module):
    """What `vqgen --help` imports per command: the parser and nothing heavy (no torch, no model code)."""
    import subprocess
    import sys

    code = (f"import sys, argparse, importlib\nsub = argparse.ArgumentParser().add_subparsers()\n"
            f"importlib.import_module({module!r}).register(sub)\n"
            "print(sorted(m for m in ('torch', 'vqgen.io', 'vqgen.transformer.base') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
