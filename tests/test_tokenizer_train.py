"""Tokenizer training, resume, evaluation and the encode/decode commands on tiny data."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vqgen.cli import main
from vqgen.config import apply_overrides, get_preset
from vqgen.data.codes import CodeDataset
from vqgen.data.folder import ImageFolder, write_image_folder
from vqgen.data.records import Record
from vqgen.tokenizer.data import holdout_split, load_image_set
from vqgen.tokenizer.train import train_tokenizer


def _blocks(i: int, size: int = 16) -> Image.Image:
    """A simple learnable image: two coloured rectangles on a tinted background."""
    rng = np.random.default_rng(i)
    a = np.zeros((size, size, 3), np.uint8) + rng.integers(0, 256, 3, dtype=np.uint8)
    for _ in range(2):
        y, x = rng.integers(0, size - 4, 2)
        h, w = rng.integers(3, size // 2, 2)
        a[y:y + h, x:x + w] = rng.integers(0, 256, 3, dtype=np.uint8)
    return Image.fromarray(a)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok") / "data"
    recs = [Record(image=_blocks(i), text=f"image {i}", label=i % 3, meta={"n": i}) for i in range(40)]
    write_image_folder(recs, root, class_names=["a", "b", "c"], progress=False)
    return root


def _state(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_cli_train_writes_run_and_resumes_bit_identically(folder, tmp_path):
    sets = ["--set", "ckpt_every=3", "--set", "log_every=1", "--set", "sample_every=3",
            "--set", "loss.gan=0.1", "--set", "loss.gan_start=2", "--set", "optim.warmup_steps=2",
            "--set", "optim.min_lr_ratio=0.0"]
    straight = tmp_path / "straight"
    assert main(["tokenizer", "train", "--data", str(folder), "--preset", "tiny", "--out", str(straight),
                 "--steps", "6", "--no-progress", *sets]) == 0
    for name in ("config.json", "metrics.jsonl", "model/config.json", "model/model.safetensors",
                 "checkpoints/latest", "checkpoints/step-0000006/resume.pt",
                 "checkpoints/step-0000006/discriminator/model.safetensors"):
        assert (straight / name).is_file(), name
    assert list((straight / "samples").glob("reconstruction-*.png"))
    assert list((straight / "tb").iterdir())
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/codebook_usage", "train/perplexity", "train/dead_codes", "train/gan_d"} <= set(rows[-2])
    assert not (straight / "model" / "discriminator").exists()  # the discriminator lives in checkpoints only

    # an interrupted run: the same config, stopped after its step-3 checkpoint, then resumed
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(straight / "config.json", resumed / "config.json")
    shutil.copytree(straight / "checkpoints" / "step-0000003", resumed / "checkpoints" / "step-0000003")
    assert main(["tokenizer", "train", "--data", str(folder), "--out", str(resumed), "--steps", "6",
                 "--no-progress"]) == 0
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    da = load_file(str(straight / "checkpoints/step-0000006/discriminator/model.safetensors"))
    db = load_file(str(resumed / "checkpoints/step-0000006/discriminator/model.safetensors"))
    assert all(torch.equal(da[k], db[k]) for k in da)


def test_cli_errors_are_one_line(folder, tmp_path, capsys):
    assert main(["tokenizer", "train", "--data", str(folder), "--out", str(tmp_path / "r")]) == 2
    assert "--preset is required" in capsys.readouterr().err
    assert main(["tokenizer", "train", "--data", str(folder), "--preset", "tiny", "--out", str(tmp_path / "r"),
                 "--set", "loss.perceptual=0.1"]) == 2
    assert "loss.vgg_path" in capsys.readouterr().err
    assert main(["tokenizer", "eval", str(tmp_path / "nothing"), "--data", str(folder)]) == 2
    assert "holds no tokenizer" in capsys.readouterr().err


def test_tiny_model_overfits(folder, seeded):
    data = load_image_set(folder, 16)
    cfg = apply_overrides(get_preset("tokenizer", "tiny"),
                          ["steps=150", "holdout_every=0", "optim.batch_size=8", "optim.lr=1e-2",
                           "optim.warmup_steps=10", "log_every=1000", "sample_every=1000", "ckpt_every=1000"])
    sub = type(data)(images=data.images[:8], texts=data.texts[:8], labels=data.labels[:8], metas=data.metas[:8],
                     keys=data.keys[:8], class_names=None, skipped=data.skipped)
    from vqgen.metrics.reconstruction import psnr
    from vqgen.tokenizer.train import build_tokenizer

    torch.manual_seed(cfg.seed)
    x = sub.float_images(torch.arange(8))
    start = psnr(build_tokenizer(cfg).eval()(x).reconstruction, x).mean().item()
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        model = train_tokenizer(cfg, None, d, data=sub, show_progress=False)
    end = psnr(model.eval()(x).reconstruction, x).mean().item()
    assert end > start + 6.0, (start, end)  # about 10 dB → 18 dB: the MSE falls more than 4x


def test_class_conditioned_training_and_eval_encode_decode(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["tokenizer", "train", "--data", str(folder), "--preset", "tiny-cnn", "--out", str(run),
                 "--steps", "4", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["tokenizer", "eval", str(run), "--data", str(folder)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_images"] == 4 and summary["rfid"] is None  # every 10th of 40 held out
    for key in ("psnr", "ssim", "ms_ssim", "codebook_usage", "perplexity", "dead_codes"):
        assert isinstance(summary[key], (int, float)), key

    codes = tmp_path / "codes"
    assert main(["tokenizer", "encode", str(run), "--data", str(folder), "--out", str(codes),
                 "--shard-size", "16", "--no-progress"]) == 0
    ds = CodeDataset.load(codes)
    assert ds.codes.shape == (40, 4, 4) and len(ds.info["shards"]) == 3
    assert ds.texts[5] == "image 5" and ds.labels[5] == 2 and ds.metas[5] == {"n": 5}
    assert ds.info["class_names"] == ["a", "b", "c"]
    out = tmp_path / "decoded"
    assert main(["tokenizer", "decode", str(run), "--codes", str(codes), "--out", str(out), "--limit", "5",
                 "--no-progress"]) == 0
    dec = ImageFolder(out)
    assert len(dec) == 5 and dec[0].image.size == (16, 16) and dec[3].text == "image 3"
    # decoding the codes gives the same images as the model's own encode → decode
    from vqgen.tokenizer.encode import load_tokenizer
    model = load_tokenizer(run)
    data = load_image_set(folder, 16)
    direct = model.decode(model.encode(data.float_images(torch.arange(5))))
    from vqgen.data.image import to_tensor
    assert torch.allclose(to_tensor(dec[2].image), direct[2], atol=1 / 255 + 1e-6)

    # decoder conditioned on the class label (claims 31-43), trained with the same losses
    cond_run = tmp_path / "cond"
    assert main(["tokenizer", "train", "--data", str(folder), "--preset", "tiny", "--out", str(cond_run),
                 "--steps", "3", "--no-progress", "--set", "vit.cond.num_classes=3",
                 "--set", "vit.cond.kind=class"]) == 0
    model = load_tokenizer(cond_run)
    assert model.config.cond.kind == "class" and model.cond_embed is not None
    cond_out = tmp_path / "cond-decoded"
    assert main(["tokenizer", "decode", str(cond_run), "--codes", str(codes), "--out", str(cond_out),
                 "--limit", "3", "--no-progress"]) == 0  # labels come from the code records
    assert len(ImageFolder(cond_out)) == 3


def test_dead_code_restart_runs(folder, tmp_path):
    cfg = apply_overrides(get_preset("tokenizer", "tiny"),
                          ["steps=4", "codebook.restart_dead=true", "codebook.restart_every=2",
                           "codebook.dead_after=1", "log_every=2"])
    train_tokenizer(cfg, folder, tmp_path / "r", show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("train/restarted_codes", 0) > 0 for r in rows)


def test_holdout_split():
    train, held = holdout_split(25, 10)
    assert held.tolist() == [9, 19] and len(train) == 23
    assert set(train.tolist()).isdisjoint(held.tolist())
    all_, same = holdout_split(5, 0)
    assert torch.equal(all_, same)


@pytest.mark.parametrize("preset", ["tiny", "tiny-cnn"])
def test_decoder_only_training_keeps_the_codes_and_changes_the_decoder(folder, tmp_path, preset):
    base = apply_overrides(get_preset("tokenizer", preset), ["steps=3", "log_every=3"])
    first = train_tokenizer(base, folder, tmp_path / "a", show_progress=False)
    cfg = apply_overrides(base, ["steps=4", f"init_from={tmp_path / 'a' / 'model'}", "decoder_only=true",
                                 "optim.lr=0.01"])
    second = train_tokenizer(cfg, folder, tmp_path / "b", show_progress=False)
    before, after = _state(tmp_path / "a"), _state(tmp_path / "b")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(not name.startswith(second.ENCODER_SIDE) for name in changed)
    assert any(name.startswith("decoder.") for name in changed)
    images = load_image_set(folder, 16).float_images(torch.arange(8))  # (8, 3, 16, 16)
    assert torch.equal(first.encode(images), second.encode(images))


def test_decoder_only_needs_a_tokenizer_to_start_from():
    with pytest.raises(Exception, match="decoder_only"):
        apply_overrides(get_preset("tokenizer", "tiny"), ["decoder_only=true"])


def test_a_resumed_run_may_change_only_steps_and_limits(folder, tmp_path, capsys):
    run = str(tmp_path / "r")
    base = ["tokenizer", "train", "--data", str(folder), "--out", run, "--no-progress"]
    assert main([*base, "--preset", "tiny", "--steps", "2", "--set", "time_limit_min=5"]) == 0
    assert main([*base, "--steps", "3", "--set", "optim.lr=0.5"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert main([*base, "--steps", "3", "--set", "time_limit_min=9"]) == 0
    assert json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3


# -- WebDataset shards ---------------------------------------------------------------------------
def write_shards(root, num_shards: int = 3, per_shard: int = 8, bad: int = 0, size: int = 16):
    """Tiny img2dataset-style shards: KEY.png + KEY.txt (+ KEY.cls); the first ``bad`` PNGs are garbage."""
    import io
    import tarfile

    root.mkdir(parents=True)
    n = 0
    for s in range(num_shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for j in range(per_shard):
                buf = io.BytesIO()
                _blocks(n, size).save(buf, format="PNG")
                png = b"not a png" if n < bad else buf.getvalue()
                for ext, data in (("png", png), ("txt", f"image {n}".encode()), ("cls", str(n % 3).encode())):
                    info = tarfile.TarInfo(f"{n:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                n += 1
    return root


def test_tokenizer_train_eval_and_encode_read_webdataset_shards(tmp_path, capsys):
    shards = write_shards(tmp_path / "shards", bad=2)
    run = tmp_path / "run"
    # 22 good samples, ~1 in 4 held out, 2 DataLoader workers: 3 whole batches of 4 a pass, 4 passes in 12 steps
    train = ["tokenizer", "train", "--data", str(shards), "--preset", "tiny", "--out", str(run), "--steps", "12",
             "--no-progress", "--set", "holdout_every=4", "--set", "ckpt_every=5", "--set", "sample_every=6",
             "--set", "log_every=1"]
    assert main(train) == 0
    assert (run / "model" / "model.safetensors").is_file() and list((run / "samples").glob("*.png"))
    summary = json.loads((run / "data.json").read_text())
    assert summary["records"] == 12 and summary["skipped"] == {"corrupt": 2}, summary  # records: trained on a pass
    assert "12 records, 2 skipped (corrupt: 2)" in capsys.readouterr().out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 13))
    assert any("eval/psnr" in r for r in rows)

    # a pattern works as well as a folder, and the same command resumes mid-stream
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "checkpoints" / "step-0000012")
    (run / "checkpoints" / "latest").write_text("step-0000010\n")
    pattern = str(shards / "{00000..00002}.tar")
    assert main([*train[:3], pattern, *train[4:]]) == 0
    assert (run / "model" / "model.safetensors").is_file()

    assert main(["tokenizer", "eval", str(run), "--data", str(shards)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_images"] >= 1

    codes = tmp_path / "codes"
    assert main(["tokenizer", "encode", str(run), "--data", str(shards), "--out", str(codes), "--batch-size", "5",
                 "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["num_records"] == 22 and out["skipped"] == {"corrupt": 2}
    ds = CodeDataset.load(codes)
    assert ds.codes.shape == (22, 4, 4) and ds.texts[0] == "image 2" and ds.labels[0] == 2
