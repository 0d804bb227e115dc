"""Writing clips with the dual-channel model: key frames, then recursive interpolation.

``sample_clip`` writes the frames of one sequence slot by slot with the model's caches: for the
``key`` task frame after frame (each sees the text, the frame rate and the frames before it); for
``interp`` the given frames are written in one pass and the missing ones in parallel (each sees
both neighbours). ``interpolate`` inserts a frame between every pair of a clip (``K`` frames →
``2K - 1``) in 5-frame windows of 3 given frames; ``generate_video`` writes 5 key frames at the
frame rate ``fps / 2**passes`` and doubles it ``passes`` times.

Classifier-free guidance batches every row with its null-text row (the frame rate is kept).
Every row draws its uniforms from its own generator before the loop, so a row's codes depend on
its seed alone, however rows are batched.
"""
from __future__ import annotations

import torch

from vqgen.errors import VqgenError
from vqgen.transformer.base import Condition
from vqgen.video.model import VideoTransformer


def _uniforms(generators, rows: int, count: int) -> torch.Tensor:
    """(rows, count) uniforms: one generator per row, one for all, or None (global RNG)."""
    if generators is None or isinstance(generators, torch.Generator):
        return torch.rand(rows, count, generator=generators)
    if len(generators) != rows:
        raise VqgenError(f"got {len(generators)} generators for {rows} rows")
    return torch.stack([torch.rand(count, generator=g) for g in generators])


def _draw(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """Inverse-CDF draw from ``logits`` (R, V) with uniforms ``u`` (R,); greedy at temperature 0."""
    if temperature == 0:
        return logits.argmax(-1)  # (R,)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), -1).values[:, -1:]  # (R, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    cdf = logits.softmax(-1).cumsum(-1)  # (R, V)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None].to(cdf.dtype)).squeeze(1).clamp(max=logits.shape[-1] - 1)


@torch.no_grad()
def sample_clip(model: VideoTransformer, cond: Condition, rate: torch.Tensor, task: str = "key", *,
                frames: int | None = None, given: torch.Tensor | None = None, known: torch.Tensor | None = None,
                guidance: float = 1.0, temperature: float = 1.0, top_k: int = 0, generator=None) -> torch.Tensor:
    """Codes (B, F, N) of ``frames`` frames. ``rate`` (B,) frame-rate indices. ``interp``: ``given``
    (B, F, N) holds the ``known`` (F,) frames, the others are written."""
    device = model.head.weight.device
    n = model.image.image_seq_len
    f = frames or model.config.frames
    b = cond.batch_size
    guided = guidance != 1.0
    rows = 2 * b if guided else b
    both = Condition.cat([cond, cond.null()]) if guided else cond
    rates = (rate.repeat(2) if guided else rate).to(device)
    cache = model.new_video_cache(rows, f, task, known, device)
    model.prefill_video(both.to(device), rates, cache, task)
    codes = torch.zeros(rows, f, n, dtype=torch.long, device=device)  # (R, F, N)
    if task == "interp":
        given_idx = known.nonzero().flatten().tolist()
        codes[:, given_idx] = given[:, given_idx].to(device).repeat(2 if guided else 1, 1, 1)
        model.run_slots(model.slot_inputs(codes[:, given_idx], 0, n + 1), given_idx, 0, cache, task)
        groups = [(~known.bool()).nonzero().flatten().tolist()]
    else:
        groups = [[i] for i in range(f)]
    width = max(len(g) for g in groups)
    u = _uniforms(generator, b, len(groups) * n * width).view(b, len(groups), n, width).to(device)  # (B, G, N, W)
    for gi, group in enumerate(groups):
        for p in range(n + 1):
            logits = model.run_slots(model.slot_inputs(codes[:, group], p, p + 1), group, p, cache, task)[:, :, 0]
            if p == n:  # the last code's slot: written for the later frames' temporal keys only
                break
            if guided:
                c, z = logits.chunk(2)  # (B, nf, V) each
                logits = z + guidance * (c - z)
            tok = _draw(logits.flatten(0, 1), u[:, gi, p, : len(group)].flatten(), temperature, top_k)
            tok = tok.view(b, len(group))  # (B, nf)
            codes[:, group, p] = tok.repeat(2, 1) if guided else tok
    return codes[:b]


def interpolate(model: VideoTransformer, codes: torch.Tensor, cond: Condition, rate: int, **kw) -> torch.Tensor:
    """Insert a frame between every pair: (B, K, N) → (B, 2K - 1, N), conditioned on the text and
    the frame rate ``rate`` of the result; windows of 3 given frames (K odd: K = 5, 9, 17, ...)."""
    b, k, n = codes.shape
    if k < 3 or k % 2 == 0 or model.config.frames != 5:
        raise VqgenError(f"interpolation works on an odd number (>= 3) of frames with 5-frame windows, got {k}")
    starts = list(range(0, k - 1, 2))
    given = torch.zeros(b, len(starts), 5, n, dtype=torch.long)  # (B, W, 5, N)
    for w, s in enumerate(starts):
        given[:, w, 0::2] = codes[:, s:s + 3].cpu()
    known = torch.tensor([True, False, True, False, True])
    rows = torch.arange(b).repeat_interleave(len(starts))  # (B*W,)
    gens = kw.pop("generator", None)
    if isinstance(gens, (list, tuple)):
        gens = [g for g in gens for _ in starts]
    rates = model.rate_index([rate] * (b * len(starts)))
    out = sample_clip(model, cond.index(rows.to(_device(cond))), rates, "interp", given=given.flatten(0, 1),
                      known=known, generator=gens, **kw).view(b, len(starts), 5, n)  # (B, W, 5, N)
    result = torch.zeros(b, 2 * k - 1, n, dtype=torch.long, device=out.device)
    for w, s in enumerate(starts):
        result[:, 2 * s: 2 * s + 5] = out[:, w]
    return result


def _device(cond: Condition):
    t = cond.text_ids if cond.text_ids is not None else torch.empty(0)
    return t.device


def passes_for(frames: int, key_frames: int = 5) -> int:
    """Interpolation passes that turn ``key_frames`` into ``frames`` (5 → 9 → 17 → 33)."""
    count, passes = key_frames, 0
    while count < frames:
        count, passes = 2 * count - 1, passes + 1
    if count != frames:
        raise VqgenError(f"--frames must be one of 5, 9, 17, 33, ... (5 key frames, doubled by interpolation), got {frames}")
    return passes


def generate_video(model: VideoTransformer, cond: Condition, *, frames: int = 17, fps: int = 8,
                   guidance: float = 1.0, temperature: float = 1.0, top_k: int = 0, generator=None,
                   interp_guidance: float | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Codes (B, frames, N) and the clip after each stage (key frames first): key frames at
    ``fps / 2**passes``, then each interpolation pass conditioned on its doubled rate."""
    passes = passes_for(frames, model.config.frames)
    if fps % (2 ** passes):
        raise VqgenError(f"--fps {fps} must be divisible by {2 ** passes} ({passes} interpolation passes)")
    key_rate = fps // 2 ** passes
    model.rate_index([key_rate * 2 ** i for i in range(passes + 1)])  # every rate must be known
    b = cond.batch_size
    opts = dict(temperature=temperature, top_k=top_k)
    codes = sample_clip(model, cond, model.rate_index([key_rate] * b), "key", guidance=guidance,
                        generator=generator, **opts)  # (B, 5, N)
    stages = [codes]
    for i in range(passes):
        codes = interpolate(model, codes, cond, key_rate * 2 ** (i + 1), generator=generator,
                            guidance=guidance if interp_guidance is None else interp_guidance, **opts)
        stages.append(codes)
    return codes, stages
