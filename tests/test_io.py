from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vqgen.errors import VqgenError
from vqgen.io import PretrainedMixin, atomic_write_text, load_pretrained, register_model


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
    with pytest.raises(VqgenError, match="cannot load"):
        Tiny.from_pretrained(tmp_path / "m")
    save_file({**state, "extra": torch.zeros(1)}, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(VqgenError, match="cannot load"):
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
