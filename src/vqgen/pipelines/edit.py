"""Text-guided editing (CogView2): regenerate the codes under a box with a CogLM model's infill.

    pipe = TextToImagePipeline.from_pretrained("runs/edit/pipeline")     # a CogLM-trained unified model
    out = pipe.edit(Image.open("scene.png"), (10, 12, 30, 32), "a blue square to the left of a red circle",
                    num_images=2, rerank=8, generator=torch.Generator().manual_seed(0))
    out.images[0].save("edited.png")

The image is centre-cropped to a square and resized to the pipeline's image size (as training
data is), the box is carried along, and the image is encoded with the pipeline's tokenizer. Every
code cell the box touches (partial cells included) is masked and written again by the model,
cell by cell in raster order, each from the prompt, every unmasked code and the masked codes
already written (CogLM's factorisation, with classifier-free guidance and the pipeline's logits
processors); every other code is kept as encoded. The codes are decoded, and with ``rerank=k``
the reranker keeps the best of ``k`` candidates per image, scored against the prompt.

Outside the box the *codes* are the source's; the pixels are the decoder's image of them. No
source pixels are pasted back: the output is one decoded image, without seams at the cell
edges, and its outside is what the tokenizer's own round trip of the source gives, up to how far
the decoder spreads a changed cell into its neighbours (docs/edit.md measures it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from vqgen.errors import VqgenError
from vqgen.pipelines.base import PipelineOutput, to_output_images
from vqgen.sampling.autoregressive import Generators, make_plan
from vqgen.sampling.processors import greedy, sample_from
from vqgen.sampling.settings import SamplingConfig
from vqgen.transformer.base import Condition

Box = Sequence[float]  # x0, y0, x1, y1 in pixels; x1 and y1 exclusive (a PIL box)


@dataclass
class EditOutput(PipelineOutput):
    """A :class:`PipelineOutput` of edited images, plus ``source_codes`` (1, *grid) (the encoded
    source), ``cells`` (*grid) bool (the regenerated cells), ``source`` (3, S, S) in [0, 1] (the
    cropped and resized source the codes came from) and ``box`` (the box in its pixels)."""

    source_codes: torch.Tensor | None = None
    cells: torch.Tensor | None = None
    source: torch.Tensor | None = None
    box: tuple[float, float, float, float] | None = None


def can_infill(model) -> bool:
    """Whether ``model`` fills a masked region from the text and the rest of the image (a CogLM-trained model)."""
    return callable(getattr(model, "coglm_logits", None)) and getattr(model.config, "coglm_mix", 0) > 0


def check_infill(model) -> None:
    """A one-line error unless ``model`` can infill, saying which model is needed."""
    if not can_infill(model):
        family = getattr(model.config, "family", type(model).__name__)
        raise VqgenError(f"editing needs a CogLM-trained unified model (`vqgen train --preset unified-small --set "
                         f"model.coglm_mix=0.5`), this pipeline's transformer is a {family!r} model without CogLM "
                         "training: it cannot fill a region")


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` → four numbers; a one-line error otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise VqgenError(f"--box must be four numbers x0,y0,x1,y1 (pixels, x1 and y1 exclusive), got {text!r}")
    return values  # type: ignore[return-value]


def check_box(box: Box, width: int, height: int) -> tuple[float, float, float, float]:
    """The box as four floats if it is a non-empty box inside a ``width`` x ``height`` image."""
    if len(box) != 4:
        raise VqgenError(f"a box is four numbers x0,y0,x1,y1, got {len(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x0 < x1 and y0 < y1):
        raise VqgenError(f"the box {_fmt(box)} is empty: it needs x0 < x1 and y0 < y1")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise VqgenError(f"the box {_fmt(box)} is outside the {width}x{height} image "
                         f"(x in 0..{width}, y in 0..{height})")
    return x0, y0, x1, y1


def _fmt(box: Box) -> str:
    return ",".join(f"{float(v):g}" for v in box)


def box_cells(box: Box, image_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """The code cells (h, w) bool that a pixel box of a ``image_size`` square image touches:
    every cell sharing some area with the box (partial cells included)."""
    x0, y0, x1, y1 = check_box(box, image_size, image_size)
    h, w = grid
    ch, cw = image_size / h, image_size / w  # pixels per cell
    eps = 1e-6  # a box edge on a cell edge does not touch the next cell
    r0, r1 = math.floor(y0 / ch + eps), math.ceil(y1 / ch - eps)
    c0, c1 = math.floor(x0 / cw + eps), math.ceil(x1 / cw - eps)
    cells = torch.zeros(h, w, dtype=torch.bool)  # (h, w)
    cells[r0:max(r1, r0 + 1), c0:max(c1, c0 + 1)] = True
    return cells


def square_source(image, box: Box, size: int) -> tuple[torch.Tensor, tuple[float, float, float, float]]:
    """``image`` (PIL, any size, or (3, size, size) in [0, 1]) centre-cropped to a square and
    resized to ``size``, as (3, size, size); and ``box`` (in the image's pixels) in that square's pixels."""
    from vqgen.data.image import resize_crop, to_rgb, to_tensor

    if isinstance(image, torch.Tensor):
        if image.shape != (3, size, size):
            raise VqgenError(f"the image tensor must be 3x{size}x{size}, got {tuple(image.shape)}")
        return image.float(), check_box(box, size, size)
    im = to_rgb(image)
    width, height = im.size
    x0, y0, x1, y1 = check_box(box, width, height)
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    scale = size / side
    mapped = [(x0 - left) * scale, (y0 - top) * scale, (x1 - left) * scale, (y1 - top) * scale]
    clipped = [min(max(v, 0.0), float(size)) for v in mapped]
    if not (clipped[0] < clipped[2] and clipped[1] < clipped[3]):
        raise VqgenError(f"the box {_fmt(box)} lies in the part of the {width}x{height} image that is cropped away "
                         f"(the centre {side}x{side} square is kept)")
    square = resize_crop(im.crop((left, top, left + side, top + side)), size)
    return to_tensor(square), tuple(clipped)  # (3, size, size)


def cell_pixels(cells: torch.Tensor, size: int) -> torch.Tensor:
    """Cells (h, w) bool → the pixels (size, size) bool they cover."""
    h, w = cells.shape
    return cells.repeat_interleave(size // h, 0).repeat_interleave(size // w, 1)  # (S, S)


def box_overlay(image: torch.Tensor, box: Box, cells: torch.Tensor) -> torch.Tensor:
    """``image`` (3, S, S) with the ``cells`` it regenerates greyed and ``box`` outlined in black (3, S, S)."""
    size = image.shape[-1]
    out = torch.where(cell_pixels(cells, size), 0.6 * image + 0.2, image)  # (3, S, S)
    x0, y0 = (min(max(int(v), 0), size - 1) for v in box[:2])
    x1, y1 = (min(max(math.ceil(v) - 1, 0), size - 1) for v in box[2:])
    out[:, y0, x0:x1 + 1] = 0.0
    out[:, y1, x0:x1 + 1] = 0.0
    out[:, y0:y1 + 1, x0] = 0.0
    out[:, y0:y1 + 1, x1] = 0.0
    return out


@torch.no_grad()
def infill(model, codes: torch.Tensor, region: torch.Tensor, cond, config: SamplingConfig,
           generator: Generators = None, guidance: torch.Tensor | None = None,
           clusters: torch.Tensor | None = None) -> torch.Tensor:
    """Codes (B, *grid) with the cells ``region`` (B, *grid) bool written again by a CogLM model,
    the rest unchanged. Cell ``i`` of the union of the rows' regions is drawn in raster order from
    one full forward pass under the ``coglm`` mask: guided logits ``null + λ(cond − null)`` (the
    conditional and null rows in one batch), the config's processors (temperature, top-k, top-p,
    cluster), and the row's uniform number ``i`` of :func:`make_plan` (so a row depends on its
    own generator only; ``temperature=0`` takes the most likely code)."""
    check_infill(model)
    shape = codes.shape
    plan = make_plan(model, cond, codes.shape[0], config, generator, clusters, guidance)
    codes = model.flat_codes(codes).clone().to(next(model.parameters()).device)  # (B, N)
    region = region.reshape(codes.shape).bool().to(codes.device)  # (B, N)
    both = plan.cond if plan.null is None else Condition.cat([plan.cond, plan.null])
    reps = 1 if plan.null is None else 2
    for i in region.any(0).nonzero().flatten().tolist():
        logits = model.coglm_logits(codes.repeat(reps, 1), both, region.repeat(reps, 1))[0][:, i]  # (reps*B, V)
        if plan.scale is not None:
            cond_logits, null_logits = logits.chunk(2)  # (B, V) each
            logits = torch.lerp(null_logits, cond_logits, plan.scale[:, i:i + 1])  # (B, V)
        logits = plan.chain(logits, plan.generator)  # (B, V)
        tok = greedy(logits) if plan.greedy else sample_from(logits, plan.u[:, i])  # (B,)
        codes[:, i] = torch.where(region[:, i], tok, codes[:, i])
    return codes.view(shape)


@torch.no_grad()
def edit(pipe, image, box: Box, prompt: str, num_images: int = 1, *, settings: SamplingConfig | None = None,
         guidance_scale: float | None = None, temperature: float | None = None, top_k: int | None = None,
         top_p: float | None = None, cluster: int | None = None, rerank: int | None = None,
         generator: Generators = None, output_type: str = "pil") -> EditOutput:
    """``num_images`` edits of ``image`` (PIL or (3, S, S) in [0, 1]): the code cells under ``box``
    (x0, y0, x1, y1 in the image's pixels) regenerated for ``prompt`` (best describe the whole
    edited image: the model was trained on whole-scene captions), the other codes kept.
    ``generator``: one, or one per image (its candidates share it). Settings as in
    :meth:`Pipeline.__call__`; the pipeline's decoder setting does not apply (editing always fills)."""
    from vqgen.pipelines.base import OUTPUT_TYPES, _row_generators

    check_infill(pipe.transformer)
    text = pipe.validate_prompt(prompt)
    if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 1:
        raise VqgenError(f"num_images must be a positive integer, got {num_images!r}")
    if output_type not in OUTPUT_TYPES:
        raise VqgenError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}")
    s = pipe.check_settings((settings or pipe.sampling).merged(
        guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p, cluster=cluster,
        rerank=rerank))
    source, square_box = square_source(image, box, pipe.image_size)  # (3, S, S)
    cells = box_cells(square_box, pipe.image_size, tuple(pipe.transformer.grid))  # (h, w)
    dev = next(pipe.tokenizer.parameters()).device
    source_codes = pipe.tokenizer.encode(source[None].to(dev)).to(pipe.device)  # (1, h, w)
    k = s.rerank
    rows = num_images * k
    gens = _row_generators(generator, [text] * num_images, k)  # one per image: its candidates share it
    cond = pipe.condition([text] * rows, pipe.device)
    codes = infill(pipe.transformer, source_codes.expand(rows, *cells.shape), cells.expand(rows, -1, -1), cond, s,
                   generator=gens, guidance=s.row_guidance(None, rows, 1), clusters=pipe.clusters)  # (R, h, w)
    images = pipe.decode(codes, cond)  # (R, 3, S, S)
    scores = None
    if k > 1:
        all_scores = pipe.rerank_scores(images, codes, [text] * rows).view(num_images, k)  # (n, k)
        best = all_scores.argmax(1)  # (n,)
        pick = torch.arange(num_images, device=best.device) * k + best  # (n,)
        scores = all_scores.gather(1, best[:, None]).squeeze(1).cpu()  # (n,)
        codes, images = codes[pick.to(codes.device)], images[pick.to(images.device)]
    return EditOutput(images=to_output_images(images, output_type), codes=codes.cpu(), scores=scores,
                      prompts=[text] * num_images, source_codes=source_codes.cpu(), cells=cells, source=source,
                      box=square_box)
