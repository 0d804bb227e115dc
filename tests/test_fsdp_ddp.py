"""DDP in the reranker and super-resolution trainers (2 gloo processes): one plain SGD step on
rank-split batches equals one process on the doubled batch."""
import torch
import torch.multiprocessing as mp

from vqgen.config import apply_overrides, get_preset
from vqgen.runtime import seed_everything
from vqgen.shapes.dataset import write_shapes_dataset

from tests.test_fsdp import free_port, join_group
from tests.tolerances import assert_same_sgd_step

RERANK = ["optimizer=sgd", "grad_clip=0", "warmup_steps=0", "hard_negatives=0", "augment=0", "lr=0.5", "steps=1",
          "log_every=1", "eval_every=10", "ckpt_every=10"]
SUPERRES = ["optimizer=sgd", "ms_ssim=0", "lr=0.5", "steps=1", "log_every=1", "eval_every=10", "ckpt_every=10"]


def _rerank(rank: int, world: int, port: int, data: str, run: str) -> None:
    join_group(rank, world, port)
    from vqgen.rerank.train import train_reranker

    cfg = apply_overrides(get_preset("rerank", "tiny"), RERANK + [f"batch_size={8 // world}"])
    train_reranker(cfg, data, run, show_progress=False)


def test_reranker_ddp_equals_one_process_on_the_global_batch(tmp_path):
    from safetensors.torch import load_file

    from vqgen.rerank.clip import ClipReranker
    from vqgen.rerank.train import load_pairs
    from vqgen.text.bpe import TextTokenizer

    write_shapes_dataset(tmp_path / "data", 48, size=32, progress=False)
    cfg = apply_overrides(get_preset("rerank", "tiny"), RERANK)
    pairs = load_pairs(tmp_path / "data", 32, cfg.holdout_every)
    tok = TextTokenizer.train(pairs.texts, vocab_size=128)
    for world in (1, 2):  # both runs read one tokenizer (BPE training differs between processes)
        tok.save(tmp_path / f"r{world}" / "tokenizer.json")
        mp.spawn(_rerank, args=(world, free_port(), str(tmp_path / "data"), str(tmp_path / f"r{world}")),
                 nprocs=world, join=True)
    one, two = (load_file(str(tmp_path / f"r{w}" / "model" / "model.safetensors")) for w in (1, 2))
    seed_everything(cfg.seed)  # the weights both runs started from, built as the trainer builds them
    from dataclasses import replace

    init = ClipReranker(replace(cfg.model, vocab_size=max(tok.vocab_size, 5)), tok).state_dict()
    # the contrastive loss of all 8 pairs: every gradient entry sums at most 8 images' pixels
    assert_same_sgd_step(one, two, init, terms=8 * 3 * 32 * 32)


def _superres(rank: int, world: int, port: int, tok: str, data: str, run: str) -> None:
    join_group(rank, world, port)
    from vqgen.io import load_pretrained
    from vqgen.superres.train import train_superres

    cfg = apply_overrides(get_preset("superres-train", "tiny"), SUPERRES + [f"batch_size={8 // world}"])
    train_superres(cfg, load_pretrained(tok), data, run, show_progress=False)


def test_superres_ddp_equals_one_process_on_the_global_batch(tmp_path):
    from safetensors.torch import load_file

    from vqgen.superres.model import SuperResolution
    from vqgen.superres.train import SuperResTrainConfig  # noqa: F401  (registers the superres-train presets)
    from vqgen.tokenizer.train import build_tokenizer

    seed_everything(0)
    build_tokenizer(get_preset("tokenizer", "tiny")).save_pretrained(tmp_path / "tok")  # 16 px, frozen
    write_shapes_dataset(tmp_path / "data", 24, size=32, progress=False)
    for world in (1, 2):
        mp.spawn(_superres, args=(world, free_port(), str(tmp_path / "tok"), str(tmp_path / "data"),
                                  str(tmp_path / f"s{world}")), nprocs=world, join=True)
    one, two = (load_file(str(tmp_path / f"s{w}" / "model" / "model.safetensors")) for w in (1, 2))
    cfg = get_preset("superres-train", "tiny")
    seed_everything(cfg.seed)
    init = SuperResolution(cfg.model).state_dict()
    assert_same_sgd_step(one, two, init, terms=8 * 3 * 32 * 32)  # the L2 mean over 8 targets' pixels
