"""Load test for ``vqgen serve``: continuous batching vs request batching under Poisson arrivals.

Serves one pipeline in this process twice per round, with ``--batching continuous`` (requests join
the running decode loop at its next step) and ``--batching request`` (requests that arrive while a
batch runs wait for it and form the next one), both with ``--max-batch`` image rows, and sends each
the same open-loop stream of requests: ``--requests`` requests, one image each, arriving as a
Poisson process of ``--rate`` requests per second (exponential gaps from ``--seed``; a request is
sent at its time whether or not earlier ones are answered). Rounds alternate the order of the two
modes (C R, R C, ...) and pool the results, so that other load on a shared machine weighs on both.
For each mode: mean, p50 and p99 latency (send to answer), throughput (answers per second from the
first send to the last answer; equal to the offered rate when the server keeps up), errors, and
the decode loops and steps run.

Then a disconnect scenario on continuous batching: the same stream, but ``--disconnect`` of the
clients (picked at random) hang up mid-generation (after a random 20-80 % of the median latency
measured above); the others must all be answered: ``lost`` counts those that were not (must be 0).

The final line: ``serve_load: continuous_vs_batched_p99=<request p99 / continuous p99>x ...``.

The model: random weights in the ``parti-tiny`` architecture (8x8 codes of 64, 32 px images;
sampling costs the same whatever the weights are), or ``--model DIR`` for a pipeline directory.

    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_load.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_load.py --rate 20 --requests 200 --rounds 2
    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_load.py --rate 6 --sweep 3,10,15,20   # latency vs load
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import time
from concurrent.futures import ProcessPoolExecutor

import httpx
import numpy as np
import torch

from vqgen.serve.app import ServeConfig, create_app
from vqgen.serve.server import serve_in_thread

PROMPTS = ["a red circle", "a blue square", "a green triangle", "two yellow circles",
           "a red square above a blue circle", "a purple triangle on the left"]
MODES = {"continuous": True, "request": False}


def arrivals(n: int, rate: float, seed: int) -> list[float]:
    """Send times (s from the start) of ``n`` requests arriving as a Poisson process of ``rate``/s."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


async def _request(client, url: str, i: int, at: float, t0: float, hang_up: float | None, out: dict,
                   extra: dict):
    await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
    body = {"prompt": PROMPTS[i % len(PROMPTS)], "n": 1, "seed": i, **extra}
    sent = time.perf_counter()
    try:
        post = client.post(url, json=body)
        r = await (post if hang_up is None else asyncio.wait_for(post, hang_up))
        ok = r.status_code == 200 and len(r.json()["data"]) == 1
    except TimeoutError:  # this client hung up on purpose
        out["hung_up"] += 1
        return
    except httpx.HTTPError:
        ok = False
    if ok:
        out["answered"].append(i)
        out["latencies"].append(time.perf_counter() - sent)
        out["last"] = max(out["last"], time.perf_counter())
    else:
        out["errors"] += 1


async def _drive(base: str, times: list[float], hang_ups: dict[int, float], extra: dict) -> dict:
    url = f"{base}/v1/images/generations"
    out = {"latencies": [], "answered": [], "errors": 0, "hung_up": 0, "last": 0.0}
    limits = httpx.Limits(max_connections=len(times), max_keepalive_connections=len(times))
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        await client.post(url, json={"prompt": PROMPTS[0], **extra})  # warm-up, not timed
        before = (await client.get(f"{base}/metrics")).json()
        t0 = time.perf_counter()
        await asyncio.gather(*(_request(client, url, i, at, t0, hang_ups.get(i), out, extra) for i, at in enumerate(times)))
        after = (await client.get(f"{base}/metrics")).json()
    out["wall"] = out["last"] - t0
    for key in ("batches_run", "steps_run", "requests_cancelled", "requests_joined_running"):
        out[key] = after[key] - before[key]
    return out


def _client(base: str, times: list[float], hang_ups: dict[int, float], extra: dict) -> dict:
    """The load generator, in a process of its own (so that it does not share the server's GIL)."""
    torch.set_num_threads(1)
    return asyncio.run(_drive(base, times, hang_ups, extra))


def run(pipe, mode: str, max_batch: int, times: list[float], hang_ups: dict[int, float] | None = None,
        extra: dict | None = None, client: ProcessPoolExecutor | None = None) -> dict:
    """Serve ``pipe`` in ``mode`` and send the requests at ``times`` from the ``client`` process (or
    this one); latencies, errors, counters."""
    config = ServeConfig(max_batch=max_batch, max_queue=len(times) + 1, timeout=3600.0, batch_window=0.01,
                         continuous=MODES[mode])
    with serve_in_thread(create_app(pipe, config)) as base:
        if client is None:
            return _client(base, times, hang_ups or {}, extra or {})
        return client.submit(_client, base, times, hang_ups or {}, extra or {}).result()


def pool(runs: list[dict]) -> dict:
    """Latency mean/p50/p99, throughput, errors and loop counters over runs of one mode."""
    lat = np.array([x for r in runs for x in r["latencies"]] or [float("nan")])
    return {"mean": float(lat.mean()), "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "rps": len(lat) / sum(r["wall"] for r in runs), "errors": sum(r["errors"] for r in runs),
            "loops": sum(r["batches_run"] for r in runs), "steps": sum(r["steps_run"] for r in runs)}


def _fmt(name: str, r: dict) -> str:
    return (f"{name}: mean {r['mean']:.3f}s p50 {r['p50']:.3f}s p99 {r['p99']:.3f}s {r['rps']:.2f} req/s "
            f"errors {r['errors']} loops {r['loops']}" + (f" steps {r['steps']}" if r["steps"] else ""))


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
    parser.add_argument("--rate", type=float, default=20.0, help="mean arrivals per second (default 20): the "
                        "headline rate, and the disconnect run's")
    parser.add_argument("--sweep", default="", metavar="R1,R2,...",
                        help="more arrival rates, each measured the same way and reported as p99_ratio@R=...x")
    parser.add_argument("--requests", type=int, default=200, help="requests per run (default 200)")
    parser.add_argument("--max-batch", type=int, default=16, help="image rows sampled together (default 16)")
    parser.add_argument("--rounds", type=int, default=2, help="continuous/request pairs, alternating (default 2)")
    parser.add_argument("--disconnect", type=float, default=0.25,
                        help="fraction of clients that hang up mid-generation in the last run (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrival times (default 0)")
    parser.add_argument("--rerank", type=int, default=None,
                        help="rerank candidates asked for by every request (default: the pipeline's own)")
    parser.add_argument("--in-process-client", action="store_true",
                        help="send the requests from this process (default: a client process of its own)")
    args = parser.parse_args()
    try:
        sweep = [float(r) for r in args.sweep.split(",") if r.strip()]
    except ValueError:
        parser.error(f"--sweep {args.sweep!r}: comma-separated rates")
    if any(r <= 0 for r in sweep) or args.rate <= 0 or args.requests < 1 or args.max_batch < 1 or args.rounds < 1 or not 0 <= args.disconnect < 1:
        parser.error("--rate, --requests, --max-batch, --rounds must be positive and --disconnect in [0, 1)")

    from vqgen.pipelines import TextToImagePipeline

    if args.model is not None:
        pipe, model_name = TextToImagePipeline.from_pretrained(dir=args.model, device=args.device), args.model
    else:
        pipe, model_name = random_tiny_pipeline(args.device), "random parti-tiny"
    extra = {} if args.rerank is None else {"rerank": args.rerank}
    client = None if args.in_process_client else ProcessPoolExecutor(1, multiprocessing.get_context("spawn"))
    by_rate = {}
    for rate in [args.rate] + [r for r in sweep if r != args.rate]:
        runs = {mode: [] for mode in MODES}
        for i in range(args.rounds):
            times = arrivals(args.requests, rate, args.seed + i)
            for mode in (list(MODES) if i % 2 == 0 else list(MODES)[::-1]):
                runs[mode].append(run(pipe, mode, args.max_batch, times, extra=extra, client=client))
                print(f"rate {rate:g}/s, round {i + 1}, " + _fmt(mode, pool(runs[mode][-1:])), flush=True)
        by_rate[rate] = pool(runs["continuous"]), pool(runs["request"])
    cont, req = by_rate[args.rate]
    swept = " ".join(f"p99_ratio@{r:g}={q['p99'] / c['p99']:.2f}x mean_ratio@{r:g}={q['mean'] / c['mean']:.2f}x "
                     f"rps@{r:g}={c['rps']:.2f}/{q['rps']:.2f}" for r, (c, q) in by_rate.items())

    rng = random.Random(args.seed + 1000)
    times = arrivals(args.requests, args.rate, args.seed + 1000)
    leaving = rng.sample(range(args.requests), int(args.disconnect * args.requests))
    hang_ups = {i: cont["p50"] * rng.uniform(0.2, 0.8) for i in leaving}
    d = run(pipe, "continuous", args.max_batch, times, hang_ups, extra, client)
    if client is not None:
        client.shutdown()
    lost = len(set(range(args.requests)) - set(leaving) - set(d["answered"]))  # staying clients not answered
    print(f"disconnects: {d['hung_up']} of {args.requests} clients hung up ({d['requests_cancelled']} cancelled "
          f"mid-run by the server), {len(d['latencies'])} answered, {lost} of the others lost, {d['errors']} errors",
          flush=True)
    print(f"serve_load: continuous_vs_batched_p99={req['p99'] / cont['p99']:.2f}x "
          f"continuous_vs_batched_mean={req['mean'] / cont['mean']:.2f}x "
          f"throughput {cont['rps']:.2f} vs {req['rps']:.2f} req/s (offered {args.rate:g}/s) lost_on_disconnect={lost} "
          f"{swept} | "
          f"{args.requests} Poisson requests x {args.rounds} rounds, max_batch {args.max_batch}, model {model_name} "
          f"({pipe.image_size}px), rerank {args.rerank or 'default'}, {args.device}, "
          f"client {'in process' if client is None else 'process'} | {_fmt('continuous', cont)} | {_fmt('request', req)}")


if __name__ == "__main__":
    main()
