"""The one type of sampling settings, from the command line and the HTTP API down to the logits.

    settings = SamplingConfig(guidance_scale=2.0, temperature=0.5, rerank=8)   # checked here, once
    settings = settings.merged(temperature=None, top_k=20)                    # None: keep the value
    guidance = settings.row_guidance(per_prompt=[2.0, 3.0], rows_per_prompt=4)  # (8,) float tensor

A pipeline keeps one as its defaults (``pipeline.json`` → ``"sampling"``); a call, ``vqgen
generate``, ``vqgen eval shapes`` and the server merge their options into it, and the result goes
as it is to the decoder, which builds its logits processors from it. Every value is checked in
``__post_init__`` with a :class:`~vqgen.errors.ConfigError` that names the field, so the CLI and
the server refuse the same values with the same words.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, Sequence

import torch

from vqgen.config import require
from vqgen.errors import ConfigError

MAX_SEED = 2**63 - 1  # seeds are 63-bit: torch.Generator.manual_seed and the server take them all
MAX_RERANK = 16  # candidates per image, on the command line and the server alike (best of 8 is the default)
MAX_GUIDANCE = 100.0
MAX_TEMPERATURE = 10.0
GUIDANCE_SCHEDULES = ("constant", "linear", "cosine")
SJD_INITS = ("last", "random")
MAX_SJD_WINDOW = 1024
LOPAR_ORDERS = ("diagonal", "raster")
THRESHOLDINGS = ("none", "static", "dynamic")
MAX_LOPAR_WINDOW = 256


def _number(value: Any, name: str, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    require(ok and not isinstance(value, bool), name,
            f"must be {'an integer' if integer else 'a number'}, got {value!r}")


def check_seed(value: Any) -> int:
    """A seed as an int; a ConfigError unless 0 <= seed <= 2**63 - 1."""
    _number(value, "seed", integer=True)
    require(0 <= value <= MAX_SEED, "seed", f"must be in 0..{MAX_SEED}, got {value}")
    return int(value)


def check_guidance(value: Any, name: str = "guidance_scale") -> float:
    """A guidance scale as a float; a ConfigError naming ``name`` unless 0 <= value <= 100."""
    _number(value, name)
    require(math.isfinite(value) and 0 <= value <= MAX_GUIDANCE, name,
            f"must be a number in [0, {MAX_GUIDANCE:g}] (1 = off), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SamplingConfig:
    """How to turn a condition into image codes, and how many candidates to rank.

    ``decoder``: the registered decoder that writes the codes (``autoregressive``: KV-cached, one
    code per step; ``naive``: the full-recompute reference). ``guidance_scale``: λ of
    classifier-free guidance, 1 = off, 0 = unconditional. ``guidance_schedule``: ``constant`` (λ at
    every position), ``linear`` or ``cosine`` (from 1 at the first image position up to λ at the
    last). ``temperature``: 0 = greedy. ``top_k``: 0 = off. ``top_p``: 1 = off. ``cluster``: keep
    the N most likely codebook clusters (CogView2's cluster sampling; the pipeline needs fitted
    clusters), 0 = off. ``rerank``: candidates drawn per image, the reranker keeps the best (1 =
    off). ``compile``: ``torch.compile`` the decode step. ``cuda_graph``: replay one captured
    decode step on CUDA. ``sjd_window``, ``sjd_init``, ``sjd_max_iters``: the ``sjd`` decoder's
    window of guessed codes per forward pass, how guesses past the last pass's outputs are made
    (``last``: drawn from the window's last distribution; ``random``: uniform codes) and a cap on
    its window passes after which it writes one code per pass (0 = no cap); see ``sampling/sjd.py``.

    Hierarchical pipelines (``direct_sr`` and ``lopar`` decoders, ``sampling/direct_sr.py`` and
    ``sampling/lopar.py``): the settings above drive the low-resolution autoregressive stage;
    ``sr_temperature`` / ``sr_top_k`` the super-resolution draws (0 = greedy / off).
    ``lopar_remask``: the fraction of the high-resolution cells re-masked after direct
    super-resolution and rewritten by LoPAR (0 = direct super-resolution only). ``lopar_window``:
    side of the local windows that tile the grid; ``lopar_order``: the fixed order inside a window
    (``diagonal``: anti-diagonals, 2k-1 local steps; ``raster``: k*k steps); ``lopar_passes``: forward
    passes of the iterative stage, the local steps split into that many consecutive groups (0 =
    one pass per local step).

    Diffusion pipelines (``pipelines/diffusion.py``): ``thresholding`` of the predicted clean image
    at every step, Imagen's ``none`` / ``static`` (clip to [-1, 1]) / ``dynamic`` (per sample, clip
    to the p-th percentile of |x0| when above 1 and rescale); token decoders ignore it.
    """

    decoder: str = "autoregressive"
    guidance_scale: float = 1.0
    guidance_schedule: Literal["constant", "linear", "cosine"] = "constant"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cluster: int = 0
    rerank: int = 1
    compile: bool = False
    cuda_graph: bool = False
    sjd_window: int = 16
    sjd_init: Literal["last", "random"] = "last"
    sjd_max_iters: int = 0
    sr_temperature: float = 1.0
    sr_top_k: int = 0
    lopar_remask: float = 0.5
    lopar_window: int = 4
    lopar_order: Literal["diagonal", "raster"] = "diagonal"
    lopar_passes: int = 0
    thresholding: Literal["none", "static", "dynamic"] = "none"

    def __post_init__(self):
        require(isinstance(self.decoder, str) and bool(self.decoder), "decoder", "must name a decoder")
        check_guidance(self.guidance_scale)
        require(self.guidance_schedule in GUIDANCE_SCHEDULES, "guidance_schedule",
                f"must be one of {', '.join(GUIDANCE_SCHEDULES)}, got {self.guidance_schedule!r}")
        _number(self.temperature, "temperature")
        require(math.isfinite(self.temperature) and 0 <= self.temperature <= MAX_TEMPERATURE, "temperature",
                f"must be in [0, {MAX_TEMPERATURE:g}] (0 = greedy), got {self.temperature!r}")
        _number(self.top_k, "top_k", integer=True)
        require(self.top_k >= 0, "top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        _number(self.top_p, "top_p")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1] (1 = off), got {self.top_p!r}")
        _number(self.cluster, "cluster", integer=True)
        require(self.cluster >= 0, "cluster", f"must be >= 0 clusters (0 = off), got {self.cluster}")
        _number(self.rerank, "rerank", integer=True)
        require(1 <= self.rerank <= MAX_RERANK, "rerank",
                f"must be 1..{MAX_RERANK} candidates per image (1 = off), got {self.rerank}")
        for flag in ("compile", "cuda_graph"):
            require(isinstance(getattr(self, flag), bool), flag, "must be true or false")
        _number(self.sjd_window, "sjd_window", integer=True)
        require(1 <= self.sjd_window <= MAX_SJD_WINDOW, "sjd_window",
                f"must be 1..{MAX_SJD_WINDOW} codes per pass, got {self.sjd_window}")
        require(self.sjd_init in SJD_INITS, "sjd_init", f"must be one of {', '.join(SJD_INITS)}, got {self.sjd_init!r}")
        _number(self.sjd_max_iters, "sjd_max_iters", integer=True)
        require(self.sjd_max_iters >= 0, "sjd_max_iters", f"must be >= 0 passes (0 = no cap), got {self.sjd_max_iters}")
        _number(self.sr_temperature, "sr_temperature")
        require(math.isfinite(self.sr_temperature) and 0 <= self.sr_temperature <= MAX_TEMPERATURE, "sr_temperature",
                f"must be in [0, {MAX_TEMPERATURE:g}] (0 = greedy), got {self.sr_temperature!r}")
        _number(self.sr_top_k, "sr_top_k", integer=True)
        require(self.sr_top_k >= 0, "sr_top_k", f"must be >= 0 (0 = off), got {self.sr_top_k}")
        _number(self.lopar_remask, "lopar_remask")
        require(0 <= self.lopar_remask <= 1, "lopar_remask",
                f"must be a fraction in [0, 1] (0 = direct super-resolution only), got {self.lopar_remask!r}")
        _number(self.lopar_window, "lopar_window", integer=True)
        require(1 <= self.lopar_window <= MAX_LOPAR_WINDOW, "lopar_window",
                f"must be 1..{MAX_LOPAR_WINDOW} codes a side, got {self.lopar_window}")
        require(self.lopar_order in LOPAR_ORDERS, "lopar_order",
                f"must be one of {', '.join(LOPAR_ORDERS)}, got {self.lopar_order!r}")
        _number(self.lopar_passes, "lopar_passes", integer=True)
        require(self.lopar_passes >= 0, "lopar_passes",
                f"must be >= 0 passes (0 = one per local step), got {self.lopar_passes}")
        require(self.thresholding in THRESHOLDINGS, "thresholding",
                f"must be one of {', '.join(THRESHOLDINGS)}, got {self.thresholding!r}")

    @classmethod
    def from_dict(cls, data: Any, where: str = "sampling") -> "SamplingConfig":
        """Settings from a JSON object (``pipeline.json``); unknown keys are an error naming them."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be an object of sampling settings, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"{where}: unknown sampling settings {sorted(unknown)}")
        return cls(**data)

    def merged(self, **changes: Any) -> "SamplingConfig":
        """These settings with every change that is not None applied (and checked)."""
        given = {k: v for k, v in changes.items() if v is not None}
        unknown = set(given) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown sampling settings {sorted(unknown)}")
        return replace(self, **given) if given else self

    def processors(self, clusters: torch.Tensor | None = None):
        """The logits processors these settings ask for, in order: temperature, top-k, top-p, cluster."""
        from vqgen.sampling.processors import Chain, ClusterTopK, Temperature, TopK, TopP

        procs = []
        if self.temperature not in (0.0, 1.0):
            procs.append(Temperature(self.temperature))
        if self.top_k:
            procs.append(TopK(self.top_k))
        if self.top_p < 1.0:
            procs.append(TopP(self.top_p))
        if self.cluster:
            if clusters is None:
                raise ConfigError("cluster: cluster sampling needs the codebook clusters (a pipeline fitted with "
                                  "`vqgen pipeline clusters DIR`, or clusters=vqgen.sampling.load_clusters(dir))",
                                  "cluster")
            procs.append(ClusterTopK(clusters, self.cluster))
        return Chain(procs)

    @property
    def batch_key(self) -> "SamplingConfig":
        """The settings that must be equal for rows to share one decoder call (all but guidance,
        which a call takes per row)."""
        return replace(self, guidance_scale=1.0)

    def row_guidance(self, per_prompt: float | Sequence[float] | None, rows_per_prompt: int,
                     prompts: int) -> torch.Tensor:
        """λ for every row, (prompts * rows_per_prompt,) float32: ``per_prompt`` may be None (this
        config's scale), one number, or one number per prompt; each value is checked."""
        if per_prompt is None:
            values = [self.guidance_scale] * prompts
        elif isinstance(per_prompt, (list, tuple)):
            if len(per_prompt) != prompts:
                raise ConfigError(f"guidance_scale has {len(per_prompt)} values for {prompts} prompts: "
                                  "give one per prompt", "guidance_scale")
            values = [self.guidance_scale if v is None else check_guidance(v) for v in per_prompt]
        else:
            values = [check_guidance(per_prompt)] * prompts
        return torch.tensor(values, dtype=torch.float32).repeat_interleave(rows_per_prompt)  # (P*R,)
