"""Load test for ``vqgen serve``: concurrent clients on loopback, batched vs one-at-a-time.

Serves one pipeline in this process with ``--max-batch`` images per sampling loop ("batched") and
with 1 (every request runs alone, "one-at-a-time"), and drives each with ``--clients`` concurrent
clients sending ``--requests`` requests each (one image per request). ``--rounds`` repeats the
pair in alternating order (B S, S B, ...) and pools the results, so that load from other jobs on a
shared machine weighs on both modes alike. The final line holds, for both modes, requests/s,
p50/p99 latency, the error count, the sampling loops run (and mean requests per loop) and the
process CPU time per request (server and clients; steadier than wall time on a busy machine),
then the batched/one-at-a-time ratios of throughput and of CPU per request. A warm-up request
before each run is not counted.

The model: random weights in the ``parti-tiny`` architecture (8x8 codes of 64, 32 px images;
sampling costs the same whatever the weights are), or ``--model DIR`` for a pipeline directory
(e.g. the bundled default model, ``src/vqgen/assets/default_model``).

    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_load.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_load.py --clients 32 --requests 4 --rounds 2
    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_load.py --model DIR
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
        before = (await client.get(f"{base}/metrics")).json()["batches_run"]
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(_client(client, url, c, requests, latencies, errors) for c in range(clients)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        batches = (await client.get(f"{base}/metrics")).json()["batches_run"] - before
    return {"latencies": latencies, "errors": len(errors), "wall": wall, "cpu": cpu, "batches": batches}


def run(pipe, clients: int, requests: int, max_batch: int) -> dict:
    """Serve ``pipe`` with ``max_batch`` and drive it; returns latencies, errors, wall and CPU time."""
    config = ServeConfig(max_batch=max_batch, max_queue=clients * 2, timeout=3600.0, batch_window=0.01)
    app = create_app(pipe, config)
    with serve_in_thread(app) as base:
        return asyncio.run(_load(base, clients, requests))


def pool(runs: list[dict]) -> dict:
    """Throughput, latency percentiles, errors and loops over several runs of one mode."""
    latencies = [x for r in runs for x in r["latencies"]]
    done, wall, batches = len(latencies), sum(r["wall"] for r in runs), sum(r["batches"] for r in runs)
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {"rps": done / wall, "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "errors": sum(r["errors"] for r in runs), "batches": batches, "per_batch": done / max(batches, 1),
            "cpu_ms": 1000 * sum(r["cpu"] for r in runs) / max(done, 1)}


def _fmt(name: str, r: dict) -> str:
    return (f"{name}: {r['rps']:.2f} req/s p50 {r['p50']:.2f}s p99 {r['p99']:.2f}s "
            f"errors {r['errors']} batches {r['batches']} ({r['per_batch']:.1f} req/batch) "
            f"cpu {r['cpu_ms']:.1f} ms/req")


def random_tiny_pipeline(device="cpu"):
    """A text-to-image pipeline with random weights: ``parti-tiny`` over a 32 px ViT-VQGAN (8x8 codes)."""
    from dataclasses import replace

    import vqgen.tokenizer.config  # noqa: F401  (registers the tokenizer presets)
    from vqgen.config import get_preset
    from vqgen.pipelines import TextToImagePipeline
    from vqgen.sampling import SamplingConfig
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
    return TextToImagePipeline(ViTVQGAN(vit).to(device).eval(), transformer.to(device).eval(),
                               sampling=SamplingConfig(guidance_scale=3.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="pipeline directory (default: random weights in the parti-tiny architecture)")
    parser.add_argument("--device", default="cpu", help="device for the pipeline (default cpu)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--requests", type=int, default=4, help="requests per client (default 4)")
    parser.add_argument("--max-batch", type=int, default=32, help="images per loop when batching (default 32)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="batched/one-at-a-time pairs, in alternating order (default 2)")
    args = parser.parse_args()
    if args.max_batch < 2 or args.rounds < 1 or args.clients < 1 or args.requests < 1:
        parser.error("--max-batch must be at least 2, and --rounds, --clients, --requests at least 1")

    from vqgen.pipelines import TextToImagePipeline

    if args.model is not None:
        pipe, model_name = TextToImagePipeline.from_pretrained(dir=args.model, device=args.device), args.model
    else:
        pipe, model_name = random_tiny_pipeline(args.device), "random parti-tiny"
    runs = {args.max_batch: [], 1: []}
    for i in range(args.rounds):
        for max_batch in ([args.max_batch, 1] if i % 2 == 0 else [1, args.max_batch]):
            runs[max_batch].append(run(pipe, args.clients, args.requests, max_batch))
            print(f"round {i + 1}, " + _fmt(f"max_batch={max_batch}", pool(runs[max_batch][-1:])), flush=True)
    batched, single = pool(runs[args.max_batch]), pool(runs[1])
    print(f"serve_load: {args.clients} clients x {args.requests} requests x {args.rounds} rounds, model {model_name} "
          f"({pipe.image_size}px), {args.device} | {_fmt('batched', batched)} | {_fmt('one-at-a-time', single)} | "
          f"batched/one-at-a-time throughput {batched['rps'] / single['rps']:.2f}x "
          f"(CPU per request {single['cpu_ms'] / batched['cpu_ms']:.2f}x less)")


if __name__ == "__main__":
    main()
