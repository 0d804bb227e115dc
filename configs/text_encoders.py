"""Compare Parti text sides at equal CPU budget on diverse captions (issue 15; docs/default-model.md).

    OMP_NUM_THREADS=1 python configs/text_encoders.py --out runs/text --seconds 300

Steps (each skipped when its output exists):

1. ``vqgen data shapes --captions 4 --typo-rate 0.03`` and ``vqgen tokenizer encode`` with the
   bundled image tokenizer;
2. seconds per training step of each variant (batch 64, frozen embeddings memoised first);
3. per variant, a starting model: the bundled transformer's image decoder (code and position
   embeddings, start and null slots, decoder blocks with their cross-attention, head) and a fresh
   text side; then ``vqgen train --set train.init_from=...`` for ``--seconds`` / (s per step) steps;
4. a pipeline (bundled image tokenizer + the model) and ``vqgen eval shapes`` on the suite, the
   paraphrases and the hold-out, one sample setting for all.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "vqgen" / "assets" / "default_model"
COMMON = ["train.batch_size=64", "train.warmup_steps=50", "train.cond_dropout=0.1", "model.dropout=0.0",
          "model.text.max_len=48", "train.lr=5e-4"]
FROZEN = ["model.text.encoder=pretrained", "model.text_norm=true", "model.text_pool=true"]
VARIANTS = {"bpe": [], "minilm": FROZEN, "adapter": FROZEN + ["model.adapter_depth=2"]}
TEXT_KEYS = ("text_", "encoder.", "enc_norm", "pool_", "adapter.")  # the text side: never copied


def vqgen(*args: str) -> None:
    print("+ vqgen " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "vqgen", *args], check=True)


def settings(name: str, minilm: str) -> list[str]:
    """--set values of a variant (pretrained_dir before encoder: the config checks it)."""
    extra = VARIANTS[name]
    return COMMON + ([f"model.text.pretrained_dir={minilm}"] if extra else []) + extra


def seconds_per_step(codes: Path, sets: list[str], steps: int = 12) -> float:
    """CPU seconds of one optimisation step (forward, backward, AdamW) after two warm-up steps."""
    from vqgen.transformer import build_model
    from vqgen.transformer.train import make_optimizer, prepare, resolve_config

    run = Path("/nonexistent-run")
    cfg, _ = resolve_config(run, "parti-small", sets, None)
    cfg, data, _, _ = prepare(cfg, codes, run, False)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    opt = make_optimizer(model, cfg.train)
    batches = [data.batch(data.train_idx[i * 64:(i + 1) * 64], "cpu", draw=(i, 0)) for i in range(steps)]
    if cfg.model.text.encoder == "pretrained":
        for _, c in batches:  # embeddings are a one-off per caption: not part of a step
            model.frozen_encoder(c.text_ids, c.text_mask)
    times = []
    for x, c in batches:
        t = time.process_time()
        loss, _ = model.compute_loss(x, c.drop(0.1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.process_time() - t)
    return sum(times[2:]) / len(times[2:])


def starting_model(out: Path, codes: Path, sets: list[str]) -> None:
    """The bundled image decoder with a fresh text side of the variant (a BPE on the captions)."""
    from vqgen.data.captions import caption_lists
    from vqgen.data.codes import CodeDataset
    from vqgen.io import load_pretrained
    from vqgen.text.bpe import TextTokenizer
    from vqgen.transformer import build_model
    from vqgen.transformer.train import resolve_config, split_indices

    bundled = load_pretrained(BUNDLED / "transformer")
    cfg, _ = resolve_config(Path("/nonexistent-run"), "parti-small", sets, None)
    model_cfg = dataclasses.replace(cfg.model, grid=bundled.config.grid, codebook_size=bundled.config.codebook_size)
    tok = None
    if model_cfg.text.encoder == "trained":  # the BPE `vqgen train` would fit on the training captions
        ds = CodeDataset.load(codes)
        train_idx, _ = split_indices(len(ds), cfg.train.val_fraction, cfg.train.seed)
        alts = caption_lists(ds.texts, ds.metas)
        tok = TextTokenizer.train([x for i in train_idx.tolist() for x in alts[i]], vocab_size=model_cfg.text.vocab_size)
        model_cfg = dataclasses.replace(model_cfg, text=dataclasses.replace(model_cfg.text, vocab_size=tok.vocab_size))
    torch.manual_seed(0)
    model = build_model(model_cfg)
    state, src = model.state_dict(), bundled.state_dict()
    state.update({k: src[k].clone() for k in state if not k.startswith(TEXT_KEYS)})
    model.load_state_dict(state)
    model.text_tokenizer = tok
    model.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="work directory")
    p.add_argument("--seconds", type=float, default=300.0, help="CPU seconds of training steps per variant")
    p.add_argument("--variants", default="bpe,minilm,adapter", help="comma-separated: bpe, minilm, adapter")
    p.add_argument("--scenes", type=int, default=6000, help="training scenes (4 captions each)")
    args = p.parse_args(argv)
    from vqgen.pipelines import TextToImagePipeline
    from vqgen.sampling import SamplingConfig
    from vqgen.text.encoder import packaged_model_dir

    out, minilm = Path(args.out), str(packaged_model_dir())
    data, codes = out / "data", out / "codes"
    if not (data / "metadata.jsonl").is_file():
        vqgen("data", "shapes", "--out", str(data), "--num", str(args.scenes), "--seed", "0", "--captions", "4",
              "--typo-rate", "0.03", "--no-progress")
    if not (codes / "info.json").is_file():
        vqgen("tokenizer", "encode", str(BUNDLED / "tokenizer"), "--data", str(data), "--out", str(codes), "--no-progress")
    names = args.variants.split(",")
    cal_path = out / "calibration.json"
    cal = json.loads(cal_path.read_text()) if cal_path.is_file() else {}
    for name in names:
        if name not in cal:
            cal[name] = {"step_s": seconds_per_step(codes, settings(name, minilm))}
            cal_path.write_text(json.dumps(cal, indent=1))
    for name in names:
        sets = settings(name, minilm)
        init, run, pipe = out / f"init-{name}", out / f"ft-{name}", out / f"pipe-ft-{name}"
        if not (init / "config.json").is_file():
            starting_model(init, codes, sets)
        if not (run / "model").is_dir():
            steps = int(args.seconds / cal[name]["step_s"])
            vqgen("train", "--codes", str(codes), "--preset", "parti-small", "--out", str(run), "--steps", str(steps),
                  "--no-progress", "--set", "train.val_every=100", "--set", "train.ckpt_every=100",
                  "--set", f"train.init_from={init}", *[a for s in sets for a in ("--set", s)])
        if not (pipe / "pipeline.json").is_file():
            TextToImagePipeline.from_components(
                tokenizer=BUNDLED / "tokenizer", transformer=run / "model", reranker=BUNDLED / "reranker",
                sampling=SamplingConfig(guidance_scale=2.0, temperature=0.5)).save_pretrained(pipe)
        for prompts in ("suite", "paraphrases", "holdout"):
            report = out / "eval" / f"ft-{name}-{prompts}"
            if not (report / "summary.json").is_file():
                vqgen("eval", "shapes", "--model", str(pipe), "--prompts", prompts, "--samples", "2", "--guidance", "2",
                      "--temperature", "0.5", "--rerank", "0", "--seed", "0", "--no-images", "--no-progress",
                      "--out", str(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
