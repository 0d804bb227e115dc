"""A BPE text tokenizer trained on a data set's captions with Hugging Face ``tokenizers``.

Special tokens have fixed ids: ``[PAD]`` 0, ``[BOS]`` 1, ``[EOS]`` 2, ``[UNK]`` 3. Encoded text is
``[BOS] tokens [EOS]`` truncated and padded to ``max_len``; the mask marks real tokens. The null
text (classifier-free guidance) is an all-``[PAD]`` row with an all-False mask.

    tok = TextTokenizer.train(captions, vocab_size=512)
    tok.save(run_dir / "tokenizer.json")
    ids, mask = tok.encode(["a red circle"], max_len=32)    # (1, 32) long, (1, 32) bool
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from vqgen.errors import VqgenError

SPECIAL_TOKENS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
TOKENIZER_NAME = "tokenizer.json"


class TextTokenizer:
    """A trained BPE tokenizer (lower-cased, NFKC-normalised, split on whitespace and punctuation)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        for i, name in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(name) != i:
                raise VqgenError(f"text tokenizer must have {name} at id {i}")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2) -> "TextTokenizer":
        """Learn a BPE vocabulary of at most ``vocab_size`` entries from ``texts``."""
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE(unk_token="[UNK]", end_of_word_suffix="</w>"))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.decoder = decoders.BPEDecoder(suffix="</w>")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=SPECIAL_TOKENS, end_of_word_suffix="</w>",
                                      show_progress=False)
        texts = [t for t in texts if t]
        if not texts:
            raise VqgenError("cannot train a text tokenizer: the data set has no captions")
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(_renumbered(tok))

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_NAME
        if not path.is_file():
            raise VqgenError(f"text tokenizer {path} not found")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise VqgenError(f"cannot read text tokenizer {path}: {e}") from None

    @classmethod
    def from_str(cls, text: str) -> "TextTokenizer":
        """A tokenizer from its JSON text (as ``tokenizer.json`` holds it)."""
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    def save(self, path: str | Path) -> Path:
        from vqgen.io import atomic_write_text

        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_NAME
        atomic_write_text(path, self.tok.to_str())
        return path

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, texts: list[str | None], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[BOS] text [EOS]`` per row, truncated/padded to ``max_len``: ids (B, L) long, mask (B, L) bool.

        A ``None`` or empty text gives the null row (all padding, mask all False).
        """
        ids = torch.full((len(texts), max_len), PAD_ID, dtype=torch.long)
        mask = torch.zeros(len(texts), max_len, dtype=torch.bool)
        encs = self.tok.encode_batch([t or "" for t in texts], add_special_tokens=False)
        for i, (text, enc) in enumerate(zip(texts, encs)):
            if not text:
                continue
            row = [BOS_ID] + enc.ids[: max_len - 2] + [EOS_ID]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        return ids, mask

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Token ids (B, L) back to text, special tokens dropped."""
        return self.tok.decode_batch([[int(i) for i in row] for row in ids], skip_special_tokens=True)


def _renumbered(tok):
    """The same tokenizer with ids that depend on the captions only. Hugging Face's BPE trainer
    numbers the symbols of the vocabulary in hash order, which changes from process to process
    (the merges do not); renumber: the special tokens, the other symbols sorted, then each
    merge's result in merge order."""
    import json

    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    merged = ["".join(m if isinstance(m, list) else m.split(" ")) for m in spec["model"]["merges"]]
    made = set(merged)
    order = SPECIAL_TOKENS + sorted(t for t in vocab if t not in made and t not in SPECIAL_TOKENS)
    order += list(dict.fromkeys(t for t in merged if t in vocab))
    if sorted(order) != sorted(vocab):  # a layout this renumbering does not know: keep the trainer's ids
        return tok
    spec["model"]["vocab"] = {t: i for i, t in enumerate(order)}
    return Tokenizer.from_str(json.dumps(spec))
