"""The pipeline every generator shares, and the stages it is made of.

A pipeline turns inputs (a text prompt, a class label, or nothing) into images in five stages::

    condition   inputs → Condition rows                 (the pipeline type: text / class / none)
    Decoder     Condition → codes (B, *grid)            by name: DECODERS["autoregressive"], ...
    tokenizer   codes → images (B, 3, H, W) in [0, 1]   the stage-1 decoder
    Reranker    best of ``rerank`` candidates per image  by name: RERANKERS["clip"], ...
    Upsampler   images → larger images                  by name: UPSAMPLERS["conv"], ...

Stages are small protocols, found by name in lazy registries (``"module:attribute"`` strings), so
a new decoder, reranker or upsampler is one module plus one registry line here — no pipeline or
server code changes. The names are recorded in ``pipeline.json``; its layout::

    {"pipeline_type": "text_to_image" | "class_conditional" | "unconditional",
     "components": {"tokenizer": "tokenizer", "transformer": "transformer",
                    "reranker": "reranker", "upsampler": "upsampler"},   # sub-folders; last two optional
     "stages": {"reranker": "clip", "upsampler": "conv"},              # registry names of the optional stages
     "sampling": {...},                      # the default SamplingConfig (decoder, guidance, rerank, ...)
     "max_prompt_length": 200, "class_names": [...], "clusters": "clusters.safetensors",
     "vqgen_version": "..."}

Every component folder is a saved model (``config.json`` + ``model.safetensors``);
``clusters.safetensors`` (optional) holds the codebook clusters for ``sampling.cluster``.
"""
from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol, Sequence

import torch

from vqgen.errors import ConfigError, VqgenError
from vqgen.io import atomic_write_json, read_json_object, replace_dir, resolve_inside
from vqgen.sampling.autoregressive import Generators
from vqgen.sampling.settings import SamplingConfig

PIPELINE_NAME = "pipeline.json"
CLUSTERS_FILE = "clusters.safetensors"
OUTPUT_TYPES = ("pil", "np", "pt", "codes")
COMPONENTS = ("tokenizer", "transformer", "reranker", "upsampler")
PIPELINE_KEYS = {"pipeline_type", "components", "stages", "sampling", "max_prompt_length", "class_names",
                 "clusters", "vqgen_version"}



# ----------------------------------------------------------------------------- stage protocols
class Decoder(Protocol):
    """Turns a condition into codes: ``(model, cond, num=, config=, generator=, progress=, clusters=,
    guidance=) → (num, *grid) long``. ``num`` rows (a multiple of the condition's rows; the
    condition may be empty for an unconditional model); ``guidance`` is λ per row (num,);
    ``generator`` one generator or one per row; ``clusters`` the (V,) cluster of each code or None."""

    def __call__(self, model, cond, *, num: int, config: SamplingConfig, generator: Generators, progress: bool,
                 clusters: torch.Tensor | None, guidance: torch.Tensor | None) -> torch.Tensor: ...


class Reranker(Protocol):
    """Scores candidates, higher is better: ``score(images (N, 3, H, W), codes (N, *grid), prompts) → (N,)``."""

    @classmethod
    def accepts(cls, model) -> bool: ...

    def score(self, images: torch.Tensor, codes: torch.Tensor, prompts: list[str]) -> torch.Tensor: ...


class Upsampler(Protocol):
    """``(images (N, 3, H, W), prompts, generator) → (N, 3, H*scale, W*scale)``; ``scale`` is an int."""

    scale: int

    @classmethod
    def accepts(cls, model) -> bool: ...

    def __call__(self, images: torch.Tensor, prompts: list[str], generator: Generators) -> torch.Tensor: ...


# Registries: name → "module:attribute", imported on first use.
DECODERS: dict[str, str] = {
    "autoregressive": "vqgen.sampling.autoregressive:generate",
    "naive": "vqgen.sampling.autoregressive:generate_naive",
    "sjd": "vqgen.sampling.sjd:generate_sjd",
    "lopar": "vqgen.sampling.lopar:generate_lopar", "direct_sr": "vqgen.sampling.direct_sr:generate_direct_sr",
}
RERANKERS: dict[str, str] = {
    "clip": "vqgen.pipelines.stages:ClipRerank",
    "caption_perplexity": "vqgen.pipelines.stages:CaptionPerplexityRerank",
}
UPSAMPLERS: dict[str, str] = {
    "conv": "vqgen.pipelines.stages:ConvUpsampler",
    "diffusion_sr": "vqgen.pipelines.diffusion:DiffusionUpsampler",
}
_REGISTRIES = {"decoder": DECODERS, "reranker": RERANKERS, "upsampler": UPSAMPLERS}


def resolve(kind: str, name: str):
    """The object registered as ``name`` in the ``kind`` registry (decoder/reranker/upsampler)."""
    registry = _REGISTRIES[kind]
    if name not in registry:
        field_name = "decoder" if kind == "decoder" else f"stages.{kind}"
        raise ConfigError(f"{field_name}: unknown {kind} {name!r}; known: {', '.join(sorted(registry))}",
                          field_name)
    module, attr = registry[name].split(":")
    return getattr(importlib.import_module(module), attr)


def wrap_stage(kind: str, model, name: str | None = None):
    """``model`` wrapped as a ``kind`` stage (reranker or upsampler): the named one, or the first
    registered stage that accepts it; a one-line error if none does."""
    names = [name] if name is not None else list(_REGISTRIES[kind])
    for n in names:
        stage = resolve(kind, n)
        if stage.accepts(model):
            return n, stage(model)
    raise VqgenError(f"a {type(model).__name__} cannot be a {kind}" + (f" of kind {name!r}" if name else "")
                     + f" (registered: {', '.join(_REGISTRIES[kind])})")


# ----------------------------------------------------------------------------- outputs
@dataclass
class PipelineOutput:
    """What a pipeline call returns; row ``i`` of every field belongs to ``prompts[i]``.

    ``images``: list of PIL images, (H, W, 3) uint8 arrays or (3, H, W) float tensors in [0, 1]
    (per ``output_type``), None for ``"codes"``. ``codes``: (N, *grid) long. ``scores``: (N,)
    reranker scores of the kept images, or None when no reranking ran. ``prompts``: the prompt
    (or class name, or "" when unconditional) of each row.
    """

    images: list | None
    codes: torch.Tensor
    scores: torch.Tensor | None
    prompts: list[str] = field(default_factory=list)


def to_output_images(images: torch.Tensor, output_type: str) -> list | None:
    """(N, 3, H, W) in [0, 1] → a list in the asked form (None for ``"codes"``)."""
    from vqgen.data.image import to_uint8

    if output_type == "codes":
        return None
    if output_type == "pt":
        return list(images.cpu().unbind(0))
    arrays = to_uint8(images)  # (N, H, W, 3)
    if output_type == "np":
        return list(arrays)
    from PIL import Image

    return [Image.fromarray(a) for a in arrays]


def default_model_dir() -> Path:
    """Where the bundled default model lives inside the installed package."""
    return Path(__file__).resolve().parents[1] / "assets" / "default_model"


# ----------------------------------------------------------------------------- pipeline.json
def read_pipeline_json(directory: Path) -> dict:
    """``pipeline.json`` checked strictly: known keys, required components present, every named
    sub-folder inside ``directory``. A file of the first layout (flat ``defaults``) is read too."""
    path = directory / PIPELINE_NAME
    if not path.is_file():
        raise VqgenError(f"{directory} is not a pipeline directory: {PIPELINE_NAME} is missing")
    data = read_json_object(path)
    if "defaults" in data:
        data = _from_first_layout(data)
    unknown = set(data) - PIPELINE_KEYS
    if unknown:
        raise VqgenError(f"{path}: unknown keys {sorted(unknown)}")
    if data.get("pipeline_type") not in PIPELINE_TYPES:
        raise VqgenError(f"{path}: pipeline_type is {data.get('pipeline_type')!r}, expected one of "
                         f"{sorted(PIPELINE_TYPES)}")
    comps = data.get("components")
    if not isinstance(comps, dict) or set(comps) - set(COMPONENTS) or {"tokenizer", "transformer"} - set(comps):
        raise VqgenError(f"{path}: 'components' must name tokenizer and transformer (and optionally "
                         "reranker, upsampler)")
    for name, sub in comps.items():
        if not isinstance(sub, str) or not resolve_inside(directory, sub).is_dir():
            raise VqgenError(f"{path}: component {name!r} folder {sub!r} is missing")
    stages = data.get("stages", {})
    if not isinstance(stages, dict) or set(stages) - {"reranker", "upsampler"}:
        raise VqgenError(f"{path}: 'stages' may name only a reranker and an upsampler")
    for kind, name in stages.items():
        if kind not in comps:
            raise VqgenError(f"{path}: stage {kind!r} has no component folder")
        resolve(kind, name)
    return data


def _from_first_layout(data: dict) -> dict:
    """The first ``pipeline.json`` layout (flat ``defaults``, ``superres`` component) in today's."""
    data = dict(data)
    old = dict(data.pop("defaults") or {})
    if "max_prompt_length" in old:
        data["max_prompt_length"] = old.pop("max_prompt_length")
    if old.get("top_k") is None:
        old.pop("top_k", None)
    if old.get("top_p") is None:
        old.pop("top_p", None)
    data["sampling"] = old
    comps = dict(data.get("components") or {})
    if "superres" in comps:
        comps["upsampler"] = comps.pop("superres")
    data["components"] = comps
    return data


# ----------------------------------------------------------------------------- the pipeline
class Pipeline:
    """Inputs → codes → images through named stages; subclasses set the condition kind.

    ``tokenizer`` and ``transformer`` are required; ``reranker`` (a CLIP reranker or a
    text-after-image transformer) and ``upsampler`` (a super-resolution model) are optional
    component models, wrapped as stages by the registries. ``sampling`` holds the default
    settings of a call; ``clusters`` the (V,) codebook clusters for ``sampling.cluster``.
    """

    pipeline_type: ClassVar[str] = ""
    cond_kind: ClassVar[str] = ""

    def __init__(self, tokenizer, transformer, reranker=None, upsampler=None,
                 sampling: SamplingConfig = SamplingConfig(), *, max_prompt_length: int = 200,
                 class_names: Sequence[str] | None = None, clusters: torch.Tensor | None = None,
                 stages: dict[str, str] | None = None):
        if getattr(transformer, "cond_kind", None) != self.cond_kind:
            raise VqgenError(f"a {self.pipeline_type} pipeline needs a transformer conditioned on "
                             f"{self.cond_kind!r}, got {type(transformer).__name__} "
                             f"({getattr(transformer, 'cond_kind', None)!r})")
        if tuple(tokenizer.grid_size) != tuple(transformer.grid):
            raise VqgenError(f"the tokenizer's code grid {tuple(tokenizer.grid_size)} does not match the "
                             f"transformer's {tuple(transformer.grid)}")
        if tokenizer.config.quantizer.codebook_size != transformer.codebook_size:
            raise VqgenError(f"the tokenizer has {tokenizer.config.quantizer.codebook_size} codes, the transformer "
                             f"{transformer.codebook_size}")
        if not isinstance(max_prompt_length, int) or max_prompt_length < 1:
            raise ConfigError(f"max_prompt_length: must be a positive integer, got {max_prompt_length!r}")
        stages = stages or {}
        self.tokenizer, self.transformer, self.reranker, self.upsampler = tokenizer, transformer, reranker, upsampler
        self.stage_names: dict[str, str] = {}
        self.rerank_stage = self.upsample_stage = None
        if reranker is not None:
            self.stage_names["reranker"], self.rerank_stage = wrap_stage("reranker", reranker, stages.get("reranker"))
        if upsampler is not None:
            self.stage_names["upsampler"], self.upsample_stage = wrap_stage("upsampler", upsampler,
                                                                           stages.get("upsampler"))
        self.max_prompt_length = max_prompt_length
        self.class_names = self._class_names(class_names)
        if clusters is not None and (clusters.dim() != 1 or clusters.numel() != transformer.codebook_size):
            raise VqgenError(f"clusters must assign each of the {transformer.codebook_size} codes a cluster, "
                             f"got shape {tuple(clusters.shape)}")
        self.clusters = clusters
        self.sampling = sampling
        self.check_settings(sampling)

    def _class_names(self, names: Sequence[str] | None) -> list[str] | None:
        return None

    # -- facts -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def image_size(self) -> int:
        """Side of the decoded images in pixels (before any upsampling)."""
        return int(self.tokenizer.config.image_size)

    @property
    def upsample_scale(self) -> int | None:
        """How much the upsampler enlarges images, or None without one."""
        return None if self.upsample_stage is None else int(self.upsample_stage.scale)

    def check_settings(self, settings: SamplingConfig) -> SamplingConfig:
        """``settings`` if this pipeline can run them (decoder known, reranker/clusters present)."""
        resolve("decoder", settings.decoder)
        if settings.rerank > 1 and self.rerank_stage is None:
            raise ConfigError("rerank: reranking needs a pipeline with a reranker/ component (use 1)", "rerank")
        if settings.cluster and self.clusters is None:
            raise ConfigError("cluster: this pipeline has no codebook clusters; fit them with "
                              "`vqgen pipeline clusters DIR --num N`", "cluster")
        if settings.cluster and self.clusters is not None and settings.cluster > int(self.clusters.max()) + 1:
            raise ConfigError(f"cluster: keep at most {int(self.clusters.max()) + 1} clusters (the pipeline's), "
                              f"got {settings.cluster}", "cluster")
        if self.cond_kind == "none" and settings.guidance_scale != 1.0:
            raise ConfigError("guidance_scale: an unconditional model has nothing to guide by; use 1",
                              "guidance_scale")
        return settings

    # -- inputs (per pipeline type) ------------------------------------------------------------
    def validate_prompt(self, prompt: Any) -> str:
        """One input checked and normalised; raises ``VqgenError`` when the pipeline cannot take it."""
        raise NotImplementedError

    def condition(self, labels: list[str], device):
        """The ``Condition`` of rows with these (validated) inputs."""
        raise NotImplementedError

    def _inputs(self, prompt) -> list[str]:
        items = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt]
        if not items:
            raise VqgenError("the prompt list is empty")
        return [self.validate_prompt(p) for p in items]

    # -- save / load -----------------------------------------------------------------------
    @classmethod
    def from_components(cls, tokenizer: str | Path, transformer: str | Path, reranker: str | Path | None = None,
                        upsampler: str | Path | None = None, device="cpu", sampling: SamplingConfig | None = None,
                        **options) -> "Pipeline":
        """Assemble a pipeline from saved component directories (e.g. training runs' ``model/``)."""
        models = load_components({"tokenizer": tokenizer, "transformer": transformer, "reranker": reranker,
                                  "upsampler": upsampler}, device)
        return cls(**models, sampling=sampling or SamplingConfig(), **options)

    @classmethod
    def from_pretrained(cls, dir: str | Path | None = None, device="cpu") -> "Pipeline":
        """Load a pipeline directory strictly; ``None`` loads the bundled default model. Called on
        :class:`Pipeline` it returns whatever type the directory holds; on a subclass it insists."""
        return load_pipeline(dir, device, expect=None if cls is Pipeline else cls)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``pipeline.json``, a sub-folder per component and the clusters (if any)."""
        from vqgen import __version__
        from vqgen.sampling.clusters import save_clusters

        directory = Path(directory)
        if directory.exists() and not (directory / PIPELINE_NAME).is_file() and \
                (not directory.is_dir() or any(directory.iterdir())):
            raise VqgenError(f"cannot write a pipeline to {directory}: it exists and is not a pipeline directory "
                             "(it would be replaced)")
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a saved pipeline is shared like any folder
        except OSError as e:
            raise VqgenError(f"cannot write a pipeline to {directory}: {e.strerror or e}") from None
        try:
            names = {}
            for name in COMPONENTS:
                model = getattr(self, name)
                if model is not None:
                    model.save_pretrained(tmp / name)
                    names[name] = name
            meta = {"pipeline_type": self.pipeline_type, "components": names, "stages": self.stage_names,
                    "sampling": asdict(self.sampling), "max_prompt_length": self.max_prompt_length}
            if self.class_names is not None:
                meta["class_names"] = self.class_names
            if self.clusters is not None:
                save_clusters(tmp, self.clusters)
                meta["clusters"] = CLUSTERS_FILE
            atomic_write_json(tmp / PIPELINE_NAME, {**meta, "vqgen_version": __version__})
            replace_dir(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    def with_components(self, **changes) -> "Pipeline":
        """A pipeline like this one with some components (or ``sampling``, ``clusters``) replaced."""
        kwargs = dict(tokenizer=self.tokenizer, transformer=self.transformer, reranker=self.reranker,
                      upsampler=self.upsampler, sampling=self.sampling, max_prompt_length=self.max_prompt_length,
                      class_names=self.class_names, clusters=self.clusters)
        stages = {k: v for k, v in self.stage_names.items() if k not in changes}
        return type(self)(**{**kwargs, **changes}, stages=stages)

    # -- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: Any = None, num_images: int = 1, *, settings: SamplingConfig | None = None,
                 guidance_scale: float | Sequence[float] | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, cluster: int | None = None,
                 rerank: int | None = None, decoder: str | None = None, prefix_image=None,
                 prefix_rows: int | None = None, super_resolution: bool = False, generator: Generators = None,
                 output_type: str = "pil", progress: bool = False) -> PipelineOutput:
        """Generate ``num_images`` images per input; results grouped by input.

        ``prompt``: a text (text-to-image), a class name or index (class-conditional), nothing
        (unconditional), or a list of them. ``settings`` replaces the pipeline's default sampling
        settings; the keyword settings (None = keep) are merged into them and checked once.
        ``guidance_scale`` and ``generator`` may be lists with one entry per input: a batch of
        different requests then gives the same images as one call per request with the same
        seeds. ``rerank=k`` draws ``k`` candidates per image and keeps the one the reranker
        scores highest. ``prefix_image`` + ``prefix_rows``: keep the image's first code rows
        and write the rest (image completion). ``super_resolution``: run the upsampler.
        """
        labels = self._inputs(prompt)
        if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 1:
            raise VqgenError(f"num_images must be a positive integer, got {num_images!r}")
        if output_type not in OUTPUT_TYPES:
            raise VqgenError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}")
        per_prompt_guidance = isinstance(guidance_scale, (list, tuple))
        s = (settings or self.sampling).merged(
            guidance_scale=None if per_prompt_guidance else guidance_scale, temperature=temperature, top_k=top_k,
            top_p=top_p, cluster=cluster, rerank=rerank, decoder=decoder)
        self.check_settings(s)
        if super_resolution and self.upsample_stage is None:
            raise VqgenError("super_resolution needs a pipeline with an upsampler/ component")
        k = s.rerank
        per_prompt = num_images * k  # rows sampled per input: image-major, candidates within
        rows = [p for p in labels for _ in range(per_prompt)]
        guidance = s.row_guidance(guidance_scale if per_prompt_guidance else None, per_prompt, len(labels))  # (R,)
        cond = self.condition(rows, self.device)
        if prefix_image is not None or prefix_rows is not None:
            cond = replace(cond, prefix_codes=self.prefix_codes(prefix_image, prefix_rows, len(rows)))
        decode = resolve("decoder", s.decoder)
        gens = _row_generators(generator, labels, per_prompt)
        codes = decode(self.transformer, cond, num=len(rows), config=s, generator=gens, progress=progress,
                       clusters=self.clusters, guidance=guidance)  # (R, *grid)
        images = self.decode(codes, cond)  # (R, 3, H, W)
        scores = None
        if k > 1:
            all_scores = self.rerank_scores(images, codes, rows).view(-1, k)  # (P*n, k)
            best = all_scores.argmax(1)  # (P*n,)
            pick = torch.arange(best.shape[0], device=best.device) * k + best  # (P*n,)
            scores = all_scores.gather(1, best[:, None]).squeeze(1).cpu()  # (P*n,)
            codes, images = codes[pick.to(codes.device)], images[pick.to(images.device)]
        kept = [p for p in labels for _ in range(num_images)]
        if super_resolution:
            images = self.upsample_stage(images, kept, generator)  # (N, 3, H*s, W*s)
        return PipelineOutput(images=to_output_images(images, output_type), codes=codes.cpu(), scores=scores,
                              prompts=kept)

    def prefix_codes(self, image, rows: int | None, batch: int) -> torch.Tensor:
        """The first ``rows`` code rows of ``image`` (PIL, or (3, H, W) in [0, 1]) as (batch, rows*w) codes."""
        if image is None or rows is None:
            raise VqgenError("image completion needs both a prefix image and a number of prefix rows")
        grid = tuple(self.transformer.grid)
        if not isinstance(rows, int) or isinstance(rows, bool) or not 1 <= rows < grid[0]:
            raise VqgenError(f"prefix_rows must be 1..{grid[0] - 1} (the code grid has {grid[0]} rows), got {rows!r}")
        if not isinstance(image, torch.Tensor):  # a PIL image, brought to the size as training data is
            from vqgen.data.image import resize_crop, to_rgb, to_tensor

            image = to_tensor(resize_crop(to_rgb(image), self.image_size))
        if image.shape != (3, self.image_size, self.image_size):
            raise VqgenError(f"the prefix image must be 3x{self.image_size}x{self.image_size}, "
                             f"got {tuple(image.shape)}")
        dev = next(self.tokenizer.parameters()).device
        codes = self.tokenizer.encode(image[None].to(dev))  # (1, *grid)
        per_row = int(torch.tensor(grid[1:]).prod())
        return codes.flatten(1)[:, :rows * per_row].expand(batch, -1).to(self.device)  # (B, rows*w)

    @torch.no_grad()
    def rerank_scores(self, images: torch.Tensor, codes: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Higher is better (N,), by the pipeline's reranker stage."""
        if self.rerank_stage is None:
            raise VqgenError("reranking needs a pipeline with a reranker/ component")
        return self.rerank_stage.score(images, codes, prompts)  # (N,)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, cond=None, batch_size: int = 256) -> torch.Tensor:
        """Codes (N, *grid) → images (N, 3, H, W) in [0, 1] with the image tokenizer (a
        class-conditioned tokenizer decoder takes the rows' class ids from ``cond``)."""
        dev = next(self.tokenizer.parameters()).device
        kind = getattr(getattr(self.tokenizer.config, "cond", None), "kind", "none")
        labels = None
        if kind == "class":
            if cond is None or cond.class_ids is None:
                raise VqgenError("this tokenizer's decoder is conditioned on a class: it needs a class-conditional "
                                 "pipeline")
            labels = cond.class_ids.to(dev)  # (N,)
        elif kind != "none":
            raise VqgenError(f"pipelines cannot drive a tokenizer decoder conditioned on {kind!r} yet")
        parts = [self.tokenizer.decode(codes[i:i + batch_size].to(dev),
                                       None if labels is None else labels[i:i + batch_size])
                 for i in range(0, codes.shape[0], batch_size)]
        return torch.cat(parts)  # (N, 3, H, W)


def _row_generators(generator: Generators, labels: list, per_prompt: int):
    """One generator for the batch, or a list with one per input repeated for its rows (the
    rows of an input share, and consume in order, its generator)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    gens = list(generator)
    if len(gens) != len(labels):
        raise VqgenError(f"generator has {len(gens)} values for {len(labels)} prompts: give one per prompt")
    if any(not isinstance(g, torch.Generator) for g in gens):
        raise VqgenError("give a torch.Generator for every prompt or a single one")
    return [g for g in gens for _ in range(per_prompt)]


# ----------------------------------------------------------------------------- loading
def load_components(paths: dict[str, str | Path | None], device) -> dict[str, Any]:
    """Load the component models named in ``paths`` (None = absent optional component)."""
    from vqgen.io import load_pretrained
    from vqgen.tokenizer.base import VQTokenizer
    from vqgen.transformer.base import TokenModel

    want = {"tokenizer": VQTokenizer, "transformer": TokenModel}
    out: dict[str, Any] = {}
    for name in COMPONENTS:
        path = paths.get(name)
        if path is None:
            out[name] = None
            continue
        model = load_pretrained(path, device=device)
        if name in want and not isinstance(model, want[name]):
            raise VqgenError(f"{path} holds a {type(model).__name__}, not a {want[name].__name__} ({name})")
        out[name] = model.eval()
    return out


PIPELINE_TYPES: dict[str, str] = {
    "text_to_image": "vqgen.pipelines.text_to_image:TextToImagePipeline",
    "class_conditional": "vqgen.pipelines.class_conditional:ClassConditionalPipeline",
    "unconditional": "vqgen.pipelines.unconditional:UnconditionalPipeline",
    "text_to_video": "vqgen.pipelines.text_to_video:TextToVideoPipeline",
    "diffusion_text_to_image": "vqgen.pipelines.diffusion:DiffusionTextToImagePipeline",
    "hierarchical_text_to_image": "vqgen.pipelines.hierarchical:HierarchicalTextToImagePipeline",
}


def pipeline_class(pipeline_type: str) -> type[Pipeline]:
    module, attr = PIPELINE_TYPES[pipeline_type].split(":")
    return getattr(importlib.import_module(module), attr)


def _check_expected(cls: type, expect: type | None, directory: Path, kind) -> None:
    """A one-line error unless ``cls`` is ``expect`` or a subclass of it (a hierarchical or diffusion
    text-to-image pipeline is still a text-to-image pipeline)."""
    if expect is not None and not issubclass(cls, expect):
        raise VqgenError(f"{directory / PIPELINE_NAME}: pipeline_type is {kind!r}, expected "
                         f"{expect.pipeline_type!r}")


def load_pipeline(dir: str | Path | None = None, device="cpu", expect: type[Pipeline] | None = None) -> Pipeline:
    """Load any pipeline directory (``None``: the bundled default model); with ``expect``, a
    one-line error unless the directory holds that pipeline type."""
    directory = Path(dir) if dir is not None else default_model_dir()
    if dir is None and not (directory / PIPELINE_NAME).is_file():
        raise VqgenError(f"the bundled default model is missing from {directory}; "
                         "train it with `python configs/default_model.py` or pass --model DIR")
    if not directory.is_dir():
        raise VqgenError(f"pipeline directory {directory} does not exist")
    kind = read_json_object(directory / PIPELINE_NAME).get("pipeline_type") \
        if (directory / PIPELINE_NAME).is_file() else None
    own = pipeline_class(kind) if kind in PIPELINE_TYPES else None
    if own is not None and hasattr(own, "load_directory"):
        # a type with its own component layout (diffusion: unet/ + sr/) reads its own directory
        _check_expected(own, expect, directory, kind)
        return own.load_directory(directory, device)
    data = read_pipeline_json(directory)
    cls = pipeline_class(data["pipeline_type"])
    _check_expected(cls, expect, directory, data["pipeline_type"])
    sampling = SamplingConfig.from_dict(data.get("sampling", {}), f"{directory / PIPELINE_NAME}: sampling")
    models = load_components({k: resolve_inside(directory, v) for k, v in data["components"].items()}, device)
    clusters = None
    if data.get("clusters"):
        from vqgen.sampling.clusters import load_clusters

        if data["clusters"] != CLUSTERS_FILE:
            raise VqgenError(f"{directory / PIPELINE_NAME}: clusters must be {CLUSTERS_FILE!r}")
        clusters = load_clusters(directory).to(device)
    options = {"max_prompt_length": data.get("max_prompt_length", 200), "stages": data.get("stages")}
    if data.get("class_names") is not None:
        options["class_names"] = data["class_names"]
    return cls(**models, sampling=sampling, clusters=clusters, **options)
