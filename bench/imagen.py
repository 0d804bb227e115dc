"""Images per CPU-second of the diffusion pipeline (base, and the cascade with its SR stage) and of a
token pipeline, each at the given settings: one batch of ``--num`` images of one prompt, process CPU
time (run with OMP_NUM_THREADS=1). Final line: ``imagen: diffusion_ips=… cascade_ips=… token_ips=…
token/diffusion=…x``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/imagen.py --diffusion runs/imagen/base/pipeline \\
        --sr runs/imagen/sr-aug0.5/model --token runs/imagen/token-pipe --guidance 5 --token-guidance 2
"""
from __future__ import annotations

import argparse
import time

import torch


def images_per_cpu_second(pipe, num: int = 16, prompt: str = "a red circle above a blue square", **kw) -> float:
    """``num`` images in one call over ``num`` seeded generators: images / process CPU seconds."""
    gens = [torch.Generator().manual_seed(i) for i in range(num)]
    t0 = time.process_time()
    pipe([prompt] * num, num_images=1, generator=gens, output_type="pt", **kw)
    return num / (time.process_time() - t0)


def main() -> None:
    from vqgen.io import load_pretrained
    from vqgen.pipelines import load_pipeline

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--diffusion", required=True, help="diffusion pipeline directory")
    p.add_argument("--sr", default=None, help="diffusion SR model for the cascade figure")
    p.add_argument("--token", default=None, help="token pipeline directory")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the pipeline's)")
    p.add_argument("--sr-steps", type=int, default=10)
    p.add_argument("--sr-aug-level", type=float, default=0.1)
    p.add_argument("--token-guidance", type=float, default=2.0)
    p.add_argument("--num", type=int, default=16)
    a = p.parse_args()
    diffusion = load_pipeline(a.diffusion)
    diffusion = diffusion.with_components(diffusion=diffusion.diffusion.merged(
        steps=a.steps, sr_steps=a.sr_steps, sr_aug_level=a.sr_aug_level))
    figures = {"diffusion_ips": images_per_cpu_second(diffusion, a.num, guidance_scale=a.guidance,
                                                      thresholding="dynamic")}
    if a.sr:
        cascade = diffusion.with_components(upsampler=load_pretrained(a.sr))
        figures["cascade_ips"] = images_per_cpu_second(cascade, a.num, guidance_scale=a.guidance,
                                                       thresholding="dynamic", super_resolution=True)
    if a.token:
        figures["token_ips"] = images_per_cpu_second(load_pipeline(a.token), a.num, guidance_scale=a.token_guidance)
        figures["token/diffusion"] = figures["token_ips"] / figures["diffusion_ips"]
    print("imagen: " + " ".join(f"{k}={v:.3f}" + ("x" if "/" in k else "") for k, v in figures.items()))


if __name__ == "__main__":
    main()
