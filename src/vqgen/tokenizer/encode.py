"""Loading a trained tokenizer from a run, pre-tokenizing an image folder, and decoding codes back.

``encode_folder`` runs the encoder once over a data set and writes code shards
(:mod:`vqgen.data.codes`) with each record's caption, label and metadata, so stage 2 never runs
the encoder. ``decode_codes`` turns a code directory back into an image folder.
"""
from __future__ import annotations

from pathlib import Path

import torch

from vqgen.data.codes import CodeDataset, CodeShardWriter
from vqgen.errors import VqgenError
from vqgen.io import CONFIG_NAME, WEIGHTS_NAME
from vqgen.runtime import latest_checkpoint, progress
from vqgen.tokenizer.base import VQTokenizer


def load_tokenizer(path: str | Path, device: str | torch.device = "cpu") -> VQTokenizer:
    """A tokenizer from a saved model directory, or from a run (``RUN/model``, else its latest checkpoint)."""
    from vqgen.io import load_pretrained

    path = Path(path)
    candidates = [path, path / "model"]
    ckpt = latest_checkpoint(path) if path.is_dir() else None
    if ckpt is not None:
        candidates.append(ckpt / "tokenizer")
    for c in candidates:
        if (c / CONFIG_NAME).is_file() and (c / WEIGHTS_NAME).is_file():
            model = load_pretrained(c, device=device)
            if not isinstance(model, VQTokenizer):
                raise VqgenError(f"{c} holds a {type(model).__name__}, not a tokenizer")
            return model
    raise VqgenError(f"{path} holds no tokenizer (looked for a saved model, RUN/model and RUN/checkpoints)")


@torch.no_grad()
def encode_folder(model: VQTokenizer, data_dir: str | Path, out_dir: str | Path, batch_size: int = 64,
                  shard_size: int = 10000, tokenizer_dir: str | Path | None = None,
                  device: str | torch.device = "cpu", show_progress: bool = True, workers: int = 0) -> dict:
    """Encode every image of an image folder, or of WebDataset shards (streamed, ``workers``
    DataLoader workers), into ``out_dir`` code shards; returns a summary with the skip counts."""
    from vqgen.data.stream import is_stream_source
    from vqgen.tokenizer.data import load_image_set, stream_shards

    size = model.config.image_size
    model = model.to(device).eval()
    if is_stream_source(data_dir):
        batches, class_names = stream_shards(data_dir, size, batch_size, workers), None
    else:
        data = load_image_set(data_dir, size)
        class_names = data.class_names
        batches = (tuple(x[start:start + batch_size] for x in (data.images, data.labels, data.texts, data.metas,
                                                                data.keys)) for start in range(0, len(data), batch_size))
        batches = iter([*batches, (len(data), data.skipped)])
    records, skipped = 0, {}
    with CodeShardWriter(out_dir, model.grid_size, model.config.quantizer.codebook_size,
                         tokenizer_dir=tokenizer_dir, shard_size=shard_size, class_names=class_names) as writer:
        for item in progress(batches, desc="encode", enabled=show_progress):
            if len(item) == 2:  # the end: (records read, skipped by reason)
                records, skipped = item
                continue
            images, labels, texts, metas, keys = item
            codes = model.encode(images.to(device).float().div(255.0))  # (B, h, w)
            writer.add(codes, texts=list(texts), labels=list(labels), metas=list(metas), keys=list(keys))
    return {"num_records": records, "grid": list(model.grid_size), "skipped": dict(sorted(skipped.items())),
            "codes": str(out_dir)}


@torch.no_grad()
def decode_codes(model: VQTokenizer, codes_dir: str | Path, out_dir: str | Path, batch_size: int = 64,
                 limit: int | None = None, device: str | torch.device = "cpu", show_progress: bool = True) -> int:
    """Decode a code directory into an image folder (PNGs + metadata.jsonl); returns the count."""
    from vqgen.data.folder import write_image_folder
    from vqgen.data.image import to_pil
    from vqgen.data.records import Record

    ds = CodeDataset.load(codes_dir)
    if ds.grid != model.grid_size or ds.codebook_size != model.config.quantizer.codebook_size:
        raise VqgenError(f"{codes_dir} holds {ds.grid} grids of {ds.codebook_size} codes; this tokenizer makes "
                         f"{model.grid_size} grids of {model.config.quantizer.codebook_size}")
    kind = model.config.cond.kind
    if kind == "text":
        raise VqgenError("this tokenizer's decoder needs text embeddings; decode it from Python with cond=...")
    n = len(ds) if limit is None else min(limit, len(ds))
    model = model.to(device).eval()

    def records():
        for start in range(0, n, batch_size):
            end = min(start + batch_size, n)
            cond = None
            if kind == "class":
                if any(label is None for label in ds.labels[start:end]):
                    raise VqgenError("this tokenizer's decoder needs a class label on every record")
                cond = torch.tensor(ds.labels[start:end], device=device)  # (B,)
            images = model.decode(ds.codes[start:end].to(device), cond)  # (B, 3, H, W)
            for i in range(end - start):
                j = start + i
                yield Record(image=to_pil(images[i]), text=ds.texts[j], label=ds.labels[j],
                             meta=dict(ds.metas[j]), key=ds.keys[j])

    class _Sized:
        def __len__(self):
            return n

        def __iter__(self):
            return records()

    return write_image_folder(_Sized(), out_dir, class_names=ds.info.get("class_names"), progress=show_progress)
