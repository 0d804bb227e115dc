"""Linear probe of a token transformer (the seed's image-understanding evaluation).

Feed all image codes of a labelled set through the frozen model with the null condition (so a
class- or text-conditioned model cannot read the label), take the output of block ``layer``,
mean-pool it over the sequence, and fit a linear softmax classifier on a seeded training split;
report accuracy on the held-out split. The seed finds the best layer near the middle of the stack.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vqgen.errors import VqgenError


@dataclass
class ProbeResult:
    layer: int
    num_blocks: int
    accuracy: float
    train_accuracy: float
    num_train: int
    num_test: int
    num_classes: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def extract_features(model, codes: torch.Tensor, layer: int, batch_size: int = 64) -> torch.Tensor:
    """Mean-pooled features (N, D) of block ``layer`` for codes (N, h, w) or (N, h*w)."""
    model.eval()
    device = next(model.parameters()).device
    feats = []
    for i in range(0, codes.shape[0], batch_size):
        chunk = codes[i:i + batch_size].to(device)
        cond = model.empty_condition(chunk.shape[0], device)
        feats.append(model.features(chunk, layer, cond).float().mean(1).cpu())  # (b, D)
    return torch.cat(feats)


def linear_probe(model, codes: torch.Tensor, labels: list[int | None], layer: int, test_fraction: float = 0.2,
                 seed: int = 0, batch_size: int = 64) -> ProbeResult:
    """Frozen features of block ``layer`` → logistic regression → held-out accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if not 1 <= layer <= model.num_blocks:
        raise VqgenError(f"--layer must be in 1..{model.num_blocks} for this model, got {layer}")
    keep = [i for i, lb in enumerate(labels) if lb is not None]
    if len(keep) < 10:
        raise VqgenError(f"a linear probe needs labelled records; found {len(keep)}")
    y = torch.tensor([labels[i] for i in keep])
    x = extract_features(model, codes[keep], layer, batch_size)  # (N, D)
    order = torch.randperm(len(keep), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(len(keep) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    if len(set(y[train].tolist())) < 2:
        raise VqgenError("a linear probe needs at least two classes in its training split")
    scaler = StandardScaler().fit(x[train].numpy())
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(scaler.transform(x[train].numpy()), y[train].numpy())
    acc = float(clf.score(scaler.transform(x[test].numpy()), y[test].numpy()))
    train_acc = float(clf.score(scaler.transform(x[train].numpy()), y[train].numpy()))
    return ProbeResult(layer=layer, num_blocks=model.num_blocks, accuracy=acc, train_accuracy=train_acc,
                       num_train=len(train), num_test=len(test), num_classes=len(set(y.tolist())))


def load_run_model(run: str | Path, device="cpu"):
    """The model of a training run (``RUN/model``) or a model directory itself."""
    from vqgen.io import load_pretrained

    run = Path(run)
    directory = run / "model" if (run / "model" / "config.json").is_file() else run
    if not (directory / "config.json").is_file():
        raise VqgenError(f"{run} holds no trained model (looked for {run / 'model'})")
    return load_pretrained(directory, device=device)


def probe_run(run: str | Path, data: str | Path, layer: int, device="cpu", seed: int = 0) -> ProbeResult:
    """``vqgen probe``: load RUN's model and a labelled CODES directory, probe block ``layer``."""
    from vqgen.data.codes import CodeDataset

    model = load_run_model(run, device)
    ds = CodeDataset.load(data)
    if tuple(ds.grid) != tuple(model.grid):
        raise VqgenError(f"{data} has {tuple(ds.grid)} codes but the model expects {tuple(model.grid)}")
    return linear_probe(model, ds.codes, ds.labels, layer, seed=seed)
