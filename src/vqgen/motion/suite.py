"""The held-out prompt suite of the ``motion`` domain (``vqgen/prompts/motion_suite.jsonl``,
shipped with the package): ``{"prompt", "category", "spec"}`` per line, ``SUITE_SIZES`` distinct
prompts per category. :func:`build_suite` is deterministic and :func:`write_suite` writes the file;
:class:`~vqgen.motion.dataset.MotionDataset` never emits a suite prompt as a caption, so a model
is scored on combinations of shape, colour, size and action it has not seen said together.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from vqgen.errors import VqgenError
from vqgen.motion.captions import caption_of
from vqgen.motion.scenes import layout, sample_spec, sample_timing
from vqgen.motion.vocabulary import CATEGORIES, category_of, validate_spec

SUITE_SIZES = {"move": 40, "size": 20, "color": 30, "presence": 20, "two": 30, "three": 20}
SUITE_SEED = 0
SUITE_PATH = Path(__file__).resolve().parents[1] / "prompts" / "motion_suite.jsonl"


def build_suite(seed: int = SUITE_SEED) -> list[dict]:
    """``SUITE_SIZES[category]`` distinct random prompts per category, in :data:`CATEGORIES` order,
    each with a ground-truth clip at 64 px (:func:`~vqgen.motion.scenes.layout` places it)."""
    rng = np.random.default_rng(seed)
    suite: list[dict] = []
    for category in CATEGORIES:
        seen: set[str] = set()
        while len(seen) < SUITE_SIZES[category]:
            spec = validate_spec(sample_spec(rng, category))
            prompt = caption_of(spec)
            if prompt not in seen and _placeable(spec):
                seen.add(prompt)
                suite.append({"prompt": prompt, "category": category, "spec": spec})
    return suite


def _placeable(spec: dict) -> bool:
    """Whether a ground-truth clip of the spec can be laid out at 64 px (crowded three-object clips may not)."""
    rng = np.random.default_rng(0)
    try:
        layout(spec, sample_timing(rng, len(spec["objects"]), 5)[1], 64, rng)
    except VqgenError:
        return False
    return True


def write_suite(path: str | Path = SUITE_PATH, seed: int = SUITE_SEED) -> int:
    """Write :func:`build_suite` as JSON lines; returns the number of prompts."""
    from vqgen.io import atomic_write_text

    suite = build_suite(seed)
    atomic_write_text(Path(path), "".join(json.dumps(item) + "\n" for item in suite))
    return len(suite)


def load_suite(path: str | Path | None = None) -> list[dict]:
    """Read a motion prompt suite (default: the shipped ``motion_suite.jsonl``; :func:`build_suite`
    when an installation lacks it). Every spec is validated; a bad line is an error naming it."""
    if path is None and not SUITE_PATH.is_file():
        return build_suite()
    from vqgen.shapes.suite import read_prompt_file

    return read_prompt_file(Path(path or SUITE_PATH), validate_spec, category_of)


@lru_cache(maxsize=4)
def held_out_prompts(seed: int = SUITE_SEED) -> frozenset[str]:
    """The suite's prompts: captions the training clips never use (read from the shipped file for the
    default seed, built otherwise)."""
    return frozenset(item["prompt"] for item in (load_suite() if seed == SUITE_SEED else build_suite(seed)))
