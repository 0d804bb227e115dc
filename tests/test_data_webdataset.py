import io
import json
import tarfile
from collections import Counter

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from tests.test_data_image import encode
from vqgen.cli import main
from vqgen.data.webdataset import ShardDataset, list_shards
from vqgen.errors import VqgenError


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shards(root, num_shards: int, per_shard: int, bad: bool = False) -> list[str]:
    """img2dataset-style shards; returns the good sample keys. ``bad`` adds one of each bad kind per shard."""
    root.mkdir(exist_ok=True)
    keys = []
    for s in range(num_shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                ext = "jpg" if i % 2 else "png"
                add(tar, f"{key}.{ext}", encode(Image.new("RGB", (12, 8), (s * 30, i * 20, 0)),
                                                "JPEG" if ext == "jpg" else "PNG"))
                if i % 3:
                    add(tar, f"{key}.txt", f"caption {key}".encode())
                add(tar, f"{key}.json", json.dumps({"key": key, "caption": f"json {key}", "status": "success",
                                                    "label": i % 2}).encode())
                keys.append(key)
            if bad:
                add(tar, "bad0.png", b"")
                add(tar, "bad1.png", b"garbage")
                add(tar, "bad2.txt", b"text without an image")
                add(tar, "bad3.png", encode(Image.new("RGB", (4, 4))))
                add(tar, "bad3.txt", b"\xff\xfe")
                add(tar, "bad4.png", encode(Image.new("RGB", (4, 4))))
                add(tar, "bad4.json", b"{not json")
    return keys


def _records(batch):
    return batch


def read_keys(root, rank, world_size, workers, **kw):
    ds = ShardDataset(root, rank=rank, world_size=world_size, **kw)
    loader = DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=_records)
    return [rec.key.split(":")[1] for rec in loader]


@pytest.mark.parametrize("num_shards", [6, 3])  # more shards than readers (split by shard) and fewer (by sample)
def test_each_sample_exactly_once_across_2_ranks_x_2_workers(tmp_path, num_shards):
    keys = make_shards(tmp_path / "shards", num_shards, per_shard=5)
    seen, per_rank = Counter(), []
    for rank in range(2):
        got = read_keys(tmp_path / "shards", rank, 2, workers=2, size=8, shuffle=True, seed=3)
        seen.update(got)
        per_rank.append(len(got))
    assert set(seen) == set(keys) and set(seen.values()) == {1}
    assert abs(per_rank[0] - per_rank[1]) <= (0 if num_shards == 6 else 1)  # 3 shards each / 8 + 7 samples


def test_rank_from_environment_and_epoch_shuffle(tmp_path, monkeypatch):
    keys = make_shards(tmp_path / "shards", 4, per_shard=3)
    monkeypatch.setenv("WORLD_SIZE", "2")
    parts = []
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        parts.append([r.key for r in ShardDataset(tmp_path / "shards")])
    assert sorted(k.split(":")[1] for k in parts[0] + parts[1]) == sorted(keys) and parts[0] and parts[1]
    ds = ShardDataset(tmp_path / "shards", rank=0, world_size=1, shuffle=True, seed=0)
    orders = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        orders.append([r.key for r in ds])
    assert all(sorted(o) == sorted(orders[0]) for o in orders) and len({tuple(o) for o in orders}) > 1


def test_records_and_bad_samples_counted(tmp_path, capsys):
    keys = make_shards(tmp_path / "shards", 2, per_shard=3, bad=True)
    (tmp_path / "shards" / "00002.tar").write_bytes(b"not a tar at all" * 40)
    ds = ShardDataset(tmp_path / "shards", size=6, rank=0, world_size=1)
    recs = {r.key: r for r in ds}
    assert sorted(k.split(":")[1] for k in recs) == sorted(keys)
    assert dict(ds.skipped) == {"empty_file": 2, "corrupt": 2, "missing_image": 2, "bad_caption_encoding": 2,
                                "bad_metadata": 2, "bad_shard": 1}
    r1, r0 = recs["00000.tar:000000001"], recs["00000.tar:000000000"]
    assert r1.text == "caption 000000001" and r1.label == 1 and r1.image.size == (6, 6)
    assert r0.text == "json 000000000" and r0.meta == {"key": "000000000", "status": "success"}
    strict = ShardDataset(tmp_path / "shards", require_text=True, rank=0, world_size=1)
    assert len(list(strict)) == len(keys)  # every good sample has a .txt or a json caption
    assert main(["data", "check", str(tmp_path / "shards"), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["format"] == "webdataset" and summary["good"] == len(keys)
    assert summary["skipped"] == dict(sorted(ds.skipped.items()))


def test_shard_listing(tmp_path):
    make_shards(tmp_path / "s", 3, per_shard=1)
    assert len(list_shards(tmp_path / "s")) == 3
    assert list_shards(str(tmp_path / "s" / "{00000..00002}.tar")) == list_shards(tmp_path / "s")
    with pytest.raises(VqgenError, match="does not exist"):
        list_shards(str(tmp_path / "s" / "{00000..00004}.tar"))
    with pytest.raises(VqgenError, match="no .tar"):
        list_shards(tmp_path)
