import random

import numpy as np
import pytest
import torch

from vqgen.runtime import (EpochBatches, RunLogger, latest_checkpoint, load_resume, rng_state, save_checkpoint,
                           set_rng_state)
from tests.test_io import Tiny, TinyConfig


def test_rng_round_trip(tmp_path):
    random.random(); np.random.rand(); torch.rand(1)
    state = rng_state()
    torch.save(state, tmp_path / "s.pt")
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True))
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_epoch_batches_resume_and_shards():
    full = EpochBatches(10, 2, seed=3)
    it = iter(full)
    straight = [next(it).tolist() for _ in range(7)]  # crosses an epoch boundary
    part = EpochBatches(10, 2, seed=3)
    it = iter(part)
    head = [next(it).tolist() for _ in range(3)]
    resumed = EpochBatches(10, 2, seed=3)
    resumed.load_state_dict(part.state_dict())
    it = iter(resumed)
    tail = [next(it).tolist() for _ in range(4)]
    assert head + tail == straight
    # two ranks see disjoint items that together cover an epoch's worth of batches
    ranks = [EpochBatches(8, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    seen = [x for r in ranks for b, _ in zip(r, range(2)) for x in b.tolist()]
    assert sorted(seen) == list(range(8))


def test_checkpoints_latest_and_prune(tmp_path):
    model = Tiny(TinyConfig())
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"model": model}, {"step": step}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert names == ["step-0000002", "step-0000003"]
    assert latest_checkpoint(tmp_path).name == "step-0000003"
    assert load_resume(latest_checkpoint(tmp_path))["step"] == 3


def test_failed_checkpoint_keeps_last_good(tmp_path, monkeypatch):
    model = Tiny(TinyConfig())
    save_checkpoint(tmp_path, 1, {"model": model}, {"step": 1})

    def broken(*a, **k):
        raise RuntimeError("crash while writing")

    monkeypatch.setattr(Tiny, "save_pretrained", broken)
    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path, 2, {"model": model}, {"step": 2})
    assert latest_checkpoint(tmp_path).name == "step-0000001"
    assert load_resume(latest_checkpoint(tmp_path))["step"] == 1


def test_run_logger_writes_metrics(tmp_path):
    log = RunLogger(tmp_path, tensorboard=False)
    log.log(5, {"loss": torch.tensor(1.5), "lr": 0.1})
    log.close()
    assert (tmp_path / "metrics.jsonl").read_text().strip() == '{"step": 5, "loss": 1.5, "lr": 0.1}'
