import json

import pytest
import torch
import torch.nn.functional as F

from vqgen.cli import main
from vqgen.config import ConfigError, get_preset
from vqgen.shapes.dataset import write_shapes_dataset
from vqgen.metrics.reconstruction import psnr
from vqgen.io import load_pretrained
from vqgen.superres import SuperResConfig, SuperResolution


@pytest.mark.parametrize("scale", [2, 4])
def test_output_shape_range_and_bicubic_start(scale):
    torch.manual_seed(0)
    model = SuperResolution(SuperResConfig(scale=scale, channels=8, num_blocks=1)).eval()
    x = torch.rand(2, 3, 12, 10)
    y = model(x)
    assert y.shape == (2, 3, 12 * scale, 10 * scale)
    assert y.min() >= 0 and y.max() <= 1
    torch.testing.assert_close(y, model.bicubic(x))  # the zero-initialised head starts as bicubic


def test_save_load_identical(tmp_path):
    torch.manual_seed(0)
    model = SuperResolution(SuperResConfig(scale=2, channels=8, num_blocks=2))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model.save_pretrained(tmp_path / "sr")
    loaded = load_pretrained(tmp_path / "sr")
    assert isinstance(loaded, SuperResolution)
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_config_validation():
    with pytest.raises(ConfigError):
        SuperResConfig(scale=3)


def test_overfits_a_few_images_above_bicubic(tmp_path):
    from vqgen.data.image import to_tensor
    from vqgen.shapes.dataset import ShapesDataset

    torch.manual_seed(0)
    high = torch.stack([to_tensor(r.image) for r in ShapesDataset(4, size=48, seed=3)])  # (4, 3, 48, 48)
    low = F.interpolate(high, size=(24, 24), mode="area")  # (4, 3, 24, 24)
    model = SuperResolution(SuperResConfig(scale=2, channels=16, num_blocks=2))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(80):
        loss = (model(low) - high).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        sr, bic = psnr(model(low), high).mean(), psnr(model.bicubic(low), high).mean()
    assert sr > bic + 0.5, f"super-resolved {sr:.2f} dB is not above bicubic {bic:.2f} dB"


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    import vqgen.tokenizer.config  # noqa: F401  (registers the tokenizer presets)
    from vqgen.tokenizer.train import build_tokenizer

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    build_tokenizer(get_preset("tokenizer", "tiny")).save_pretrained(path)  # 16px images
    return path


def test_cli_train_and_resume(tmp_path, tiny_tokenizer, capsys):
    data = tmp_path / "data32"
    write_shapes_dataset(data, 12, 32, seed=0, progress=False)
    run = tmp_path / "run"
    args = ["superres", "train", "--data", str(data), "--tokenizer", str(tiny_tokenizer), "--scale", "2",
            "--out", str(run), "--preset", "tiny", "--no-progress", "--set", "ckpt_every=2"]
    assert main(args + ["--steps", "3"]) == 0
    assert "bicubic" in capsys.readouterr().out
    model = load_pretrained(run / "model")
    assert isinstance(model, SuperResolution) and model.config.scale == 2
    assert main(args + ["--steps", "4"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and {"psnr_sr", "psnr_bicubic"} <= rows[-1].keys()


def test_cli_rejects_data_smaller_than_the_target(tmp_path, tiny_tokenizer, capsys):
    data = tmp_path / "data32"
    write_shapes_dataset(data, 4, 32, seed=0, progress=False)
    code = main(["superres", "train", "--data", str(data), "--tokenizer", str(tiny_tokenizer), "--scale", "4",
                 "--out", str(tmp_path / "run"), "--preset", "tiny", "--no-progress"])
    assert code == 2
    assert "at least 64x64" in capsys.readouterr().err


def test_cli_train_reads_webdataset_shards(tmp_path, tiny_tokenizer):
    from tests.test_tokenizer_train import write_shards

    shards = write_shards(tmp_path / "shards", num_shards=2, per_shard=6, size=32)
    run = tmp_path / "run"
    assert main(["superres", "train", "--data", str(shards), "--tokenizer", str(tiny_tokenizer), "--scale", "2",
                 "--out", str(run), "--preset", "tiny", "--no-progress", "--steps", "2"]) == 0
    summary = json.loads((run / "data.json").read_text())  # streamed: 2 steps are part of one pass
    assert summary["records"] is None and "part of one pass" in summary["source"] and summary["skipped_total"] == 0
