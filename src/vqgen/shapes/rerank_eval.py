"""How well a reranker ranks on ``shapes`` data: held-out retrieval, hard-negative accuracy, and
picks judged by the exact evaluator.

``model`` is any dual encoder with ``encode_images``, ``encode_texts`` and ``score(images, prompt)``
(:class:`vqgen.rerank.clip.ClipReranker`); this module does not import it, so the domain stays
below the rerankers that train on it.

- ``retrieval_at_1``: captions → images among groups of ``group`` held-out pairs; a hit is an image
  whose caption equals the query (duplicated captions count as right).
- ``hard_negative_accuracy``: how often an image scores its own caption above a one-edit
  perturbation of it (:func:`~vqgen.shapes.negatives.perturb_caption`).
- ``shapes_pick``: for prompts of the held-out suite, render the prompt's spec and ``n - 1``
  distractor specs, let the reranker pick one, and ask :func:`vqgen.shapes.evaluator.score` whether
  the pick satisfies the prompt.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from vqgen.errors import VqgenError
from vqgen.shapes.negatives import perturb_caption, perturb_spec


@torch.no_grad()
def _embed_images(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model.encode_images(images[i:i + batch_size].float() / 255.0
                                          if images.dtype == torch.uint8 else images[i:i + batch_size])
                      for i in range(0, len(images), batch_size)])  # (N, E)


@torch.no_grad()
def _embed_texts(model, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model.encode_texts(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])


@torch.no_grad()
def retrieval_at_1(model, images: torch.Tensor, texts: list[str], group: int = 32) -> float:
    """Caption → image R@1 within consecutive groups of ``group`` pairs (images uint8 or [0, 1])."""
    n = (len(texts) // group) * group
    if n == 0:
        raise VqgenError(f"retrieval needs at least {group} held-out pairs, got {len(texts)}")
    img, txt = _embed_images(model, images[:n]), _embed_texts(model, list(texts[:n]))
    hits = 0
    for g in range(0, n, group):
        sims = txt[g:g + group] @ img[g:g + group].T  # (group, group)
        best = sims.argmax(1).tolist()
        hits += sum(texts[g + q] == texts[g + b] for q, b in enumerate(best))
    return hits / n


@torch.no_grad()
def hard_negative_accuracy(model, images: torch.Tensor, texts: list[str], seed: int = 0) -> float:
    """Fraction of images whose own caption scores above a one-edit perturbation of it."""
    rng = np.random.default_rng(seed)
    pairs = [(i, perturb_caption(t, rng)) for i, t in enumerate(texts)]
    pairs = [(i, neg) for i, neg in pairs if neg is not None]
    if not pairs:
        raise VqgenError("no caption could be perturbed (hard negatives need shapes-style captions)")
    idx = torch.tensor([i for i, _ in pairs])
    img = _embed_images(model, images[idx])
    pos = (img * _embed_texts(model, [texts[i] for i, _ in pairs])).sum(-1)  # (P,)
    neg = (img * _embed_texts(model, [n for _, n in pairs])).sum(-1)  # (P,)
    return float((pos > neg).float().mean())


@dataclass
class PickResult:
    prompts: int
    candidates: int
    distractors: str
    pick_passed: float  # the reranker's pick satisfies the prompt (exact evaluator)
    chance: float  # mean fraction of candidates that satisfy it (a random pick)
    true_picked: float  # the pick is the render of the prompt's own spec
    auc: float  # ROC AUC of reranker score vs evaluator verdict, pooled over candidates

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def shapes_pick(model, num_prompts: int = 100, candidates: int = 8, distractors: str = "hard",
                size: int = 64, seed: int = 0, suite: str | None = None) -> PickResult:
    """Pick one of ``candidates`` renders per suite prompt and judge it with the exact evaluator.

    ``distractors``: ``hard`` (one-edit perturbations of the prompt's spec) or ``random`` (specs
    of other suite prompts). ``suite``: a shipped prompt set by name (``suite``, ``paraphrases``,
    ``holdout``: the same test in unfamiliar wording) or a path; default the suite.
    """
    from sklearn.metrics import roc_auc_score

    from vqgen.data.image import to_tensor
    from vqgen.shapes.evaluator import score as exact_score
    from vqgen.shapes.scenes import render_spec
    from vqgen.shapes.suite import load_suite

    if distractors not in ("hard", "random"):
        raise VqgenError(f"distractors must be 'hard' or 'random', got {distractors!r}")
    if candidates < 2:
        raise VqgenError("shapes_pick needs at least 2 candidates")
    suite = load_suite(suite)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(suite))[:num_prompts]
    passed_pick, chance, true_pick, all_scores, all_passed = [], [], [], [], []
    for n, p in enumerate(order):
        item = suite[int(p)]
        images, specs = [], []
        while len(images) < candidates:
            if not specs:
                spec = item["spec"]
            elif distractors == "hard":
                spec = perturb_spec(item["spec"], rng)
            else:
                spec = suite[int(rng.integers(len(suite)))]["spec"]
            try:
                images.append(render_spec(spec, size=size, seed=int(rng.integers(2**31))))
            except VqgenError:  # a perturbed layout that does not fit: draw another
                continue
            specs.append(spec)
        perm = rng.permutation(candidates)  # the true render is not always first
        images = [images[i] for i in perm]
        verdict = np.array([exact_score(im, item["spec"]).passed for im in images], dtype=float)
        batch = torch.stack([to_tensor(im) for im in images])  # (n, 3, S, S)
        scores = model.score(batch, item["prompt"]).cpu().numpy()
        best = int(scores.argmax())
        passed_pick.append(verdict[best])
        chance.append(verdict.mean())
        true_pick.append(float(perm[best] == 0))
        all_scores.extend(scores.tolist())
        all_passed.extend(verdict.tolist())
    labels = np.array(all_passed)
    auc = float(roc_auc_score(labels, all_scores)) if 0 < labels.sum() < len(labels) else float("nan")
    return PickResult(prompts=len(order), candidates=candidates, distractors=distractors,
                      pick_passed=float(np.mean(passed_pick)), chance=float(np.mean(chance)),
                      true_picked=float(np.mean(true_pick)), auc=auc)
