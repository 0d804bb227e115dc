"""Tolerances derived from float32 rounding, for tests that compare two ways of computing one update.

Two runs that see the same global batch (one big batch, accumulated micro-batches, or ranks whose
gradients are all-reduced) compute the same gradient sum in different orders. After one plain SGD
step ``w = w0 - lr * g`` the weights differ only by ``lr`` times that rounding, plus the rounding of
the subtraction itself. (After an Adam step they need not: ``g / (sqrt(v) + eps)`` turns noise in a
near-zero gradient into an ``lr``-sized difference, so such tests compare SGD steps or gradients.)
"""
import torch

EPS = torch.finfo(torch.float32).eps


def sgd_tolerance(w0: torch.Tensor, w1: torch.Tensor, terms: int) -> float:
    """Largest expected ``|a - b|`` between two SGD-stepped copies ``a``, ``b`` of ``w0``.

    ``w1`` is one of them; ``terms`` the number of float32 contributions summed into each gradient
    (tokens or pixels of the global batch). A sum of ``n`` terms reordered errs by at most
    ``n * eps * sum|x_i|`` (recursive summation); the largest update entry of the tensor stands in
    for the terms' scale, and each weight is rounded once more when the update is subtracted.
    """
    update = (w1.double() - w0.double()).abs().max().item()  # lr * max|g|
    return EPS * (terms * update + 2 * w0.abs().max().item())


def assert_same_sgd_step(a: dict, b: dict, w0: dict, terms: int) -> None:
    """Every tensor of ``a`` and ``b`` (state dicts after one SGD step from ``w0``) agrees within
    :func:`sgd_tolerance`, and the step moved the weights (else the test would prove nothing)."""
    assert a.keys() == b.keys() == w0.keys()
    moved = False
    for k in a:
        tol = sgd_tolerance(w0[k], a[k], terms)
        diff = (a[k].double() - b[k].double()).abs().max().item()
        assert diff <= tol, f"{k}: max |a - b| = {diff:.3g} > {tol:.3g}"
        moved |= not torch.equal(a[k], w0[k])
    assert moved
