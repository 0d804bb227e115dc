"""The training loop: learning, exact resume, non-finite steps, condition dropout, CLI, DDP/FSDP."""
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from vqgen.cli import main as cli_main
from vqgen.data.codes import CodeShardWriter
from vqgen.errors import ConfigError, VqgenError
from vqgen.io import PretrainedMixin, register_model
from vqgen.transformer.base import TokenModel
from vqgen.transformer.train import step_lr, train

from tests.tolerances import assert_same_sgd_step

COLOURS = ["red", "green", "blue"]
QUIET = ["train.log_every=1", "model.dropout=0.0"]


def make_codes(out: Path, n: int = 96, tokenizer_dir=None) -> Path:
    """Structured codes: each class (and caption colour) has its own 4x4 template, half-noised."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n,), generator=g)
    templates = torch.randint(0, 16, (3, 4, 4), generator=g)
    codes = templates[labels] + 16 * torch.randint(0, 2, (n, 4, 4), generator=g)  # (n, 4, 4) < 32
    texts = [f"a {COLOURS[int(lb)]} square" for lb in labels]
    with CodeShardWriter(out, (4, 4), 32, tokenizer_dir=tokenizer_dir, shard_size=40, class_names=COLOURS) as w:
        w.add(codes, texts=texts, labels=labels.tolist())
    return out


@pytest.fixture(scope="module")
def codes_dir(tmp_path_factory):
    return make_codes(tmp_path_factory.mktemp("codes") / "codes")


def weights(run: Path, sub="model") -> dict:
    return load_file(str(run / sub / "model.safetensors"))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("preset", ["vim-tiny", "parti-tiny", "unified-tiny"])
def test_each_family_learns_below_the_unigram_baseline(codes_dir, tmp_path, preset):
    res = train(codes_dir, tmp_path / "run", preset=preset, steps=40, show_progress=False,
                overrides=QUIET + ["train.batch_size=16", "train.lr=3e-3", "train.warmup_steps=5"])
    assert res.step == 40 and res.skipped_steps == 0
    assert res.val_loss < res.unigram_val_loss - 0.3, (res.val_loss, res.unigram_val_loss)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["grid"] == [4, 4] and cfg["model"]["codebook_size"] == 32
    if preset == "vim-tiny":
        assert cfg["model"]["num_classes"] == 3
    else:
        assert (tmp_path / "run" / "model" / "tokenizer.json").is_file()
    rows = metrics(tmp_path / "run")
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(rows[0]) and rows[-1]["val_loss"] == res.val_loss
    assert list((tmp_path / "run" / "tb").iterdir())


def crash_after(run: Path, step: int) -> None:
    """Make RUN look as if the process died right after writing checkpoint ``step``."""
    ckpts = run / "checkpoints"
    for p in ckpts.glob("step-*"):
        if int(p.name.split("-")[1]) > step:
            shutil.rmtree(p)
    (ckpts / "latest").write_text(f"step-{step:07d}\n")
    shutil.rmtree(run / "model")


@pytest.mark.parametrize("preset", ["vim-tiny", "unified-tiny"])
def test_resume_is_bit_identical(codes_dir, tmp_path, preset):
    sets = ["train.batch_size=8", "train.ckpt_every=4", "model.dropout=0.1", "train.cond_dropout=0.3",
            "train.ema_decay=0.5"]
    straight = tmp_path / "a"
    train(codes_dir, straight, preset=preset, steps=12, overrides=sets, show_progress=False)
    resumed = tmp_path / "b"
    shutil.copytree(straight, resumed)
    crash_after(resumed, 8)
    res = train(codes_dir, resumed, steps=12, show_progress=False)  # no preset: continues RUN
    assert res.step == 12
    for sub in ("model", "checkpoints/step-0000012/model"):
        a, b = weights(straight, sub), weights(resumed, sub)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    # the final model is the EMA, which differs from the raw weights
    raw = weights(straight, "checkpoints/step-0000012/model")
    assert any(not torch.equal(raw[k], weights(straight)[k]) for k in raw)


def test_resume_refuses_a_different_model(codes_dir, tmp_path):
    train(codes_dir, tmp_path / "r", preset="vim-tiny", steps=2, overrides=QUIET, show_progress=False)
    with pytest.raises(ConfigError, match="model.depth=2, this command asks for 3"):
        train(codes_dir, tmp_path / "r", steps=4, overrides=["model.depth=3"], show_progress=False)


def initial_weights(run: Path) -> dict:
    """The weights a run started from: its saved config's model, built as the trainer builds it
    (on the meta device and materialised with the shard-invariant init under FSDP)."""
    from vqgen import distributed as fsdp
    from vqgen.io import load_config
    from vqgen.runtime import seed_everything
    from vqgen.transformer import build_model
    from vqgen.transformer.config import RunConfig
    from vqgen.transformer.train import LossModule, init_token_model

    cfg = load_config(RunConfig, run / "config.json")
    seed_everything(cfg.train.seed)
    if not cfg.train.fsdp:
        return build_model(cfg.model).state_dict()
    model = fsdp.on_meta(lambda: build_model(cfg.model))
    fsdp.materialize(LossModule(model), "cpu", cfg.train.seed, lambda _: init_token_model(model))
    return model.state_dict()


# one plain SGD step without clipping: the update is linear in the gradient (see tests/tolerances.py)
LINEAR = ["train.optimizer=sgd", "train.grad_clip=0", "train.lr=0.5", "train.warmup_steps=0",
          "train.cond_dropout=0"]


def test_gradient_accumulation_matches_the_larger_batch(codes_dir, tmp_path):
    train(codes_dir, tmp_path / "big", preset="vim-tiny", steps=1, show_progress=False,
          overrides=QUIET + LINEAR + ["train.batch_size=8"])
    train(codes_dir, tmp_path / "acc", preset="vim-tiny", steps=1, show_progress=False,
          overrides=QUIET + LINEAR + ["train.batch_size=4", "train.grad_accum=2"])
    assert_same_sgd_step(weights(tmp_path / "big"), weights(tmp_path / "acc"), initial_weights(tmp_path / "big"),
                         terms=8 * 16)  # 8 rows of 4x4 codes


def test_a_non_finite_step_is_skipped_and_counted(codes_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = TokenModel.compute_loss

    def flaky(self, codes, cond=None):
        calls["n"] += 1
        loss, m = original(self, codes, cond)
        return (loss * float("nan"), m) if calls["n"] == 3 else (loss, m)

    monkeypatch.setattr(TokenModel, "compute_loss", flaky)
    res = train(codes_dir, tmp_path / "r", preset="vim-tiny", steps=5, overrides=QUIET + ["train.ckpt_every=3"],
                show_progress=False)
    assert res.skipped_steps == 1
    # step 3 was the bad one: no checkpoint was written for it
    assert not (tmp_path / "r" / "checkpoints" / "step-0000003").exists()
    assert metrics(tmp_path / "r")[-2]["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "r").values())


def test_a_persistent_non_finite_loss_stops_the_run_without_checkpoints(codes_dir, tmp_path, monkeypatch):
    original = TokenModel.compute_loss
    monkeypatch.setattr(TokenModel, "compute_loss",
                        lambda self, codes, cond=None: (original(self, codes, cond)[0] * float("inf"), {}))
    with pytest.raises(VqgenError, match="not finite for 3 steps"):
        train(codes_dir, tmp_path / "r", preset="vim-tiny", steps=10, show_progress=False,
              overrides=QUIET + ["train.max_bad_steps=3", "train.ckpt_every=1"])
    assert not list((tmp_path / "r").glob("checkpoints/step-*")) and not (tmp_path / "r" / "model").exists()


def test_condition_dropout_reaches_the_model_at_the_configured_rate(codes_dir, tmp_path, monkeypatch):
    seen = []
    original = TokenModel.compute_loss

    def spy(self, codes, cond=None):
        if self.training:
            seen.append(cond.class_ids.clone())
        return original(self, codes, cond)

    monkeypatch.setattr(TokenModel, "compute_loss", spy)
    train(codes_dir, tmp_path / "r", preset="vim-tiny", steps=40, show_progress=False,
          overrides=QUIET + ["train.cond_dropout=0.25", "train.batch_size=16"])
    ids = torch.cat(seen)
    rate = (ids == -1).float().mean().item()
    assert abs(rate - 0.25) < 0.06, rate  # 640 draws: 3 sigma ~ 0.05


def test_lr_schedule_warmup_and_decay():
    from vqgen.transformer.config import TrainConfig

    def lr_factor(step, t):
        return step_lr(step, t) / t.lr

    cos = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cos) == pytest.approx(0.1) and lr_factor(9, cos) == pytest.approx(1.0)
    assert lr_factor(10, cos) == pytest.approx(1.0) and lr_factor(100, cos) == pytest.approx(0.1)
    exp = TrainConfig(steps=100, warmup_steps=10, schedule="exponential", decay_start=50, min_lr_ratio=0.025)
    assert lr_factor(40, exp) == 1.0 and lr_factor(75, exp) == pytest.approx(0.025 ** 0.5)


def test_adafactor_and_bf16_autocast_run(codes_dir, tmp_path):
    res = train(codes_dir, tmp_path / "r", preset="parti-tiny", steps=3, show_progress=False,
                overrides=QUIET + ["train.optimizer=adafactor", "train.precision=bf16", "model.norm=sandwich"])
    assert res.skipped_steps == 0 and torch.isfinite(torch.tensor(res.val_loss))


# -- sample grids decoded with the codes' image tokenizer --------------------------------------
@dataclass(frozen=True)
class _GridDecoderConfig:
    patch: int = 2


@register_model("test-grid-decoder")
class _GridDecoder(nn.Module, PretrainedMixin):
    """A stand-in image tokenizer: code k → a flat patch of grey level k / 32."""

    config_class = _GridDecoderConfig

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.scale = nn.Parameter(torch.tensor(1.0 / 32))

    def decode(self, codes):
        img = (codes.float() * self.scale)[:, None].repeat(1, 3, 1, 1)  # (B, 3, h, w)
        return img.repeat_interleave(self.config.patch, 2).repeat_interleave(self.config.patch, 3)


def test_sample_grids_are_decoded_with_the_image_tokenizer(tmp_path, capsys):
    _GridDecoder(_GridDecoderConfig()).save_pretrained(tmp_path / "tok")
    codes = make_codes(tmp_path / "codes", n=40, tokenizer_dir=tmp_path / "tok")
    train(codes, tmp_path / "r", preset="vim-tiny", steps=4, show_progress=False,
          overrides=QUIET + ["train.sample_every=2", "train.sample_rows=2", "train.batch_size=8"])
    pngs = sorted(p.name for p in (tmp_path / "r" / "samples").glob("*.png"))
    assert pngs == ["samples-000002.png", "samples-000004.png"]
    from PIL import Image

    assert Image.open(tmp_path / "r" / "samples" / pngs[0]).size == (2 * 8, 2 * 8)
    shutil.rmtree(tmp_path / "tok")
    train(codes, tmp_path / "r2", preset="vim-tiny", steps=1, show_progress=False, overrides=QUIET)
    assert "no sample grids" in capsys.readouterr().out


# -- command line ----------------------------------------------------------------------------
def test_cli_train_then_probe(codes_dir, tmp_path, capsys):
    run = tmp_path / "run"
    rc = cli_main(["train", "--codes", str(codes_dir), "--preset", "vim-tiny", "--out", str(run), "--steps", "30",
                   "--no-progress", "--set", "train.lr=3e-3", "--set", "train.cond_dropout=0.5"])
    assert rc == 0 and "unigram baseline" in capsys.readouterr().out
    assert cli_main(["probe", str(run), "--data", str(codes_dir), "--layer", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["layer"] == 1 and out["num_classes"] == 3 and out["accuracy"] > 0.8  # 3 clean templates
    assert cli_main(["probe", str(run), "--data", str(codes_dir), "--layer", "9"]) == 2
    assert "layer must be in 1..2" in capsys.readouterr().err
    assert cli_main(["train", "--codes", str(codes_dir), "--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown transformer preset 'nope'" in capsys.readouterr().err
    assert cli_main(["train", "--codes", str(tmp_path), "--preset", "vim-tiny", "--out", str(tmp_path / "y")]) == 2
    assert "not a code directory" in capsys.readouterr().err
    assert cli_main(["train", "--codes", str(codes_dir), "--preset", "vim-tiny", "--out", str(tmp_path / "z"),
                     "--set", "train.condition=text"]) == 2
    assert "does not suit" in capsys.readouterr().err


# -- distributed: 2 CPU processes on gloo ------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str]) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "vqgen"] + args
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


DIST = [a for s in LINEAR for a in ("--set", s)] + ["--set", "model.dropout=0", "--no-progress"]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_gloo_processes_give_the_same_update_as_one_with_the_doubled_batch(codes_dir, tmp_path, mode):
    from vqgen.text.bpe import TextTokenizer

    # BPE training is not deterministic across processes: both runs share one tokenizer
    tok = TextTokenizer.train([f"a {c} square" for c in COLOURS], vocab_size=64).save(tmp_path / "tokenizer.json")
    dist_args = DIST + ["--text-tokenizer", str(tok)]
    extra = ["--set", "train.fsdp=true"] if mode == "fsdp" else []  # FSDP: one process is a 1-rank FSDP run
    one = tmp_path / "one"
    assert cli_main(["train", "--codes", str(codes_dir), "--preset", "parti-tiny", "--out", str(one), "--steps", "1",
                     "--set", "train.batch_size=8"] + dist_args + extra) == 0
    two = tmp_path / "two"
    _torchrun(["train", "--codes", str(codes_dir), "--preset", "parti-tiny", "--out", str(two), "--steps", "1",
               "--set", "train.batch_size=4"] + dist_args + extra)
    assert_same_sgd_step(weights(one), weights(two), initial_weights(one), terms=8 * 16)


# -- streamed code shards (WebDataset) -----------------------------------------------------------
def test_streamed_code_shards_train_and_resume_bit_identically(codes_dir, tmp_path):
    from vqgen.data.stream import write_code_shards

    write_code_shards(codes_dir, tmp_path / "tars", shard_size=20)
    source = f"file:{tmp_path / 'tars'}/codes-{{00000..00004}}.tar"
    sets = QUIET + ["train.stream_workers=0", "train.shuffle_buffer=16", "train.ckpt_every=4", "train.batch_size=8",
                    "model.codebook_size=32", "train.cond_dropout=0.3"]
    straight = tmp_path / "a"
    res = train(source, straight, preset="vim-tiny", steps=12, overrides=sets, show_progress=False)
    assert res.step == 12 and json.loads((straight / "config.json").read_text())["model"]["num_classes"] == 3
    resumed = tmp_path / "b"
    shutil.copytree(straight, resumed)
    crash_after(resumed, 4)
    train(source, resumed, steps=12, show_progress=False)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the stream went on at the very next sample
    data = json.loads((straight / "data.json").read_text())
    assert data["records"] is not None and data["skipped_total"] == 0  # 12 x 8 > one pass of ~91 records
