import gzip
import io
import json
import random
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


# Damaged shards: tarfile ends an archive at a header it cannot read, so without the checks in
# vqgen.data.tarstream every later sample vanished and `data check` said "0 skipped".
PNG = encode(Image.new("RGB", (4, 4), (9, 9, 9)))


def tar_bytes(num_samples: int, first: int = 0) -> tuple[bytes, dict[str, int]]:
    """A shard of samples KEY.png, KEY.txt, KEY.json; returns its bytes and each member's offset."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(first, first + num_samples):
            for ext, data in (("png", PNG), ("txt", f"caption {i}".encode()), ("json", b'{"label": 1}')):
                add(tar, f"{i:04d}.{ext}", data)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        offsets = {m.name: m.offset for m in tar.getmembers()}
    return buf.getvalue(), offsets


def check_summary(path, capsys) -> dict:
    capsys.readouterr()
    assert main(["data", "check", str(path), "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("member,skipped_keys", [
    ("0004.txt", ["0004"]),  # inside a sample: that sample is incomplete
    ("0004.png", ["0003", "0004"]),  # between samples: either side may miss a file
    ("0000.png", ["0000"]),  # the very first header
    ("0009.json", ["0009"]),  # the last member
], ids=["inside-sample", "between-samples", "first-header", "last-member"])
def test_random_header_mid_shard_is_counted_and_reading_resumes(tmp_path, capsys, member, skipped_keys):
    raw, offsets = tar_bytes(10)
    raw = bytearray(raw)
    raw[offsets[member]:offsets[member] + 512] = random.Random(member).randbytes(512)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "00000.tar").write_bytes(raw)
    ds = ShardDataset(tmp_path / "s", rank=0, world_size=1)
    good = [r.key.split(":")[1] for r in ds]
    assert sorted(good + skipped_keys) == [f"{i:04d}" for i in range(10)]  # nothing lost uncounted
    assert dict(ds.skipped) == {"bad_tar_header": len(skipped_keys)}
    assert [k for k, _, _ in ds.problems] == [f"00000.tar:{k}" for k in skipped_keys]
    assert f"from offset {offsets[member]}" in ds.problems[0][2]
    summary = check_summary(tmp_path / "s", capsys)
    assert summary["good"] == 10 - len(skipped_keys) and summary["skipped"] == {"bad_tar_header": len(skipped_keys)}


@pytest.mark.parametrize("cut,good", [
    (lambda o: o["0004.txt"] + 600, 4),  # inside a member's data
    (lambda o: o["0004.txt"] + 100, 4),  # inside a header
    (lambda o: o["0005.png"], 4),  # at a member boundary: no end-of-archive block, sample 4 may miss files
    (lambda o: o["0005.png"] - 200, 4),  # inside the padding after a member
], ids=["in-data", "in-header", "at-boundary", "in-padding"])
def test_truncated_shard_counted_once(tmp_path, capsys, cut, good):
    raw, offsets = tar_bytes(10)
    shard = tmp_path / "00000.tar"
    shard.write_bytes(raw[:cut(offsets)])
    ds = ShardDataset(shard, rank=0, world_size=1)
    assert len(list(ds)) == good
    assert dict(ds.skipped) == {"truncated_shard": 1} and ds.problems[0][0] == "00000.tar:0004"
    assert check_summary(shard, capsys)["skipped"] == {"truncated_shard": 1}


def test_whole_shards_read_whole(tmp_path):
    """Concatenated tars (zero blocks, then more headers) and gzip shards lose nothing and count nothing."""
    first, _ = tar_bytes(3)
    second, _ = tar_bytes(2, first=3)
    (tmp_path / "cat.tar").write_bytes(first + second)
    (tmp_path / "gz.tar").write_bytes(gzip.compress(first))
    ds = ShardDataset([tmp_path / "cat.tar", tmp_path / "gz.tar"], rank=0, world_size=1)
    assert len(list(ds)) == 5 + 3 and not ds.skipped


def test_damage_counted_once_across_ranks(tmp_path):
    """Fewer shards than readers: every rank scans the shard, and a damaged sample is counted by its owner."""
    raw, offsets = tar_bytes(9)
    raw = bytearray(raw)
    raw[offsets["0005.txt"]:offsets["0005.txt"] + 512] = bytes(range(256)) * 2
    (tmp_path / "x.tar").write_bytes(raw)
    (tmp_path / "y.tar").write_bytes(b"\x00garbage" * 100)
    total, keys = Counter(), []
    for rank in range(2):
        ds = ShardDataset([tmp_path / "x.tar", tmp_path / "y.tar"], rank=rank, world_size=2)
        keys += [r.key for r in ds]
        total += ds.skipped
    assert len(keys) == len(set(keys)) == 8 and total == {"bad_tar_header": 1, "bad_shard": 1}


def test_duplicate_member_in_a_sample_counted(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("a.png", PNG), ("a.txt", b"first"), ("a.txt", b"second"), ("b.png", PNG)):
            add(tar, name, data)
    (tmp_path / "d.tar").write_bytes(buf.getvalue())
    ds = ShardDataset(tmp_path / "d.tar", rank=0, world_size=1)
    texts = {r.key: r.text for r in ds}
    assert texts == {"d.tar:a": "first", "d.tar:b": None} and dict(ds.skipped) == {"duplicate": 1}
    assert ds.problems[0][0] == "a.txt"
