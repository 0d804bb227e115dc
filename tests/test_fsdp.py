"""FSDP2 with a model built on the meta device (gloo, CPU): 1 and 2 ranks start from the same
weights and stay equal for a few SGD steps; a model on meta holds no parameter memory."""
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.test_train import make_codes
from tests.tolerances import EPS, assert_same_sgd_step, sgd_tolerance

STEPS = 3
# plain SGD, no clipping, no dropout: each update is linear in the gradient (tests/tolerances.py)
SETS = ["train.fsdp=true", "train.optimizer=sgd", "train.grad_clip=0", "train.lr=0.1", "train.warmup_steps=0",
        "train.cond_dropout=0", "model.dropout=0", "train.val_batches=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank: int, world: int, port: int) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)


def _trajectory(rank: int, world: int, port: int, codes: str, out: str) -> None:
    """Weights (gathered on rank 0) before and after each of STEPS steps of a global batch of 8."""
    join_group(rank, world, port)
    from vqgen.runtime import cleanup_distributed, init_distributed
    from vqgen.transformer.train import _full_state, build_run, prepare, resolve_config, train_step

    run_dir = Path(out) / f"run{world}"
    cfg, _ = resolve_config(run_dir, "vim-tiny", SETS + [f"train.batch_size={8 // world}"], STEPS)
    env = init_distributed(cfg.train.device, group=True)
    cfg, data, _, tok = prepare(cfg, codes, run_dir, False)
    run = build_run(cfg, env, run_dir, tok, len(data.train_idx))

    def gathered() -> dict:  # copies: on one rank the gathered tensors are the parameters themselves
        return {k: v.clone() for k, v in _full_state(run).items()}

    states, losses, norms, batches = [gathered()], [], [], iter(run.batches)
    for _ in range(STEPS):
        row, ok, _ = train_step(run, data, batches, env.device)
        assert ok
        losses.append(row["loss"])
        norms.append(row["grad_norm"])
        states.append(gathered())
    if rank == 0:
        torch.save({"states": states, "losses": losses, "grad_norms": norms}, Path(out) / f"traj{world}.pt")
    cleanup_distributed()


def trajectory_bounds(states: list[dict], terms: int) -> list[float]:
    """How far (2-norm over all n weights) two SGD trajectories from the same weights may be apart
    after each step.

    Each step adds at most ``r_i`` per weight (float reordering, :func:`sgd_tolerance`), so at
    most ``sqrt(n) * r_i`` in 2-norm; the map w -> w - lr * grad(w) stretches a difference by at
    most ``|I - lr H| <= 1 + lr |H| <= 3`` while SGD is stable (lr |H| <= 2). So after k steps
    ``|a_k - b_k|_2 <= sqrt(n) * sum_i 3^(k-1-i) r_i``, which also bounds the max-norm."""
    n = sum(v.numel() for v in states[0].values())
    r = [max(sgd_tolerance(a[name], b[name], terms) for name in a) for a, b in zip(states, states[1:])]
    return [math.sqrt(n) * sum(3 ** (k - 1 - i) * r[i] for i in range(k)) for k in range(len(states))]


def test_one_and_two_ranks_start_equal_and_stay_equal_for_sgd_steps(tmp_path):
    codes = make_codes(tmp_path / "codes")
    for world in (1, 2):
        mp.spawn(_trajectory, args=(world, free_port(), str(codes), str(tmp_path)), nprocs=world, join=True)
    one, two = (torch.load(tmp_path / f"traj{w}.pt", weights_only=True) for w in (1, 2))
    a, b = one["states"], two["states"]
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])  # bit-identical start
    terms = 8 * 16  # 8 records of 4x4 codes in each global batch
    assert_same_sgd_step(a[1], b[1], a[0], terms)  # the first step: the one-step bound, tensor by tensor
    bounds = trajectory_bounds(a, terms)
    drift = max((a[-1][k].double() - b[-1][k].double()).abs().max().item() for k in a[0])
    moved = max((a[-1][k].double() - a[0][k].double()).abs().max().item() for k in a[0])
    # equal within the bound, and the bound is an order of magnitude below what the steps changed
    # (a wrong data split or init differs by about the update itself)
    assert drift <= bounds[-1] < moved / 10, (drift, bounds[-1], moved)
    assert one["losses"][-1] < one["losses"][0]  # a stable descent (the bound assumes SGD is stable)
    for i, (la, lb, g) in enumerate(zip(one["losses"], two["losses"], one["grad_norms"])):
        # step i+1's loss is computed at weights at most bounds[i] apart (|dL| <= |grad L| |dw|), its
        # mean reordered over the 8 x 16 codes and the dim-64 / 32-code sums inside each term
        assert abs(la - lb) <= (terms + 64 + 32) * EPS * abs(la) + g * bounds[i], (i, la, lb)


def test_the_shard_invariant_init_follows_each_familys_constructor():
    """The meta-device init (init_token_model) gives what the constructor gives: the same
    constants, and for random tensors the same spread (std within 5 standard errors)."""
    from vqgen import distributed as fsdp
    from vqgen.config import get_preset
    from vqgen.transformer import build_model
    from vqgen.transformer.train import init_token_model

    for preset in ("vim-tiny", "parti-tiny", "unified-tiny"):
        cfg = get_preset("transformer", preset).model
        ref = build_model(cfg).state_dict()
        model = fsdp.on_meta(lambda: build_model(cfg))
        fsdp.materialize(model, "cpu", 0, init_token_model)
        for name, v in model.state_dict().items():
            r = ref[name]
            if r.std() == 0 or r.numel() < 2:
                assert torch.equal(v, r), (preset, name)
            else:
                se = r.std().item() / math.sqrt(2 * (r.numel() - 1))
                assert abs(v.std().item() - r.std().item()) < 5 * se + 1e-6, (preset, name)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _meta_memory(out: str) -> None:
    """In a fresh process: RSS before/after building parti-20b on meta, and a 30M-parameter
    model on meta, then materialised."""
    from vqgen import distributed as fsdp
    from vqgen.config import get_preset
    from vqgen.transformer import build_model
    from vqgen.transformer.train import init_token_model

    big = get_preset("transformer", "parti-20b").model
    small = get_preset("transformer", "vim-tiny").model.__class__(dim=512, depth=8, heads=8, mlp_dim=2048,
                                                                   grid=(16, 16), codebook_size=8192)
    r0 = _rss_mb()
    model = fsdp.on_meta(lambda: build_model(big))
    r1 = _rss_mb()
    numel = sum(p.numel() for p in model.parameters())
    held = fsdp.parameter_bytes(model)
    del model
    control = fsdp.on_meta(lambda: build_model(small))
    r2 = _rss_mb()
    fsdp.materialize(control, "cpu", 0, init_token_model)
    r3 = _rss_mb()
    torch.save({"meta_mb": r1 - r0, "numel": numel, "held": held, "small_meta_mb": r2 - r1 if r2 > r1 else 0.0,
                "small_mb": r3 - r2, "small_bytes": fsdp.parameter_bytes(control)}, Path(out) / "rss.pt")


def test_a_model_on_meta_holds_no_parameter_memory(tmp_path):
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_meta_memory, args=(str(tmp_path),))
    p.start()
    p.join(120)
    assert p.exitcode == 0
    m = torch.load(tmp_path / "rss.pt", weights_only=True)
    assert m["numel"] > 20e9 and m["held"] == 0  # parti-20b: 20.5B parameters, none stored
    assert m["meta_mb"] < 200, m  # vs 82 GB of fp32 weights: only module objects
    # the control: materialising 30M parameters grows RSS by about their 4 bytes each
    assert m["small_mb"] > 0.8 * m["small_bytes"] / 2**20, m
