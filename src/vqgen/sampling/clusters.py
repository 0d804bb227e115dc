"""Codebook clusters for CogView2's cluster sampling.

The codebook's embeddings are clustered once (seeded k-means, a few hundred clusters) and the
assignment of each code is stored beside the model as ``clusters.safetensors``::

    emb = tokenizer.codebook_embeddings()              # (K, d)
    assignment = fit_clusters(emb, num_clusters=256)   # (K,) long
    save_clusters(model_dir, assignment)
    ...
    generate(model, cond, config=SamplingConfig(cluster=8), clusters=load_clusters(model_dir))
"""
from __future__ import annotations

from pathlib import Path

import torch

from vqgen.errors import ConfigError, VqgenError

CLUSTERS_NAME = "clusters.safetensors"


def fit_clusters(embeddings: torch.Tensor, num_clusters: int, iters: int = 50, seed: int = 0) -> torch.Tensor:
    """Seeded k-means (k-means++ start, Lloyd steps) over ``embeddings`` (K, d); returns the
    cluster of each row, (K,) long in ``[0, num_clusters)``, every cluster non-empty."""
    x = embeddings.detach().float().cpu()  # (K, d)
    n = x.shape[0]
    if not 1 <= num_clusters <= n:
        raise ConfigError(f"num_clusters must be in 1..{n} (the codebook size), got {num_clusters}")
    g = torch.Generator().manual_seed(seed)
    centers = x[torch.randint(n, (1,), generator=g)]  # (1, d)
    for _ in range(1, num_clusters):  # k-means++: next center with probability ~ squared distance
        d2 = torch.cdist(x, centers).min(1).values.square()  # (K,)
        centers = torch.cat([centers, x[torch.multinomial(d2 + 1e-12, 1, generator=g)]])
    assignment = torch.cdist(x, centers).argmin(1)  # (K,)
    for _ in range(iters):
        counts = torch.bincount(assignment, minlength=num_clusters)  # (C,)
        sums = torch.zeros_like(centers).index_add_(0, assignment, x)  # (C, d)
        centers = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centers)
        dist = torch.cdist(x, centers)  # (K, C)
        new = dist.argmin(1)  # (K,)
        for c in torch.nonzero(torch.bincount(new, minlength=num_clusters) == 0).flatten().tolist():
            far = dist.gather(1, new[:, None]).squeeze(1).argmax()  # the worst-fit point founds the empty cluster
            new[far] = c
            centers[c] = x[far]
            dist[far] = 0.0
        if torch.equal(new, assignment):
            break
        assignment = new
    return assignment.long()


def save_clusters(directory, assignment: torch.Tensor) -> Path:
    """Write ``assignment`` (K,) to ``directory/clusters.safetensors``."""
    from safetensors.torch import save

    from vqgen.io import atomic_write_bytes

    path = Path(directory) / CLUSTERS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({"assignment": assignment.detach().long().cpu().contiguous()}))
    return path


def load_clusters(directory) -> torch.Tensor:
    """The (K,) assignment saved by :func:`save_clusters` in ``directory``."""
    from safetensors.torch import load_file

    path = Path(directory) / CLUSTERS_NAME
    if not path.is_file():
        raise VqgenError(f"no {CLUSTERS_NAME} in {directory}: build it with vqgen.sampling.fit_clusters "
                         "over the tokenizer's codebook_embeddings()")
    tensors = load_file(str(path))
    if "assignment" not in tensors or tensors["assignment"].dim() != 1:
        raise VqgenError(f"{path} holds no (K,) 'assignment' tensor")
    return tensors["assignment"].long()
