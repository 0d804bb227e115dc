"""DDP training with 2 CPU processes on gloo: ranks stay identical and match one process on the doubled batch."""
import socket

import numpy as np
import torch
import torch.multiprocessing as mp
from PIL import Image

from vqgen.config import apply_overrides, get_preset
from vqgen.data.folder import write_image_folder
from vqgen.data.records import Record

from tests.tolerances import assert_same_sgd_step

# one plain SGD step without clipping: the update is linear in the gradient (see tests/tolerances.py)
OVERRIDES = ["steps=1", "log_every=1", "sample_every=100", "ckpt_every=100", "holdout_every=0",
             "optim.warmup_steps=0", "loss.ms_ssim=0.1", "optim.name=sgd", "optim.grad_clip=0", "optim.lr=0.5"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, run: str, out: str) -> None:
    import os

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    from vqgen.tokenizer.train import train_tokenizer

    cfg = apply_overrides(get_preset("tokenizer", "tiny"), OVERRIDES + ["optim.batch_size=4"])
    model = train_tokenizer(cfg, data, run, show_progress=False)
    torch.save(model.state_dict(), f"{out}/rank{rank}.pt")


def test_ddp_two_ranks_equal_single_process_on_doubled_batch(tmp_path):
    rng = np.random.default_rng(0)
    recs = [Record(image=Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))) for i in range(16)]
    write_image_folder(recs, tmp_path / "data", progress=False)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "data"), str(tmp_path / "ddp"), str(tmp_path)),
             nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # the ranks end with identical weights

    from vqgen.runtime import seed_everything
    from vqgen.tokenizer.train import build_tokenizer, train_tokenizer

    cfg = apply_overrides(get_preset("tokenizer", "tiny"), OVERRIDES + ["optim.batch_size=8"])
    single = train_tokenizer(cfg, tmp_path / "data", tmp_path / "single", show_progress=False).state_dict()
    seed_everything(cfg.seed)
    init = build_tokenizer(cfg).state_dict()  # the weights both runs started from
    # the same global batch; only float summation order differs (8 images of 3x16x16 pixels per sum)
    assert_same_sgd_step(r0, single, init, terms=8 * 3 * 16 * 16)
    ddp_rows = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(ddp_rows) == 2  # 1 step + the final held-out eval, written by rank 0 only


def _fsdp_worker(rank: int, world: int, port: int, data: str, run: str, out: str) -> None:
    import os

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    from vqgen.tokenizer.train import train_tokenizer

    cfg = apply_overrides(get_preset("tokenizer", "tiny"), OVERRIDES + [f"optim.batch_size={8 // world}", "fsdp=true"])
    model = train_tokenizer(cfg, data, run, show_progress=False)
    torch.save(model.state_dict(), f"{out}/fsdp{world}-rank{rank}.pt")


def test_fsdp_two_ranks_equal_one_rank_on_the_doubled_batch_from_the_same_meta_init(tmp_path):
    rng = np.random.default_rng(0)
    recs = [Record(image=Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))) for i in range(16)]
    write_image_folder(recs, tmp_path / "data", progress=False)
    for world in (1, 2):
        mp.spawn(_fsdp_worker, args=(world, _free_port(), str(tmp_path / "data"), str(tmp_path / f"fsdp{world}"),
                                     str(tmp_path)), nprocs=world, join=True)
    one = torch.load(tmp_path / "fsdp1-rank0.pt", weights_only=True)
    two = [torch.load(tmp_path / f"fsdp2-rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(two[0][k], two[1][k]) for k in one)  # every rank returns the gathered model

    from vqgen import distributed as fsdp
    from vqgen.tokenizer.train import build_tokenizer, init_tokenizer

    cfg = apply_overrides(get_preset("tokenizer", "tiny"), OVERRIDES)
    init = fsdp.on_meta(lambda: build_tokenizer(cfg))
    fsdp.materialize(init, "cpu", cfg.seed, init_tokenizer)  # unsharded: the same weights as any sharding
    assert_same_sgd_step(one, two[0], init.state_dict(), terms=8 * 3 * 16 * 16)
    ckpt = tmp_path / "fsdp2" / "checkpoints" / "step-0000001"
    assert sorted(p.name for p in (ckpt / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
