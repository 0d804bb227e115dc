"""Sharded checkpoints (torch.distributed.checkpoint): written by 2 FSDP ranks, resumed on 1 rank
with the same loss as the uninterrupted run; `vqgen export` makes one safetensors model of them."""
import json
import shutil

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from vqgen.cli import main as cli_main
from vqgen.errors import VqgenError

from tests.test_fsdp import SETS, free_port, join_group
from tests.test_train import make_codes
from tests.tolerances import EPS, assert_same_sgd_step


def _train(rank: int, world: int, port: int, codes: str, run: str) -> None:
    join_group(rank, world, port)
    from vqgen.transformer.train import train

    train(codes, run, preset="vim-tiny", steps=3, show_progress=False,
          overrides=SETS + ["train.batch_size=4", "train.ckpt_every=2", "train.log_every=1"])


def losses(run) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_two_rank_sharded_checkpoint_resumes_on_one_rank_with_the_same_loss(tmp_path, capsys):
    codes = make_codes(tmp_path / "codes")
    straight = tmp_path / "straight"
    mp.spawn(_train, args=(2, free_port(), str(codes), str(straight)), nprocs=2, join=True)
    step2 = straight / "checkpoints" / "step-0000002"
    assert sorted(p.name for p in (step2 / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (step2 / "model" / "model.safetensors").exists()  # shards only: no rank gathered the model

    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-0000003")
    shutil.rmtree(resumed / "model")
    (resumed / "checkpoints" / "latest").write_text("step-0000002\n")
    mp.spawn(_train, args=(1, free_port(), str(codes), str(resumed)), nprocs=1, join=True)

    # step 3 starts from the restored step-2 weights, on the same 8 records (4 x 2 ranks = 4 x 2
    # micro-batches): the losses differ only by float summation order (the 8 x 16 code terms of
    # the mean, and the dim- and codebook-long sums inside each term)
    a, b = losses(straight), losses(resumed)
    assert sorted(b) == [1, 2, 3]  # metrics.jsonl cut back to step 2, then step 3 once
    d, k = 64, 32
    assert abs(a[3] - b[3]) <= (8 * 16 + d + k) * EPS * abs(a[3]), (a[3], b[3])
    assert a[1] == b[1] and a[2] == b[2]

    # the step-2 weights, exported from the 2-rank shards in one process
    assert cli_main(["export", str(straight), "--step", "2", "--out", str(tmp_path / "w2")]) == 0
    assert "exported" in capsys.readouterr().out
    w2 = load_file(str(tmp_path / "w2" / "model.safetensors"))
    assert (tmp_path / "w2" / "config.json").is_file()
    one, two = (load_file(str(r / "model" / "model.safetensors")) for r in (resumed, straight))
    assert_same_sgd_step(one, two, w2, terms=8 * 16)
    assert cli_main(["export", str(tmp_path / "codes"), "--out", str(tmp_path / "x")]) == 2


def test_batch_position_moves_to_another_number_of_ranks():
    """EpochBatches keeps the records read this epoch: 2 ranks x 4 resumed on 1 rank x 4 (two
    micro-batches a step) read the same records next, step by step."""
    from vqgen.runtime import EpochBatches

    ranks = [EpochBatches(40, 4, seed=5, rank=r, world_size=2) for r in range(2)]
    its = [iter(b) for b in ranks]
    for _ in range(3):
        [next(it) for it in its]
    one = EpochBatches(40, 4, seed=5)
    one.load_state_dict(ranks[0].state_dict())
    it1 = iter(one)
    for _ in range(2):  # the rest of the epoch (5 global batches of 8) goes on from the same record
        two_ranks = sorted(x for it in its for x in next(it).tolist())
        assert sorted(next(it1).tolist() + next(it1).tolist()) == two_ranks
    bad = EpochBatches(40, 3, seed=5)
    with pytest.raises(VqgenError, match="not a whole number of batches"):
        bad.load_state_dict(ranks[0].state_dict())


def test_a_corrupt_shard_falls_back_to_the_checkpoint_before(tmp_path, capsys):
    """One process, a 1-rank FSDP group: a truncated shard file makes its checkpoint unusable and
    the run resumes from the one before, saying so (the lifecycle's fallback, sharded)."""
    from vqgen.transformer.train import train

    codes = make_codes(tmp_path / "codes")
    run = tmp_path / "run"
    sets = SETS + ["train.batch_size=8", "train.ckpt_every=2", "train.log_every=1"]
    train(codes, run, preset="vim-tiny", steps=4, overrides=sets, show_progress=False)
    shard = run / "checkpoints" / "step-0000004" / "dcp" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    shutil.rmtree(run / "model")
    res = train(codes, run, preset="vim-tiny", steps=4, overrides=sets, show_progress=False)
    assert res.step == 4
    out = capsys.readouterr().out
    assert "resuming from step-0000002: newer checkpoint step-0000004" in out and "unusable" in out
    assert sorted(losses(run)) == [1, 2, 3, 4]
