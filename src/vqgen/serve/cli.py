"""``vqgen serve``: run the HTTP API and web page for a text-to-image pipeline."""
from __future__ import annotations

import ipaddress
import os
import sys

from vqgen.cli import positive_float, positive_int
from vqgen.errors import VqgenError
from vqgen.serve.server import ServerLimits


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve a text-to-image model over HTTP (OpenAI images API) with a web page",
        description="Serve a text-to-image pipeline: POST /v1/images/generations in the OpenAI images "
                    "shape (the openai client works with base_url=http://HOST:PORT/v1), requests "
                    "batched across clients, a web page at /, API docs at /docs (they need the "
                    "key too).")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="pipeline directory (default: the bundled default model)")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda, cuda:1, ...")
    p.add_argument("--decoder", "--sampler", default=None, metavar="NAME",
                   help="the decoder requests use unless they name one: autoregressive (best throughput for "
                        "batched requests), sjd (fewest passes for a single image) or naive (default: the model's)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    p.add_argument("--api-key", default=os.environ.get("VQGEN_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every route but /health, the page shell "
                        "and signed image URLs; the API docs and schema need it too "
                        "(default: $VQGEN_API_KEY, else no key)")
    p.add_argument("--max-batch", type=positive_int, default=32, metavar="N",
                   help="most image rows sampled together (images x rerank candidates): the slots of the "
                        "decode loop (default 32)")
    p.add_argument("--batching", choices=["continuous", "request"], default="continuous",
                   help="continuous (default): a request joins the running decode loop at its next step "
                        "and leaves when its images are done; request: requests that arrive while a batch "
                        "runs wait for it to end and form the next one")
    p.add_argument("--max-queue", type=positive_int, default=64, metavar="N",
                   help="most requests waiting; more are answered 429 (default 64)")
    p.add_argument("--max-n", type=positive_int, default=8, metavar="N",
                   help="most images one request may ask for (default 8)")
    p.add_argument("--timeout", type=positive_float, default=300.0, metavar="SECONDS",
                   help="a request that has not finished by then is answered 504 (default 300)")
    p.add_argument("--batch-window-ms", type=float, default=10.0, metavar="MS",
                   help="request batching: how long an idle server waits for more requests to batch "
                        "with the first (default 10); a continuous loop starts at once")
    p.add_argument("--url-ttl", type=positive_float, default=3600.0, metavar="SECONDS",
                   help="how long images answered as URLs stay downloadable (default 3600)")
    p.add_argument("--read-timeout", type=positive_float, default=ServerLimits.read_timeout, metavar="SECONDS",
                   help="seconds a client has to send a whole request (line, headers, body) after "
                        "connecting or after its first byte; slower clients get 408 and are "
                        f"disconnected (default {ServerLimits.read_timeout:g})")
    p.add_argument("--max-connections", type=positive_int, default=ServerLimits.max_connections, metavar="N",
                   help="open connections past which requests are answered 503 "
                        f"(default {ServerLimits.max_connections})")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="server log level (default info)")
    p.set_defaults(func=run_serve)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_serve(args) -> int:
    import logging

    from vqgen.runtime import pick_device
    from vqgen.serve.app import ServeConfig, create_app
    from vqgen.serve.server import bind_socket, make_server

    if args.api_key == "":  # `--api-key "$KEY"` with KEY unset would otherwise serve without a key
        raise VqgenError("the API key is empty (--api-key or $VQGEN_API_KEY); give a key, or leave both "
                         "unset to serve without one")
    config = ServeConfig(
        model_id=os.path.basename(os.path.normpath(args.model)) if args.model else "vqgen-default",
        api_key=args.api_key, max_batch=args.max_batch, max_queue=args.max_queue,
        max_n=args.max_n, timeout=args.timeout, batch_window=args.batch_window_ms / 1000,
        continuous=args.batching == "continuous",
        url_ttl=args.url_ttl)
    sock = bind_socket(args.host, args.port)
    try:
        if not _is_loopback(args.host) and config.api_key is None:
            print(f"vqgen: warning: listening on {args.host} without --api-key: anyone who can reach "
                  "this port can generate images", file=sys.stderr)
        from vqgen.pipelines import load_pipeline

        pipe = load_pipeline(args.model, device=str(pick_device(args.device)))
        if args.decoder is not None:
            pipe = pipe.with_components(sampling=pipe.sampling.merged(decoder=args.decoder))
        app = create_app(pipe, config)
        logging.basicConfig(level=args.log_level.upper(), format="%(levelname)-9s %(name)s: %(message)s")
        host, port = sock.getsockname()[:2]
        print(f"vqgen: serving {config.model_id} at http://{host}:{port}/ (API base "
              f"http://{host}:{port}/v1, docs /docs)", file=sys.stderr)
        limits = ServerLimits(read_timeout=args.read_timeout, max_connections=args.max_connections)
        make_server(app, sock, args.log_level, limits).run(sockets=[sock])
    finally:
        sock.close()
    return 0
