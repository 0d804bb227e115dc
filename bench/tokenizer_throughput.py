"""Inference throughput of ViT-VQGAN vs CNN-VQGAN: images per second through encode + decode.

    OMP_NUM_THREADS=1 .venv/bin/python bench/tokenizer_throughput.py [--vit RUN] [--cnn RUN] [--data DIR]

``--vit`` / ``--cnn`` take a training run, a model directory or a checkpoint's ``tokenizer``
directory (defaults: /work/runs/tok-emoji/vit and /cnn); ``--data`` the emoji image folder.

What is measured: ``model.encode(images)`` (images → codes) then ``model.decode(codes)`` (codes →
images) on batches of 64x64 images, fp32, no gradients, ``--threads`` CPU threads (default 1).
The two models alternate for ``--rounds`` rounds (each round runs ``--batches`` batches), so a
change in machine load hits both, and the median of each is compared. Two clocks are read: the
process's CPU time (the headline: on a machine shared with other jobs it is what the model costs;
with one thread it equals wall time on an idle machine) and wall time. Encode and decode are also
timed on their own (CPU time).

Quality is stated beside the speed: each model's PSNR / SSIM and codebook usage on the run's
held-out emoji (every 10th image, as in ``vqgen tokenizer eval``). By default the models are the
trained emoji runs of docs/tokenizer.md (``emoji`` and ``emoji-cnn`` presets). Where a run is
missing, a freshly initialised model of that preset's shape is used instead (the speed is the
same, the quality figures are then meaningless) and the output says so; where the data folder is
missing, random images stand in and no quality is printed.

Final line: ``vit_vs_cnn_throughput=<ViT images/s ÷ CNN images/s, CPU time>x`` followed by the
wall-time ratio, both models' figures and (trained runs) their held-out PSNR.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from vqgen.config import get_preset
from vqgen.errors import VqgenError
from vqgen.tokenizer.base import VQTokenizer
from vqgen.tokenizer.config import TokenizerTrainConfig
from vqgen.tokenizer.data import holdout_split, load_image_set
from vqgen.tokenizer.encode import load_tokenizer
from vqgen.tokenizer.evaluate import evaluate_tokenizer
from vqgen.tokenizer.train import build_tokenizer


def load_or_init(run: str, preset: str) -> tuple[VQTokenizer, str]:
    """The trained tokenizer of ``run``, or a fresh one of ``preset``'s shape; plus where it came from."""
    if Path(run).is_dir():
        try:
            return load_tokenizer(run).eval(), f"trained ({run})"
        except (VqgenError, OSError, RuntimeError) as e:  # a broken run falls back like a missing one, and says why
            reason = f"cannot load {run}: {str(e).splitlines()[0]}"
    else:
        reason = f"{run} not found"
    cfg: TokenizerTrainConfig = get_preset("tokenizer", preset)
    torch.manual_seed(0)
    return build_tokenizer(cfg).eval(), f"UNTRAINED fresh '{preset}' preset ({reason})"


def time_batches(model: VQTokenizer, batches: list[torch.Tensor]) -> tuple[float, float, float]:
    """CPU seconds spent encoding and decoding all ``batches`` (each (B, 3, H, W) in [0, 1]), and wall seconds."""
    t_enc = t_dec = 0.0
    wall = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            t0 = time.process_time()
            codes = model.encode(x)  # (B, h, w)
            t1 = time.process_time()
            model.decode(codes)  # (B, 3, H, W)
            t2 = time.process_time()
            t_enc += t1 - t0
            t_dec += t2 - t1
    return t_enc, t_dec, time.perf_counter() - wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vit", default="/work/runs/tok-emoji/vit", help="trained ViT-VQGAN run (preset emoji)")
    ap.add_argument("--cnn", default="/work/runs/tok-emoji/cnn", help="trained CNN-VQGAN run (preset emoji-cnn)")
    ap.add_argument("--data", default="/work/data/emoji-google-64", help="emoji image folder (64x64)")
    ap.add_argument("--batch-size", type=int, default=32, help="images per batch")
    ap.add_argument("--batches", type=int, default=3, help="batches per round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per model")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    models = {"vit": load_or_init(args.vit, "emoji"), "cnn": load_or_init(args.cnn, "emoji-cnn")}
    size = models["vit"][0].config.image_size
    held = None
    if Path(args.data).is_dir():
        data = load_image_set(args.data, size)
        held = data.images[holdout_split(len(data), TokenizerTrainConfig().holdout_every)[1]]  # (N, 3, H, W) uint8
        pool = held.float().div(255.0)
    else:
        print(f"note: {args.data} not found; timing on random images, no quality figures")
        pool = torch.rand(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    reps = -(-args.batch_size * args.batches // pool.shape[0])
    pool = pool.repeat(reps, 1, 1, 1)
    batches = [pool[i * args.batch_size:(i + 1) * args.batch_size] for i in range(args.batches)]
    n_images = args.batch_size * args.batches

    quality = {}
    for name, (model, source) in models.items():
        n_params = sum(p.numel() for p in model.parameters())
        line = f"{name}: {model.model_type}, {n_params / 1e6:.2f}M params, grid {model.grid_size}, {source}"
        if held is not None:
            q = evaluate_tokenizer(model, held, batch_size=64)
            quality[name] = q
            line += (f"; held-out ({q['num_images']} images) PSNR {q['psnr']:.2f} dB, SSIM {q['ssim']:.4f}, "
                     f"usage {q['codebook_usage']:.3f}")
        print(line)
        time_batches(model, batches[:1])  # warm-up

    enc_s = {name: [] for name in models}
    dec_s = {name: [] for name in models}
    wall_s = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, (model, _) in models.items():
            te, td, tw = time_batches(model, batches)
            enc_s[name].append(te)
            dec_s[name].append(td)
            wall_s[name].append(tw)

    ips, ips_wall = {}, {}
    for name in models:
        enc = n_images / statistics.median(enc_s[name])
        dec = n_images / statistics.median(dec_s[name])
        ips[name] = n_images / statistics.median(e + d for e, d in zip(enc_s[name], dec_s[name]))
        ips_wall[name] = n_images / statistics.median(wall_s[name])
        print(f"{name}: encode+decode {ips[name]:.1f} images per CPU-second (encode {enc:.1f}, decode {dec:.1f}), "
              f"{ips_wall[name]:.1f} images per wall-second; median of {args.rounds} rounds x {n_images} images, "
              f"batch {args.batch_size}, {args.threads} thread(s)")

    trained = all(source.startswith("trained") for _, source in models.values())
    tail = (f"wall_ratio={ips_wall['vit'] / ips_wall['cnn']:.2f}x "
            f"vit_img_s={ips['vit']:.1f} cnn_img_s={ips['cnn']:.1f} "
            f"vit_img_wall_s={ips_wall['vit']:.1f} cnn_img_wall_s={ips_wall['cnn']:.1f}")
    if quality and trained:
        tail += f" vit_psnr={quality['vit']['psnr']:.2f} cnn_psnr={quality['cnn']['psnr']:.2f}"
    tail += " models=" + ("trained" if trained else "untrained(fresh init; speed only)")
    print(f"vit_vs_cnn_throughput={ips['vit'] / ips['cnn']:.2f}x {tail}")


if __name__ == "__main__":
    main()
