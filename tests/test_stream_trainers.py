"""Streamed shards in every stage: the tokenizer (also under FSDP), the reranker and super-resolution
train on image shards through StreamLoader (resume at the next sample, bad samples counted), and a
streamed transformer run reads one of each record's several captions per step, as the in-memory
path does."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from dataclasses import replace

import torch
from safetensors.torch import load_file

from tests.test_data_webdataset import add
from tests.test_superres import tiny_tokenizer  # noqa: F401  (the fixture)
from tests.test_train import crash_after
from vqgen.cli import main
from vqgen.config import get_preset
from vqgen.data.captions import CaptionBank, pick_texts
from vqgen.shapes.dataset import ShapesDataset
from vqgen.tokenizer.data import heldout_key


def caption_shards(root, n: int = 40, per_shard: int = 10, bad: str = "000004") -> list[dict]:
    """Shapes pairs as img2dataset shards: KEY.png and KEY.json (``caption`` and three ``texts``);
    sample ``bad`` has a broken PNG. Returns the good records' json."""
    data = ShapesDataset(n, 32, seed=0, captions=3)
    root.mkdir()
    infos = []
    for s in range(0, n, per_shard):
        with tarfile.open(root / f"{s // per_shard:05d}.tar", "w") as tar:
            for i in range(s, s + per_shard):
                rec, key = data[i], f"{i:06d}"
                buf = io.BytesIO()
                rec.image.save(buf, format="PNG")
                info = {"caption": rec.text, "texts": rec.meta["texts"]}
                add(tar, f"{key}.png", b"not a png" if key == bad else buf.getvalue())
                add(tar, f"{key}.json", json.dumps(info).encode())
                if key != bad:
                    infos.append(info)
    return infos


def weights(run):
    return load_file(str(run / "model" / "model.safetensors"))


def straight_and_resumed(run_fn, tmp_path, at: int):
    """Run ``run_fn(RUN)`` into a/, copy it to b/ as if it died after checkpoint ``at``, run again."""
    straight, resumed = tmp_path / "a", tmp_path / "b"
    run_fn(straight)
    shutil.copytree(straight, resumed)
    crash_after(resumed, at)
    run_fn(resumed)
    return straight, resumed


# ----------------------------------------------------------------------------- reranker
def test_reranker_streams_shards_resumes_at_the_next_sample_and_counts_bad_ones(tmp_path, monkeypatch, capsys):
    import vqgen.rerank.train as rtrain

    infos = caption_shards(tmp_path / "shards")
    assert not heldout_key("00000.tar:000004", 4)  # the broken sample is a training one: the stream counts it
    reads: list[list[list[str]]] = []  # per run, the captions of each step
    real = rtrain.contrastive_loss
    monkeypatch.setattr(rtrain, "contrastive_loss", lambda img, txt, scale, texts, neg: (reads[-1].append(texts),
                                                                                       real(img, txt, scale, texts, neg))[1])
    monkeypatch.setattr(rtrain, "load_pairs", None)  # shards are not read into memory
    cfg = replace(get_preset(rtrain.FAMILY, "tiny"), steps=8, ckpt_every=4, eval_every=100, holdout_every=4,
                  stream_workers=2, shuffle_buffer=8, augment=0.5)

    def run(out):
        reads.append([])
        return rtrain.train_reranker(cfg, tmp_path / "shards", out, show_progress=False)

    straight, resumed = straight_and_resumed(run, tmp_path, at=4)
    first, second = reads
    assert len(first) == 8 and second == first[4:]  # the resumed run went on at the very next sample
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    canonical = {i["caption"] for i in infos}
    every = {t for i in infos for t in i["texts"]}
    seen = {t for texts in first for t in texts}
    assert seen <= every and seen - canonical  # one of the several captions, not only the canonical one
    summary = json.loads((straight / "data.json").read_text())
    assert summary["skipped"] == {"corrupt": 1} and summary["records"] is not None  # 8 x 8 > one pass
    assert "1 skipped (corrupt: 1)" in capsys.readouterr().out


def test_reranker_eval_reads_the_held_out_split_of_a_streamed_run(tmp_path):
    from vqgen.rerank.train import load_heldout_pairs, load_pairs

    caption_shards(tmp_path / "shards")
    folder = load_pairs(tmp_path / "shards", 32, holdout_every=4, show_progress=False)
    streamed = load_heldout_pairs(tmp_path / "shards", 32, holdout_every=4)
    assert [folder.texts[i] for i in folder.heldout_idx.tolist()] == streamed.texts
    assert torch.equal(folder.images[folder.heldout_idx], streamed.images)


# ----------------------------------------------------------------------------- super-resolution
def test_superres_streams_shards_resumes_at_the_next_sample_and_counts_bad_ones(tmp_path, tiny_tokenizer, capsys,
                                                                              monkeypatch):
    import vqgen.superres.train as strain
    from tests.test_tokenizer_train import write_shards

    shards = write_shards(tmp_path / "shards", num_shards=2, per_shard=8, bad=1, size=32)
    assert not heldout_key("00000.tar:000000", 4)  # the broken sample is a training one
    monkeypatch.setattr(strain, "prepare_data", None)  # shards are not read into memory
    args = ["superres", "train", "--data", f"file:{shards}/{{00000..00001}}.tar", "--tokenizer", str(tiny_tokenizer),
            "--scale", "2", "--preset", "tiny", "--no-progress", "--steps", "8", "--set", "ckpt_every=4",
            "--set", "eval_every=100", "--set", "holdout_every=4", "--set", "stream_workers=0",
            "--set", "shuffle_buffer=4"]
    straight, resumed = straight_and_resumed(lambda out: main(args + ["--out", str(out)]), tmp_path, at=4)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the stream went on at the very next sample
    summary = json.loads((straight / "data.json").read_text())
    assert summary["skipped"] == {"corrupt": 1} and summary["records"] is not None  # 8 x 4 > one pass
    assert "1 skipped (corrupt: 1)" in capsys.readouterr().out
    rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 8 and {"psnr_sr", "psnr_bicubic"} <= rows[-1].keys()


# ----------------------------------------------------------------------------- several captions, streamed
def test_pick_texts_picks_what_the_caption_bank_picks():
    lists = [["a", "b", "c"], ["d"], ["e", "f"], ["g", "h", "i"]]
    texts, metas = [c[0] for c in lists], [{"texts": c} if len(c) > 1 else {} for c in lists]
    bank = CaptionBank.build(lists, lambda t, n: (torch.zeros(len(t), n), torch.zeros(len(t), n)), 4)
    idx = torch.tensor([2, 0, 3, 1])  # a batch in this order
    for step in range(20):
        want = [lists[i][k] for i, k in zip(idx.tolist(), bank.choose(idx, 7, step, 1).tolist())]
        assert pick_texts([texts[i] for i in idx], [metas[i] for i in idx], 7, step, 1) == want


def test_streamed_transformer_reads_one_of_several_captions_per_step_and_resumes_identically(tmp_path, monkeypatch):
    import vqgen.transformer.train as ttrain
    from tests.test_captions import caption_codes
    from vqgen.data.stream import write_code_shards

    codes, metas = caption_codes(tmp_path / "codes", n=40)
    write_code_shards(codes, tmp_path / "tars", shard_size=10)
    read: list[tuple[list, list[str]]] = []

    def recording(texts, rows, seed, step, micro, **options):
        out = pick_texts(texts, rows, seed, step, micro, **options)
        read.append((rows, out))
        return out

    monkeypatch.setattr(ttrain, "pick_texts", recording)
    sets = ["train.batch_size=8", "train.ckpt_every=3", "model.dropout=0.0", "train.stream_workers=0",
            "train.shuffle_buffer=8", "model.codebook_size=32"]
    straight, resumed = straight_and_resumed(
        lambda out: ttrain.train(tmp_path / "tars", out, preset="parti-tiny", steps=6, overrides=sets,
                                 show_progress=False), tmp_path, at=3)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight_rows = read[:6]
    assert all(t in m["texts"] for rows, out in straight_rows for m, t in zip(rows, out))
    picked = {t for _, out in straight_rows for t in out}
    assert picked - {m["texts"][0] for m in metas}  # not only the canonical captions
    assert read[6:] == straight_rows[3:]  # the resumed run reads the same captions of the same records


# ----------------------------------------------------------------------------- tokenizer
def recording_loss(monkeypatch, reads: list):
    """Make the tokenizer trainer append each step's images (B, 3, S, S) to ``reads[-1]``."""
    import vqgen.tokenizer.train as ttrain

    class Recording(ttrain.ReconstructionLoss):
        def forward(self, x, out, step, disc=None):
            reads[-1].append(x.detach().clone())
            return super().forward(x, out, step, disc)

    monkeypatch.setattr(ttrain, "ReconstructionLoss", Recording)


def tokenizer_config(**fields):
    return replace(get_preset("tokenizer", "tiny"), holdout_every=4, eval_batches=1, sample_every=100, **fields)


def test_tokenizer_streams_shards_resumes_at_the_next_sample_and_counts_bad_ones(tmp_path, monkeypatch, capsys):
    from tests.test_tokenizer_train import write_shards
    from vqgen.tokenizer.train import train_tokenizer

    shards = write_shards(tmp_path / "shards", num_shards=3, per_shard=8, bad=1)
    assert not heldout_key("00000.tar:000000", 4)  # the broken sample is a training one
    monkeypatch.setattr("vqgen.tokenizer.train.load_image_set", None)  # shards are not read into memory
    reads: list[list[torch.Tensor]] = []
    recording_loss(monkeypatch, reads)
    cfg = tokenizer_config(steps=8, ckpt_every=4, stream_workers=2, shuffle_buffer=8)
    source = f"pipe:cat {shards}/{{00000..00002}}.tar"

    def run(out):
        reads.append([])
        train_tokenizer(cfg, source, out, show_progress=False)

    straight, resumed = straight_and_resumed(run, tmp_path, at=4)
    first, second = reads
    assert len(first) == 8 and len(second) == 4
    assert all(torch.equal(a, b) for a, b in zip(first[4:], second))  # the resumed run went on at the next sample
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((straight / "data.json").read_text())
    assert summary["skipped"] == {"corrupt": 1} and summary["records"] is not None  # 8 x 4 > one pass
    assert "1 skipped (corrupt: 1)" in capsys.readouterr().out


def test_tokenizer_stream_shuffles_samples_through_its_buffer(tmp_path, monkeypatch):
    import numpy as np

    from tests.test_tokenizer_train import _blocks, write_shards
    from vqgen.tokenizer.train import train_tokenizer

    shards = write_shards(tmp_path / "shards", num_shards=3, per_shard=8)
    index = {np.asarray(_blocks(n)).tobytes(): n for n in range(24)}
    reads: list[list[torch.Tensor]] = []
    recording_loss(monkeypatch, reads)

    def order(buffer: int) -> list[int]:
        """The numbers of the shard images the run trained on, in order (4 steps of 4: most of a pass)."""
        reads.append([])
        train_tokenizer(tokenizer_config(steps=4, ckpt_every=100, stream_workers=0, shuffle_buffer=buffer), shards,
                        tmp_path / f"buffer{buffer}", show_progress=False)
        pixels = torch.cat(reads[-1]).mul(255).round().byte().permute(0, 2, 3, 1).numpy()  # (N, S, S, 3)
        return [index[img.tobytes()] for img in pixels]

    def shard_by_shard(seq: list[int]) -> bool:
        """Each shard's images together and in the shard's order (shard n // 8)."""
        runs = [n // 8 for i, n in enumerate(seq) if i == 0 or n // 8 != seq[i - 1] // 8]
        return len(runs) == len(set(runs)) and all(b > a for a, b in zip(seq, seq[1:]) if a // 8 == b // 8)

    plain, shuffled = order(0), order(8)
    assert len(plain) == len(shuffled) == 16
    assert shard_by_shard(plain)  # no buffer: only the shard order is shuffled
    assert not shard_by_shard(shuffled)  # a buffer of 8 mixes samples within and across shards


def _streamed_fsdp_worker(rank: int, world: int, port: int, data: str, run: str) -> None:
    import os

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    from vqgen.tokenizer.train import train_tokenizer

    cfg = tokenizer_config(steps=5, ckpt_every=3, stream_workers=1, shuffle_buffer=4, fsdp=True)
    train_tokenizer(cfg, data, run, show_progress=False)


def test_tokenizer_streams_under_fsdp_on_two_ranks_and_resumes_identically(tmp_path):
    import torch.multiprocessing as mp

    from tests.test_tokenizer_ddp import _free_port
    from tests.test_tokenizer_train import write_shards

    shards = write_shards(tmp_path / "shards", num_shards=4, per_shard=8, bad=1)
    straight, resumed = straight_and_resumed(
        lambda out: mp.spawn(_streamed_fsdp_worker, args=(2, _free_port(), str(shards), str(out)), nprocs=2,
                             join=True), tmp_path, at=3)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = torch.load(straight / "checkpoints" / "step-0000003" / "resume.pt", weights_only=False)["batches"]
    assert [s["layout"] for s in saved] == [[2, 1], [2, 1]]  # each rank's position, in rank order
    assert all(s["consumed"] > 0 for s in saved)  # resumed within a pass (2 batches a pass here)
    assert "rank 0's shards" in json.loads((straight / "data.json").read_text())["source"]


def test_a_tokenizer_checkpoint_from_before_stream_loader_restarts_its_epoch(tmp_path, capsys):
    from tests.test_tokenizer_train import write_shards
    from vqgen.data.stream import load_position
    from vqgen.tokenizer.data import image_stream

    shards = write_shards(tmp_path / "shards", num_shards=2, per_shard=4)
    loader = image_stream(shards, 16, 2, holdout_every=0, seed=0, rank=0, world_size=1, workers=0, shuffle_buffer=4)
    load_position(loader, {"epoch": 1, "index": 3}, rank=0, world_size=1)  # what ShardBatches saved
    assert (loader.epoch, loader.consumed, loader.positions) == (1, 0, [0])
    assert "epoch 1 of the shards starts over" in capsys.readouterr().err
    assert next(iter(loader))[0].shape == (2, 3, 16, 16)
