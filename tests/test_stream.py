"""Streaming shards (data/stream.py): each sample once per epoch across ranks x workers, resume at
the right sample, bad samples counted, code shards from a path, a file: URL or a pipe: command."""
from __future__ import annotations

import io
import tarfile
from collections import Counter
from functools import partial

import numpy as np
import pytest
import torch

from tests.test_data_webdataset import add, make_shards
from vqgen.cli import main
from vqgen.data.codes import CodeShardWriter
from vqgen.data.stream import StreamLoader, is_stream_source, write_code_shards
from vqgen.data.webdataset import ShardDataset


def epoch(loader: StreamLoader, start: int = 0) -> list[str]:
    """The texts of the batches of epoch ``start`` (the loader is endless: stop at the next epoch)."""
    texts = []
    for data, labels, got in loader:
        if loader.epoch != start:
            break
        texts += got
    return texts


def loader(root, rank, world, workers=2, batch=2, drop_last=False, **kw):
    ds = ShardDataset(root, size=8, rank=rank, world_size=world, shuffle=True, seed=5, shuffle_buffer=4, **kw)
    return StreamLoader(ds, batch_size=batch, workers=workers, drop_last=drop_last)


@pytest.mark.parametrize("num_shards", [6, 3])  # split by shard (6 >= 4 readers), and by sample (3 < 4)
def test_each_sample_once_per_epoch_across_2_ranks_x_2_workers(tmp_path, num_shards):
    keys = make_shards(tmp_path / "s", num_shards, per_shard=5)
    for e in (0, 1):
        seen = Counter()
        for rank in (0, 1):
            lo = loader(tmp_path / "s", rank, 2)
            lo.epoch = e
            seen.update(t.split()[-1] for t in epoch(lo, e))
        assert set(seen) == set(keys) and set(seen.values()) == {1}
    orders = [epoch(loader(tmp_path / "s", 0, 2)), epoch(loader(tmp_path / "s", 0, 2))]
    assert orders[0] == orders[1]  # a pass is a fixed sequence: what resuming relies on


def test_resume_goes_on_at_the_next_sample(tmp_path):
    make_shards(tmp_path / "s", 4, per_shard=7, bad=True)
    whole = loader(tmp_path / "s", 1, 2, drop_last=True)
    reference = []
    for _, _, texts in whole:
        reference.append(texts)
        if len(reference) == 12:  # into the second epoch
            break
    for cut in (1, 4, 6, 7):  # 6 batches a pass (2 workers x 3): in the first, at its end, in the second
        first = loader(tmp_path / "s", 1, 2, drop_last=True)
        got = []
        for _, _, texts in first:
            got.append(texts)
            if len(got) == cut:
                break
        state = first.state_dict()
        assert 12 * state["epoch"] + state["consumed"] == 2 * cut  # samples handed out
        again = loader(tmp_path / "s", 1, 2, drop_last=True)
        again.load_state_dict(state)
        for _, _, texts in again:
            got.append(texts)
            if len(got) == 12:
                break
        assert got == reference, cut


def test_bad_samples_counted_once_a_pass_also_across_a_resume(tmp_path):
    make_shards(tmp_path / "s", 2, per_shard=4, bad=True)  # 5 bad samples a shard
    lo = loader(tmp_path / "s", 0, 1, workers=2, batch=1)
    epoch(lo)
    assert lo.records == 8 and lo.skipped == Counter(
        {"corrupt": 2, "empty_file": 2, "missing_image": 2, "bad_caption_encoding": 2, "bad_metadata": 2})
    half = loader(tmp_path / "s", 0, 1, workers=2, batch=1)
    for n, _ in enumerate(half, 1):
        if n == 3:
            break
    resumed = loader(tmp_path / "s", 0, 1, workers=2, batch=1)
    resumed.load_state_dict(half.state_dict())
    epoch(resumed)
    assert resumed.records == 8 and resumed.skipped == lo.skipped


def test_a_pass_leaves_the_global_rng_alone(tmp_path):
    make_shards(tmp_path / "s", 2, per_shard=3)
    torch.manual_seed(0)
    want = torch.rand(4)
    torch.manual_seed(0)
    next(iter(loader(tmp_path / "s", 0, 1, workers=0)))
    assert torch.equal(torch.rand(4), want)  # what a trainer draws does not depend on where passes start


def test_another_layout_starts_the_epoch_over(tmp_path, capsys):
    make_shards(tmp_path / "s", 4, per_shard=3)
    lo = loader(tmp_path / "s", 0, 1)
    next(iter(lo))
    other = loader(tmp_path / "s", 0, 2)
    other.load_state_dict(lo.state_dict())
    assert other.consumed == 0 and "starts over" in capsys.readouterr().err


def code_folder(root, n=10, grid=(4, 4)):
    gen = torch.Generator().manual_seed(0)
    with CodeShardWriter(root, grid, 32, shard_size=4) as w:
        w.add(torch.randint(0, 32, (n, *grid), generator=gen), texts=[f"text {i}" for i in range(n)],
              labels=[i % 3 for i in range(n)], metas=[{"i": i} for i in range(n)], keys=[f"k{i}" for i in range(n)])
    return root


def test_code_shards_stream_from_a_path_a_file_url_and_a_pipe(tmp_path):
    from vqgen.data.codes import CodeDataset

    codes = CodeDataset.load(code_folder(tmp_path / "codes"))
    assert main(["data", "code-shards", str(tmp_path / "codes"), str(tmp_path / "tars"), "--shard-size", "3"]) == 0
    tars = sorted((tmp_path / "tars").glob("*.tar"))
    assert len(tars) == 4
    pattern = str(tmp_path / "tars" / "codes-{00000..00003}.tar")
    sources = [tmp_path / "tars", pattern, "file:" + pattern, f"pipe:cat {pattern}"]
    assert all(is_stream_source(s) for s in sources) and not is_stream_source(tmp_path / "codes")
    for source in sources:
        ds = ShardDataset(source, kind="codes", grid=(4, 4), codebook_size=32, rank=0, world_size=1)
        recs = list(ds)
        assert [r.text for r in recs] == codes.texts and [r.label for r in recs] == codes.labels
        assert torch.equal(torch.stack([r.codes for r in recs]), codes.codes) and recs[3].meta == {"i": 3}
    data, labels, texts = next(iter(StreamLoader(ShardDataset(tmp_path / "tars", kind="codes"), batch_size=4)))
    assert data.shape == (4, 4, 4) and data.dtype == torch.long and len(labels) == len(texts) == 4


def held_out(name: str, key: str) -> bool:
    return key.endswith(":" + name)


def test_damaged_code_samples_are_counted(tmp_path):
    write_code_shards(code_folder(tmp_path / "codes", n=4), tmp_path / "tars")
    with tarfile.open(tmp_path / "tars" / "extra.tar", "w") as tar:
        for name, grid in (("wronggrid", np.zeros((3, 3), np.int16)), ("outside", np.full((4, 4), 99, np.int16)),
                           ("floats", np.zeros((4, 4), np.float32))):
            buf = io.BytesIO()
            np.save(buf, grid)
            add(tar, f"{name}.codes.npy", buf.getvalue())
        add(tar, "garbage.codes.npy", b"not an array")
        add(tar, "nocodes.json", b'{"text": "x"}')
    lo = StreamLoader(ShardDataset(tmp_path / "tars", kind="codes", grid=(4, 4), codebook_size=32, rank=0,
                                   world_size=1), batch_size=1, exclude=partial(held_out, "000000001"))
    assert len(epoch(lo)) == 3  # 4 good, one left out by key
    assert lo.skipped == Counter({"bad_codes": 4, "missing_codes": 1})
