"""Load test for ``vqgen serve``: concurrent clients on loopback, batched vs one-at-a-time.

Starts the server in this process twice on the same pipeline, first with ``--max-batch`` images
per sampling loop, then with 1 (every request runs alone), and drives each with ``--clients``
concurrent clients sending ``--requests`` requests each (one image per request). The final line
holds requests/s, p50/p99 latency and the error count of both runs, and the throughput ratio.

The model: ``--model DIR``, else the bundled default model when it is installed, else random
weights in the ``parti-tiny`` architecture (8x8 codes of 64, 32 px images): sampling costs the
same whatever the weights are.

    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_load.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_load.py --model DIR --clients 32 --requests 4
"""
from __future__ import annotations

import argparse
import asyncio
import time

import httpx
import numpy as np
import torch

from vqgen.serve.app import ServeConfig, create_app
from vqgen.serve.server import serve_in_thread

PROMPTS = ["a red circle", "a blue square", "a green triangle", "two yellow circles",
           "a red square above a blue circle", "a purple triangle on the left"]


async def _client(client: httpx.AsyncClient, url: str, cid: int, requests: int, latencies, errors):
    for i in range(requests):
        body = {"prompt": PROMPTS[(cid + i) % len(PROMPTS)], "n": 1, "seed": cid * 1000 + i}
        start = time.perf_counter()
        try:
            r = await client.post(url, json=body)
            ok = r.status_code == 200 and len(r.json()["data"]) == 1
        except httpx.HTTPError:
            ok = False
        if ok:
            latencies.append(time.perf_counter() - start)
        else:
            errors.append(body)


async def _load(base: str, clients: int, requests: int) -> dict:
    url = f"{base}/v1/images/generations"
    latencies, errors = [], []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        await client.post(url, json={"prompt": PROMPTS[0]})  # warm-up, not timed
        start = time.perf_counter()
        await asyncio.gather(*(_client(client, url, c, requests, latencies, errors) for c in range(clients)))
        wall = time.perf_counter() - start
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {"rps": len(latencies) / wall, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "errors": len(errors), "wall": wall}


def run(pipe, clients: int, requests: int, max_batch: int) -> dict:
    """Serve ``pipe`` with ``max_batch`` and drive it; returns throughput, latency and errors."""
    config = ServeConfig(max_batch=max_batch, max_queue=clients * 2, timeout=3600.0, batch_window=0.01)
    app = create_app(pipe, config)
    with serve_in_thread(app) as base:
        result = asyncio.run(_load(base, clients, requests))
        result["batches"] = httpx.get(f"{base}/metrics").json()["batches_run"]
    return result


def _fmt(name: str, r: dict) -> str:
    return (f"{name}: {r['rps']:.2f} req/s p50 {r['p50']:.2f}s p99 {r['p99']:.2f}s "
            f"errors {r['errors']} batches {r['batches']}")


def random_tiny_pipeline(device="cpu"):
    """A text-to-image pipeline with random weights: ``parti-tiny`` over a 32 px ViT-VQGAN (8x8 codes)."""
    from dataclasses import replace

    import vqgen.tokenizer.config  # noqa: F401  (registers the tokenizer presets)
    from vqgen.config import get_preset
    from vqgen.pipelines import TextToImagePipeline
    from vqgen.text.bpe import TextTokenizer
    from vqgen.tokenizer.vit_vqgan import ViTVQGAN
    from vqgen.transformer import build_model

    torch.manual_seed(0)
    model = get_preset("transformer", "parti-tiny").model
    vit = get_preset("tokenizer", "tiny").vit
    vit = replace(vit, image_size=vit.patch_size * model.grid[0],
                  quantizer=replace(vit.quantizer, codebook_size=model.codebook_size))
    transformer = build_model(model)
    transformer.text_tokenizer = TextTokenizer.train(PROMPTS * 4, vocab_size=model.text.vocab_size)
    return TextToImagePipeline(ViTVQGAN(vit).to(device).eval(), transformer.to(device).eval())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="pipeline directory (default: the bundled model, else random parti-tiny weights)")
    parser.add_argument("--device", default="cpu", help="device for the pipeline (default cpu)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--requests", type=int, default=4, help="requests per client (default 4)")
    parser.add_argument("--max-batch", type=int, default=32, help="images per loop when batching (default 32)")
    args = parser.parse_args()

    from vqgen.pipelines import TextToImagePipeline, default_model_dir
    from vqgen.pipelines.text_to_image import PIPELINE_NAME

    if args.model is not None or (default_model_dir() / PIPELINE_NAME).is_file():
        pipe, model_name = TextToImagePipeline.from_pretrained(dir=args.model, device=args.device), args.model or "default"
    else:
        pipe, model_name = random_tiny_pipeline(args.device), "random parti-tiny"
    batched = run(pipe, args.clients, args.requests, args.max_batch)
    print(_fmt(f"batched (max_batch={args.max_batch})", batched), flush=True)
    single = run(pipe, args.clients, args.requests, 1)
    print(_fmt("one-at-a-time", single), flush=True)
    print(f"serve_load: {args.clients} clients x {args.requests} requests, model {model_name} "
          f"({pipe.image_size}px), {args.device} | {_fmt('batched', batched)} | {_fmt('one-at-a-time', single)} | "
          f"batched/one-at-a-time throughput {batched['rps'] / single['rps']:.2f}x")


if __name__ == "__main__":
    main()
