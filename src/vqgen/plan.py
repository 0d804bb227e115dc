"""A memory and throughput planner for training the token transformers (``vqgen plan``).

For a preset, a number of GPUs and their memory it counts, per GPU and in bytes:

* **parameters, gradients, optimizer states**: fp32 master weights, fp32 gradients and the
  optimizer's states (AdamW: 2 per weight; Adafactor: a row and a column per matrix; SGD: none),
  all sharded over the GPUs by FSDP (``/ N``);
* **working set of FSDP**: the gathered (unsharded) compute-dtype weights of the root (embeddings,
  head) and of two blocks (the one computing and the one prefetched), and one block's unsharded
  gradients before they are reduce-scattered;
* **activations**: what autograd keeps for backward, counted tensor by tensor from the block code
  (``transformer/layers.py``; SDPA keeps q, k, v, its output and a log-sum-exp per row, not the
  attention matrix), at the start of backward (the peak) the fp32 log-softmax of the logits with its
  gradient and the logits' gradient, and dropout masks (1 byte). With
  activation checkpointing a block keeps only its input, and one block's activations exist
  again while it is recomputed.

Parameter counts are closed-form per family (checked exactly against the model built on the
meta device, ``tests/test_plan.py``); tokens/s per GPU = MFU x peak FLOP/s / training FLOPs per
image token (3 x the forward's 2 x multiply-adds, + one more forward with checkpointing).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vqgen.errors import ConfigError

GB = 1e9
OPTIMIZERS = ("adamw", "adafactor", "sgd")


@dataclass(frozen=True)
class Shape:
    """What the planner reads of a model config: widths, depths and token counts."""

    family: str
    d: int
    mlp: int
    heads: int
    depth: int                 # decoder blocks
    enc_depth: int             # text-encoder blocks (parti, trained encoder), else 0
    codebook: int
    grid: tuple[int, ...]      # the code grid (one position table per axis)
    image_tokens: int
    text_len: int              # text tokens (parti: encoder input; unified: in the stream)
    text_vocab: int
    classes: int = 0
    sandwich: bool = False
    dropout: float = 0.0
    pretrained_width: int = 0  # parti with a frozen pretrained text encoder: its hidden size
    text_norm: bool = False    # parti: LayerNorms on the frozen states (and the pooled text)
    text_pool: bool = False    # parti: the pooled text projected into every decoder input
    adapter_depth: int = 0     # parti: trained blocks over the projected frozen states


def _tokens(grid) -> int:
    n = 1
    for g in grid:
        n *= g
    return n


def shape_of(model_cfg) -> Shape:
    c = model_cfg
    text = getattr(c, "text", None)
    trained = text is not None and text.encoder == "trained"
    pre = 0
    if text is not None and not trained:
        from vqgen.text.encoder import pretrained_hidden_size

        pre = pretrained_hidden_size(text.pretrained_dir)
    return Shape(family=c.family, d=c.dim, mlp=c.mlp_dim, heads=c.heads, depth=c.depth,
                 enc_depth=getattr(c, "encoder_depth", 0) if trained else 0, codebook=c.codebook_size,
                 grid=tuple(c.grid), image_tokens=_tokens(c.grid), text_len=text.max_len if text is not None else 0,
                 text_vocab=text.vocab_size if text is not None else 0, classes=getattr(c, "num_classes", 0),
                 sandwich=c.norm == "sandwich", dropout=c.dropout, pretrained_width=pre,
                 text_norm=getattr(c, "text_norm", False), text_pool=getattr(c, "text_pool", False),
                 adapter_depth=getattr(c, "adapter_depth", 0))


# ----------------------------------------------------------------------------- parameters
def block_params(d: int, mlp: int, cross: bool, sandwich: bool) -> int:
    """One ``layers.Block``: LayerNorms (2d each), self-attention (qkv + proj with biases), the
    optional cross-attention (q, kv, proj), the MLP, and Sandwich's post-LayerNorms."""
    attn = 4 * d * d + 4 * d
    n = 2 * d + attn + 2 * d + (2 * d * mlp + mlp + d)
    sublayers = 2
    if cross:
        n += 2 * d + attn
        sublayers += 1
    return n + (2 * d * sublayers if sandwich else 0)


def param_breakdown(s: Shape) -> dict[str, int]:
    """Parameters by part: ``blocks`` (decoder), ``encoder`` (text blocks), ``root`` (the rest:
    embeddings, position tables, final norms, heads), exactly as the family builds them."""
    d = s.d
    pos = sum(s.grid) * d
    if s.family == "vim":
        root = s.codebook * d + (s.classes + 1) * d + pos + 2 * d + d * s.codebook
        return {"blocks": s.depth * block_params(d, s.mlp, False, s.sandwich), "encoder": 0, "root": root}
    if s.family == "parti":
        if s.pretrained_width == 0:
            text = s.text_vocab * d + s.text_len * d
        else:  # the projection of the frozen states, their optional LayerNorm
            text = s.pretrained_width * d + d + (2 * s.pretrained_width if s.text_norm else 0)
        if s.text_pool:
            text += d * d + d + (2 * d if s.text_norm else 0)
        root = text + 2 * d + d + d + s.codebook * d + pos + 2 * d + d * s.codebook  # enc_norm, null, bos
        text_blocks = s.enc_depth + s.adapter_depth
        return {"blocks": s.depth * block_params(d, s.mlp, True, s.sandwich),
                "encoder": text_blocks * block_params(d, s.mlp, False, s.sandwich), "root": root}
    if s.family == "unified":
        root = s.text_vocab * d + s.text_len * d + s.codebook * d + pos + 2 * d + d * s.text_vocab + d * s.codebook
        return {"blocks": s.depth * block_params(d, s.mlp, False, s.sandwich), "encoder": 0, "root": root}
    raise ConfigError(f"the planner has no parameter count for family {s.family!r} (vim, parti, unified)")


def matrix_shapes(s: Shape) -> list[tuple[int, int]]:
    """(rows, cols) of every parameter of two or more dimensions (Adafactor keeps rows + cols
    floats for each; ``(1, 1, d)`` slots count as ``(1, d)``); the rest are vectors."""
    d = s.d
    self_block = [(3 * d, d), (d, d), (s.mlp, d), (d, s.mlp)]
    cross_block = self_block + [(d, d), (2 * d, d), (d, d)]
    out = [(s.codebook, d), (d, s.codebook)[::-1]] + [(g, d) for g in s.grid]  # tok_emb, head, positions
    if s.family == "vim":
        return out + [(s.classes + 1, d)] + self_block * s.depth
    if s.family == "parti":
        text = [(s.text_vocab, d), (s.text_len, d)] if s.pretrained_width == 0 else [(d, s.pretrained_width)]
        return out + text + [(1, d), (1, d)] + self_block * s.enc_depth + cross_block * s.depth
    return out + [(s.text_vocab, d), (s.text_len, d), (s.text_vocab, d)] + self_block * s.depth


def optimizer_floats(s: Shape, optimizer: str, params: int) -> int:
    """fp32 optimizer-state values for the whole model."""
    if optimizer == "adamw":
        return 2 * params
    if optimizer == "sgd":
        return 0
    mats = matrix_shapes(s)
    in_mats = sum(r * c for r, c in mats)
    return sum(r + c for r, c in mats) + (params - in_mats)  # factored rows/cols; vectors keep all


# ----------------------------------------------------------------------------- activations
def block_activation_bytes(s: Shape, tokens: int, memory: int, cross: bool, act: int) -> float:
    """Bytes one block keeps for backward for ``tokens`` rows (batch x sequence) attending to
    ``memory`` rows of text: per token, LayerNorm inputs (d each), linear inputs, SDPA's q, k, v
    and output (4d) and log-sum-exp (one per head), the MLP's hidden twice (fc1 output into GELU,
    GELU output into fc2); cross-attention adds its norm input, q-linear input, q and output,
    and keys/values of the memory. Sandwich norms keep their inputs too. Dropout masks: 1 byte."""
    d, m = s.d, s.mlp
    per_token = (d + d + 4 * d + d + d + d + 2 * m) * act + s.heads * 4  # norm1, qkv in, sdpa q/k/v/out, proj in, norm2, fc1 in, hidden x2; lse fp32
    sub = 2
    if cross:
        per_token += (d + d + 2 * d + d) * act + s.heads * 4  # norm_c, q in, sdpa q/out, proj in; lse
        sub += 1
    if s.sandwich:
        per_token += sub * d * act
    if s.dropout > 0:
        per_token += sub * d + m  # residual branches and the MLP hidden
    extra = memory * 2 * d * act if cross else 0  # the memory's keys and values
    return tokens * per_token + extra


@dataclass
class Plan:
    preset: str
    gpus: int
    gpu_mem_gb: float
    seq: int
    batch: int
    params: dict[str, int]
    bytes: dict[str, float] = field(default_factory=dict)
    flops_per_token: float = 0.0
    tokens_per_s: dict[str, float] = field(default_factory=dict)
    fits: dict[str, bool] = field(default_factory=dict)

    @property
    def total_params(self) -> int:
        return sum(self.params.values())


def plan(model_cfg, preset: str, gpus: int, gpu_mem_gb: float, seq: int | None = None, batch: int = 8,
         optimizer: str = "adamw", bf16: bool = True, fsdp: bool = True, mfu: float = 0.4,
         peak_tflops: float = 989.0, overhead_gb: float = 2.0) -> Plan:
    """The memory per GPU (bytes by item, with and without activation checkpointing) and the
    tokens/s per GPU for ``batch`` sequences of ``seq`` image tokens per GPU and step."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r} ({', '.join(OPTIMIZERS)})")
    if gpus < 1 or batch < 1:
        raise ConfigError("gpus and batch must be >= 1")
    if seq is not None and seq != _tokens(model_cfg.grid):
        side = round(seq ** 0.5)
        if side * side != seq or len(model_cfg.grid) != 2:
            raise ConfigError(f"--seq {seq}: image tokens of a square 2-D grid (e.g. 256, 1024, 4096)")
        model_cfg = dataclasses.replace(model_cfg, grid=(side, side))
    s = shape_of(model_cfg)
    seq = s.image_tokens
    parts = param_breakdown(s)
    p_total = sum(parts.values())
    shard = gpus if fsdp else 1
    act = 2 if bf16 else 4
    b = {}
    b["params"] = 4 * p_total / shard
    b["grads"] = 4 * p_total / shard
    b["optimizer"] = 4 * optimizer_floats(s, optimizer, p_total) / shard
    per_block = block_params(s.d, s.mlp, s.family == "parti", s.sandwich)
    if fsdp:  # gathered copies (compute dtype) of the root and two blocks; one block's unsharded grads
        b["fsdp_working_set"] = act * (parts["root"] + 2 * per_block) + 4 * per_block
    else:  # DDP: bf16 autocast keeps a cast copy of every weight through the step
        b["fsdp_working_set"] = 2.0 * p_total if bf16 else 0.0
    text_rows = s.text_len if s.family in ("parti", "unified") else 0
    stream = seq + (text_rows if s.family == "unified" else 0)  # unified: text and image in one stream
    dec = block_activation_bytes(s, batch * stream, batch * (1 + text_rows), s.family == "parti", act)
    enc = block_activation_bytes(s, batch * text_rows, 0, False, act) if s.enc_depth else 0.0
    vocab_out = s.codebook + (s.text_vocab if s.family == "unified" else 0)
    # at the start of backward: the fp32 log-softmax kept by cross-entropy, its gradient and the logits'
    # gradient (3 x 4 bytes per logit; bf16 heads also write their own output), the final norm's input and output
    logits = batch * seq * vocab_out * (12 + (act if act == 2 else 0)) + batch * seq * s.d * act * 2
    b["activations"] = s.depth * dec + s.enc_depth * enc + logits
    ac_inputs = batch * (stream * s.depth + text_rows * s.enc_depth) * s.d * act
    b["activations_ckpt"] = ac_inputs + max(dec, enc) + logits
    b["overhead"] = overhead_gb * GB
    static = b["params"] + b["grads"] + b["optimizer"] + b["fsdp_working_set"] + b["overhead"]
    b["total"] = static + b["activations"]
    b["total_ckpt"] = static + b["activations_ckpt"]

    fwd = 2 * sample_macs(s, seq, stream, 1 + text_rows) / seq  # forward FLOPs per image token
    out = Plan(preset, gpus, gpu_mem_gb, seq, batch, parts, b, 3 * fwd)  # training = forward + 2x in backward
    peak = peak_tflops * 1e12 * mfu
    out.tokens_per_s = {"no_ckpt": peak / (3 * fwd), "ckpt": peak / (4 * fwd)}
    out.fits = {"no_ckpt": b["total"] <= gpu_mem_gb * GB, "ckpt": b["total_ckpt"] <= gpu_mem_gb * GB}
    return out


def sample_macs(s: Shape, seq: int, stream: int, memory: int) -> float:
    """Multiply-adds of one sample's forward: each block's linear layers and attention (scores
    and values over the whole stream, as SDPA computes them) per stream token, cross-attention
    over the ``memory`` rows and their keys/values (parti), the text encoder, and the heads."""
    d = s.d
    linear = 4 * d * d + 2 * d * s.mlp
    per_token = linear + 2 * stream * d
    macs = s.depth * stream * per_token
    if s.family == "parti":
        macs += s.depth * (stream * (2 * d * d + 2 * memory * d) + memory * 2 * d * d)
        text = memory - 1
        macs += s.enc_depth * text * (linear + 2 * text * d)
    macs += seq * d * s.codebook  # the image head
    if s.family == "unified":
        macs += s.text_len * d * s.text_vocab
    return macs


# ----------------------------------------------------------------------------- report
def format_plan(p: Plan, mfu: float, peak_tflops: float) -> str:
    g = lambda x: f"{x / GB:8.2f}"  # noqa: E731
    b = p.bytes
    lines = [
        f"{p.preset}: {p.total_params / 1e9:.3f}B parameters ({p.total_params:,}: blocks {p.params['blocks']:,}, "
        f"text encoder {p.params['encoder']:,}, embeddings/heads {p.params['root']:,})",
        f"{p.gpus} GPUs x {p.gpu_mem_gb:g} GB, {p.batch} sequences of {p.seq} image tokens per GPU and step",
        "GB per GPU                    no ckpt     ckpt",
        f"  parameters (fp32, sharded) {g(b['params'])} {g(b['params'])}",
        f"  gradients (fp32, sharded)  {g(b['grads'])} {g(b['grads'])}",
        f"  optimizer states (sharded) {g(b['optimizer'])} {g(b['optimizer'])}",
        f"  FSDP gathered working set  {g(b['fsdp_working_set'])} {g(b['fsdp_working_set'])}",
        f"  activations                {g(b['activations'])} {g(b['activations_ckpt'])}",
        f"  runtime overhead           {g(b['overhead'])} {g(b['overhead'])}",
        f"  total                      {g(b['total'])} {g(b['total_ckpt'])}",
        f"  fits in {p.gpu_mem_gb:g} GB               {'yes' if p.fits['no_ckpt'] else 'NO':>8} "
        f"{'yes' if p.fits['ckpt'] else 'NO':>8}",
        f"training FLOPs per image token: {p.flops_per_token / 1e9:.2f} GFLOP; at MFU {mfu:g} of {peak_tflops:g} TFLOP/s: "
        f"{p.tokens_per_s['no_ckpt']:,.0f} tokens/s per GPU ({p.tokens_per_s['ckpt']:,.0f} with checkpointing, "
        f"which recomputes the forward)",
    ]
    return "\n".join(lines)
