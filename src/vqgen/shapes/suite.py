"""The held-out prompt suite of the ``shapes`` domain and the files it ships as.

:func:`build_suite` is deterministic; the files under ``vqgen/prompts/`` (installed with the
package) are its output (:func:`write_suite`), its paraphrases (:func:`write_paraphrase_suite`) and
the wording hold-out (:func:`write_holdout_suite`: new scenes said only in the held-out words and
templates of :mod:`vqgen.shapes.wording`, plus misspelt copies).
:class:`~vqgen.shapes.dataset.ShapesDataset` never emits one of the suite's prompts as a caption.

The suite ends with the DrawBench categories the shapes domain can express (:func:`drawbench_items`,
Imagen's "misspellings", "rare words" and "long descriptions"), scored like the rest by their spec:
``misspelling`` (canonical captions with letters replaced by keyboard neighbours — an error the
training typos, which swap, drop or double letters, never make), ``rare_words`` (the held-out
synonyms of :mod:`vqgen.shapes.wording`, never in a training caption) and ``long`` (a scene of
3-4 objects described object by object in several sentences). The five first categories and their
prompts are unchanged, and :func:`held_out_prompts` / :func:`held_out_wordings` (what training data
leaves out) are computed from them alone, so data sets written before these categories existed are
written the same today.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from vqgen.errors import VqgenError
from vqgen.shapes.captions import caption_of, paraphrase_of
from vqgen.shapes.scenes import sample_spec
from vqgen.shapes.vocabulary import CATEGORIES, COLORS, SHAPES, category_of, validate_spec
from vqgen.shapes.wording import caption_variant, typo

# Prompts per category in the suite besides ``single``, which holds one size variant of every
# shape/colour pair (18 of the 54 single captions; the other caption spaces are far larger).
SUITE_SIZES = {"count": 36, "relation": 70, "binding": 60, "multi": 70}
SUITE_SEED = 0
PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"  # installed as package data of vqgen
SUITE_PATH = PROMPTS_DIR / "shapes_suite.jsonl"
PARAPHRASES_PATH = PROMPTS_DIR / "shapes_paraphrases.jsonl"
HOLDOUT_PATH = PROMPTS_DIR / "shapes_holdout.jsonl"
# `load_suite("holdout")` etc.: the shipped suites by name.
SUITE_NAMES = {"suite": SUITE_PATH, "paraphrases": PARAPHRASES_PATH, "holdout": HOLDOUT_PATH}
# The wording hold-out: prompts per category, every TYPO_EVERY-th one also misspelt (a copy), at HOLDOUT_TYPO_RATE.
HOLDOUT_SIZES = {"single": 40, "count": 40, "relation": 60, "binding": 50, "multi": 60}
HOLDOUT_SEED = 1
TYPO_EVERY = 5
HOLDOUT_TYPO_RATE = 0.3
HOLDOUT_MAX_CHARS = 200  # a pipeline's default max_prompt_length: longer prompts are redrawn
# DrawBench-style categories appended to the suite (prompts per category) and their seed.
DRAWBENCH_SIZES = {"misspelling": 30, "rare_words": 30, "long": 30}
DRAWBENCH_SEED = 2
MISSPELLING_RATE = 0.4
# Keyboard neighbours used by the misspelling category (a substitution: training typos never substitute).
NEIGHBOURS = {"a": "s", "b": "v", "c": "x", "d": "f", "e": "r", "f": "g", "g": "h", "h": "j", "i": "o", "j": "k",
              "k": "l", "l": "k", "m": "n", "n": "m", "o": "p", "p": "o", "q": "w", "r": "t", "s": "d", "t": "y",
              "u": "i", "v": "b", "w": "e", "x": "z", "y": "u", "z": "x"}
LONG_OPENERS = ("a simple picture on a white background. ", "an image with nothing but flat shapes. ",
                "a clean drawing on white. ")


def build_suite(seed: int = SUITE_SEED) -> list[dict]:
    """The public prompt suite: :func:`base_suite` followed by :func:`drawbench_items`."""
    return base_suite(seed) + drawbench_items()


def base_suite(seed: int = SUITE_SEED) -> list[dict]:
    """The held-out prompts of the five domain categories: ``{"prompt", "category", "spec"}`` per
    prompt (deterministic). ``single`` holds one size variant of every shape/colour pair; the
    other categories hold ``SUITE_SIZES[category]`` distinct random prompts each.
    """
    rng = np.random.default_rng(seed)
    suite: list[dict] = []
    for shape in SHAPES:
        for color in COLORS:
            size = (None, "small", "large")[rng.integers(3)]
            suite.append(_suite_item({"objects": [{"shape": shape, "color": color, "count": 1, "size": size}],
                                      "relations": []}))
    for category, num in SUITE_SIZES.items():
        seen: set[str] = set()
        while len(seen) < num:
            item = _suite_item(sample_spec(rng, category))
            if item["category"] == category and item["prompt"] not in seen:
                seen.add(item["prompt"])
                suite.append(item)
    return suite


def _suite_item(spec: dict) -> dict:
    return {"prompt": caption_of(spec), "category": category_of(spec), "spec": spec}


def substitute_typo(text: str, rng: np.random.Generator, rate: float) -> str:
    """Replace one inner letter of each word of 4+ letters with probability ``rate`` by its
    keyboard neighbour (at least one word changes when any can)."""
    import re

    words = [m for m in re.finditer(r"[a-z]+", text) if len(m.group(0)) >= 4]
    if not words:
        return text
    pick = [rng.random() < rate for _ in words]
    if not any(pick):
        pick[int(rng.integers(len(words)))] = True
    out, last = [], 0
    for m, hit in zip(words, pick):
        w = m.group(0)
        if hit:
            i = int(rng.integers(1, len(w) - 1))
            w = w[:i] + NEIGHBOURS[w[i]] + w[i + 1:]
        out += [text[last:m.start()], w]
        last = m.end()
    return "".join(out) + text[last:]


def _long_description(spec: dict, rng: np.random.Generator) -> str:
    """Several sentences: an opener, each object on its own, then each relation by colour and shape."""
    from vqgen.shapes.captions import caption_of as mention_of

    objects = spec["objects"]
    parts = [LONG_OPENERS[int(rng.integers(len(LONG_OPENERS)))]]
    for o in objects:
        one = mention_of({"objects": [o], "relations": []})
        parts.append(f"there {'is' if o['count'] == 1 else 'are'} {one}. ")
    for r in spec["relations"]:
        a, b = objects[r["a"]], objects[r["b"]]
        parts.append(f"the {a['color']} {a['shape']} is {r['relation']} the {b['color']} {b['shape']}. ")
    return "".join(parts) + "nothing else."


def _rare_words(caption: str, rng: np.random.Generator) -> str:
    """The canonical caption with every colour, size, shape and relation said by a held-out synonym
    (:data:`~vqgen.shapes.wording.HELD_OUT`: words no training caption uses)."""
    import re

    from vqgen.shapes.vocabulary import PLURALS
    from vqgen.shapes.wording import HELD_OUT

    table: dict[str, list[str]] = {}
    for kind in ("color", "size"):
        table.update({k: list(v) for k, v in HELD_OUT[kind].items()})
    for shape, forms in HELD_OUT["shape"].items():
        table[shape] = [f[0] for f in forms]
        table[PLURALS[shape]] = [f[1] for f in forms]
    table.update({("to the " + r if r in ("left of", "right of") else r): v for r, v in HELD_OUT["relation"].items()})
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, table), key=len, reverse=True)) + r")\b")
    text = pattern.sub(lambda m: table[m.group(1)][int(rng.integers(len(table[m.group(1)])))], caption)
    return re.sub(r"\ba (?=[aeiou])", "an ", re.sub(r"\ban (?=[^aeiou])", "a ", text))


def _known_words() -> set[str]:
    """Every word a caption of either wording part, or a canonical caption, may use."""
    from vqgen.shapes.vocabulary import COLORS, NUMBERS, PLURALS, RELATIONS, SHAPES, SIZES
    from vqgen.shapes.wording import HELD_OUT, TRAIN

    words = {"a", "an", "and", "to", "the", "of", *SHAPES, *PLURALS.values(), *COLORS, *SIZES, *NUMBERS.values()}
    words |= {w for r in RELATIONS for w in r.split()}
    for part in (TRAIN, HELD_OUT):
        for table in part.values():
            for forms in table.values():
                for f in forms:
                    words |= {w for phrase in (f if isinstance(f, tuple) else (f,)) for w in str(phrase).split()}
    return words


def drawbench_items(seed: int = DRAWBENCH_SEED) -> list[dict]:
    """The DrawBench-style categories (``DRAWBENCH_SIZES`` distinct prompts each, deterministic,
    none over ``HOLDOUT_MAX_CHARS`` characters): misspellings, rare words, long descriptions."""
    rng = np.random.default_rng(seed)
    known = _known_words()
    taken = {item["prompt"] for item in base_suite()} | {item["prompt"] for item in build_holdout_suite()}
    items: list[dict] = []
    for category, num in DRAWBENCH_SIZES.items():
        seen: set[str] = set()
        while len(seen) < num:
            if category == "long":
                spec = validate_spec(sample_spec(rng, ("multi", "relation")[int(rng.integers(2))]))
                prompt = _long_description(spec, rng)
            else:
                spec = validate_spec(sample_spec(rng, CATEGORIES[int(rng.integers(1, len(CATEGORIES)))]
                                                 if rng.random() < 0.8 else "single"))
                if category == "misspelling":
                    prompt = substitute_typo(caption_of(spec), rng, MISSPELLING_RATE)
                    if set(prompt.replace(",", "").split()) <= known:  # a substitution that spelt a real word
                        continue
                else:
                    prompt = _rare_words(caption_of(spec), rng)
            if prompt in seen or prompt in taken or len(prompt) > HOLDOUT_MAX_CHARS:
                continue
            seen.add(prompt)
            items.append({"prompt": prompt, "category": category, "spec": spec})
    return items


def write_suite(path: str | Path = SUITE_PATH, seed: int = SUITE_SEED) -> int:
    """Write :func:`build_suite` as JSON lines; returns the number of prompts."""
    from vqgen.io import atomic_write_text

    suite = build_suite(seed)
    atomic_write_text(Path(path), "".join(json.dumps(item) + "\n" for item in suite))
    return len(suite)


def write_paraphrase_suite(path: str | Path, seed: int = SUITE_SEED) -> int:
    """The core suite's specs (not the DrawBench categories, whose wording is the point) with
    :func:`paraphrase_of` prompts, as JSON lines; returns the number of prompts."""
    from vqgen.io import atomic_write_text

    items = [{"prompt": paraphrase_of(item["spec"]), "category": item["category"], "spec": item["spec"]}
             for item in build_suite(seed) if item["category"] not in DRAWBENCH_SIZES]  # the five core categories
    atomic_write_text(Path(path), "".join(json.dumps(item) + "\n" for item in items))
    return len(items)


def build_holdout_suite(seed: int = HOLDOUT_SEED) -> list[dict]:
    """The wording hold-out: ``HOLDOUT_SIZES[category]`` distinct prompts per category in held-out
    words and templates only, then every ``TYPO_EVERY``-th of them again, misspelt (deterministic;
    no prompt over ``HOLDOUT_MAX_CHARS`` characters)."""
    rng = np.random.default_rng(seed)
    items: list[dict] = []
    for category, num in HOLDOUT_SIZES.items():
        seen: set[str] = set()
        plain: list[dict] = []
        while len(plain) < num:
            spec = validate_spec(sample_spec(rng, category))
            prompt = caption_variant(spec, rng, "held_out")
            if category_of(spec) == category and prompt not in seen and len(prompt) < HOLDOUT_MAX_CHARS:
                seen.add(prompt)
                plain.append({"prompt": prompt, "category": category, "spec": spec})
        for item in plain[::TYPO_EVERY]:
            misspelt = item["prompt"]
            while misspelt == item["prompt"] or misspelt in seen or len(misspelt) > HOLDOUT_MAX_CHARS:
                misspelt = typo(item["prompt"], rng, HOLDOUT_TYPO_RATE)
            seen.add(misspelt)
            plain.append({**item, "prompt": misspelt})
        items += plain
    return items


def write_holdout_suite(path: str | Path = HOLDOUT_PATH, seed: int = HOLDOUT_SEED) -> int:
    """Write :func:`build_holdout_suite` as JSON lines; returns the number of prompts."""
    from vqgen.io import atomic_write_text

    items = build_holdout_suite(seed)
    atomic_write_text(Path(path), "".join(json.dumps(item) + "\n" for item in items))
    return len(items)


def load_suite(path: str | Path | None = None) -> list[dict]:
    """Read a prompt suite file (default: :data:`SUITE_PATH`, ``vqgen/prompts/shapes_suite.jsonl``).

    ``path`` may also name a shipped suite: ``suite``, ``paraphrases`` or ``holdout``
    (:data:`SUITE_NAMES`); a file of that name in the working directory wins.
    Without ``path``, an installation that lacks the file gets :func:`build_suite` (same content).
    Every spec is validated; a bad line is an error naming the line.
    """
    if path is None and not SUITE_PATH.is_file():
        return build_suite()
    if isinstance(path, str) and path in SUITE_NAMES and not Path(path).exists():
        path = SUITE_NAMES[path]
    return read_prompt_file(Path(path or SUITE_PATH), validate_spec, category_of)


def read_prompt_file(path: Path, validate, categorize) -> list[dict]:
    """Prompt-suite JSON lines ``{prompt, category?, spec}`` with every spec checked by ``validate``
    (the category defaults to ``categorize(spec)``); a bad line is an error naming it. Shared by the
    image and motion domains."""
    if not path.is_file():
        raise VqgenError(f"prompt suite {path} does not exist")
    suite = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                raise VqgenError("expected an object with a 'prompt' string")
            spec = validate(item.get("spec"))
        except (ValueError, VqgenError) as e:
            raise VqgenError(f"{path}:{lineno}: {e}") from None
        suite.append({"prompt": item["prompt"], "category": item.get("category") or categorize(spec),
                      "spec": spec})
    return suite


@lru_cache(maxsize=4)
def held_out_prompts(seed: int = SUITE_SEED) -> frozenset[str]:
    """The suite's prompts of the five domain categories: captions the training data never uses
    (the DrawBench categories cannot be training captions: substituted letters, held-out words,
    sentences no caption template writes)."""
    return frozenset(item["prompt"] for item in base_suite(seed))


@lru_cache(maxsize=1)
def held_out_wordings() -> frozenset[str]:
    """The suite's prompts and their paraphrases: no training wording (``captions > 1``) equals one."""
    return held_out_prompts() | {paraphrase_of(item["spec"]) for item in base_suite()}

