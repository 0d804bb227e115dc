"""The one builder of tiny pipeline components for tests (like diffusers' ``get_dummy_components``).

``tiny_components()`` returns randomly initialised, seeded components that fit together: a
16 px ViT-VQGAN (4x4 codes of 64), a one-block transformer of the asked family, and optionally a
CLIP reranker sharing the transformer's text tokenizer, a text-after-image caption scorer, a ×2
upsampler, codebook clusters; ``tiny_pipeline(**kw)`` assembles the pipeline of the matching type.
"""
from __future__ import annotations

import torch

from vqgen.config import apply_overrides, get_preset

CAPTIONS = ["a red circle", "two blue squares", "a green triangle above a red circle",
            "a small yellow square", "a purple circle to the left of an orange triangle"] * 4
TINY_MODEL = ["model.grid=4,4", "model.codebook_size=64", "model.dim=32", "model.mlp_dim=64", "model.depth=1"]


def tiny_components(family: str = "parti", num_classes: int = 0, reranker: str | None = None,
                    upsampler: bool = False, captions: list[str] | None = None,
                    tokenizer_classes: int = 0) -> dict:
    """Components for a pipeline: ``tokenizer``, ``transformer`` and the optional ``reranker``
    (``"clip"`` or ``"caption"``) and ``upsampler``; ``family`` is vim, parti or unified.
    ``tokenizer_classes`` > 0 gives the tokenizer a class-conditioned decoder."""
    import vqgen.tokenizer.config  # noqa: F401  (registers the tokenizer presets)
    import vqgen.transformer.config  # noqa: F401  (registers the transformer presets)
    from vqgen.rerank import ClipReranker
    from vqgen.superres.model import SuperResConfig, SuperResolution
    from vqgen.text.bpe import TextTokenizer
    from vqgen.tokenizer.vit_vqgan import ViTVQGAN
    from vqgen.transformer import build_model

    torch.manual_seed(0)
    vit = get_preset("tokenizer", "tiny").vit
    if tokenizer_classes:
        from dataclasses import replace

        from vqgen.tokenizer.base import CondConfig

        vit = replace(vit, cond=CondConfig(kind="class", num_classes=tokenizer_classes))
    out = {"tokenizer": ViTVQGAN(vit).eval()}
    over = list(TINY_MODEL)
    if family == "vim":
        over.append(f"model.num_classes={num_classes}")
    model = build_model(apply_overrides(get_preset("transformer", f"{family}-tiny"), over).model).eval()
    if family != "vim":
        model.text_tokenizer = TextTokenizer.train(captions or CAPTIONS, vocab_size=64, min_frequency=1)
    out["transformer"] = model
    if reranker == "clip":
        clip = apply_overrides(get_preset("clip_reranker", "tiny"), [f"vocab_size={model.text_tokenizer.vocab_size}"])
        out["reranker"] = ClipReranker(clip, model.text_tokenizer).eval()
    elif reranker == "caption":
        torch.manual_seed(1)
        run = apply_overrides(get_preset("transformer", "unified-tiny"), TINY_MODEL + ["model.image_first=true"])
        scorer = build_model(run.model).eval()
        scorer.text_tokenizer = model.text_tokenizer
        out["reranker"] = scorer
    if upsampler:
        out["upsampler"] = SuperResolution(SuperResConfig(scale=2, channels=8, num_blocks=1)).eval()
    return out


def tiny_pipeline(family: str = "parti", num_classes: int = 0, reranker: str | None = None, upsampler: bool = False,
                  captions: list[str] | None = None, tokenizer_classes: int = 0, **options):
    """The pipeline of the matching type (text for parti/unified, class for vim with classes,
    unconditional for vim without) over :func:`tiny_components`; ``options`` go to its constructor
    (``sampling=``, ``max_prompt_length=``, ``class_names=``, ``clusters=``)."""
    from vqgen.pipelines import ClassConditionalPipeline, TextToImagePipeline, UnconditionalPipeline

    parts = tiny_components(family, num_classes, reranker, upsampler, captions, tokenizer_classes)
    cls = TextToImagePipeline if family != "vim" else ClassConditionalPipeline if num_classes else UnconditionalPipeline
    return cls(**parts, **options)
