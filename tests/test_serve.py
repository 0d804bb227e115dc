"""vqgen serve: the OpenAI client end to end, validation, auth, queue limits, batching, cancellation."""
from __future__ import annotations

import base64
import gc
import io
import json
import socket
import threading
import time

import pytest
import torch
from PIL import Image

from vqgen.errors import ConfigError, VqgenError
from vqgen.sampling import SamplingConfig

fastapi = pytest.importorskip("fastapi", reason="vqgen serve needs fastapi (the 'serve' extra)")
uvicorn = pytest.importorskip("uvicorn", reason="vqgen serve needs uvicorn (the 'serve' extra)")
httpx = pytest.importorskip("httpx", reason="the serve tests need httpx")
from fastapi.testclient import TestClient  # noqa: E402

from vqgen.serve.app import ImageStore, ServeConfig, create_app  # noqa: E402
from vqgen.sampling import image_generators  # noqa: E402
from vqgen.serve.server import serve_in_thread as running_server  # noqa: E402


def tiny_pipeline(max_prompt_length: int = 40):
    """A real ``TextToImagePipeline`` with random tiny weights: 16 px images from 4x4 codes, guidance 3 by default."""
    from vqgen.sampling import SamplingConfig
    from tests.tiny import tiny_pipeline as build

    return build(sampling=SamplingConfig(guidance_scale=3.0), max_prompt_length=max_prompt_length)


@pytest.fixture(scope="module")
def tiny_pipe():
    return tiny_pipeline()


class FakePipeline:
    """The ``TextToImagePipeline`` call shape with hooks, for the server's control flow.

    Draws noise from each image's generator. ``calls`` records the prompt list of every call;
    ``gate`` (when cleared) holds a call until the test sets it; ``fail`` makes calls raise.
    """

    image_size = 16
    max_prompt_length = 40
    upsample_scale = None
    sampling = SamplingConfig(guidance_scale=3.0)

    def __init__(self, gate: threading.Event | None = None, fail: bool = False):
        self.calls: list[list[str]] = []
        self.started = threading.Event()
        self.gate = gate
        self.fail = fail

    def validate_prompt(self, prompt: str) -> str:
        if not prompt or len(prompt) > self.max_prompt_length:
            raise VqgenError("bad prompt length")
        return prompt

    def check_settings(self, settings: SamplingConfig) -> SamplingConfig:
        if settings.rerank > 1:
            raise ConfigError("rerank: reranking needs a pipeline with a reranker/ component (use 1)")
        return settings

    def __call__(self, prompt, num_images=1, settings=None, guidance_scale=None, super_resolution=False,
                 generator=None, output_type="pil"):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        self.calls.append(prompts)
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise RuntimeError("secret internal detail")
        gens = generator if isinstance(generator, list) else [generator] * (len(prompts) * num_images)
        assert len(gens) == len(prompts) * num_images
        if isinstance(guidance_scale, list):
            assert len(guidance_scale) == len(prompts)
        images = []
        for g in gens:
            pixels = (torch.rand(self.image_size, self.image_size, 3, generator=g) * 255).to(torch.uint8)
            images.append(Image.fromarray(pixels.numpy()))
        return type("Out", (), {"images": images, "prompts": prompts})()


def wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def metrics(base, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{base}/metrics", headers=headers).json()


def decode_png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def post_in_thread(url, body, results, key=None, timeout=10.0):
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def run():
        try:
            results.append(httpx.post(url, json=body, headers=headers, timeout=timeout))
        except httpx.HTTPError as e:
            results.append(e)
    t = threading.Thread(target=run)
    t.start()
    return t


# the openai client --------------------------------------------------------------------------------
def test_openai_client_generates_images(tiny_pipe):
    openai = pytest.importorskip("openai")
    app = create_app(tiny_pipe, ServeConfig(model_id="tiny", api_key="sekret"))
    with running_server(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="sekret", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]

        out = client.images.generate(prompt="a red circle", n=2, size="16x16", response_format="b64_json",
                                     extra_body={"seed": 3, "guidance_scale": 2.0})
        assert len(out.data) == 2 and out.size == "16x16"
        images = [decode_png(d.b64_json) for d in out.data]
        assert all(im.size == (16, 16) for im in images)
        assert images[0].tobytes() != images[1].tobytes()  # each image its own generator
        again = client.images.generate(prompt="a red circle", n=2, extra_body={"seed": 3, "guidance_scale": 2.0})
        assert [d.b64_json for d in again.data] == [d.b64_json for d in out.data]  # seeded

        by_url = client.images.generate(prompt="a blue square", response_format="url")
        png = httpx.get(by_url.data[0].url)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (16, 16)

        with pytest.raises(openai.BadRequestError, match="unsupported size"):
            client.images.generate(prompt="x", size="1024x1024")
        bad_key = openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="invalid API key"):
            bad_key.images.generate(prompt="x")


# validation -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(tiny_pipe):
    with TestClient(create_app(tiny_pipe, ServeConfig(max_n=4))) as c:
        yield c


BAD_REQUESTS = [
    ("not json", b"{prompt: 1", "not valid JSON", None),
    ("json nested too deep", b"[" * 5000 + b"]" * 5000, "could not be parsed as JSON", None),
    ("not an object", [1, 2], "JSON object", None),
    ("missing prompt", {"n": 1}, "missing required field 'prompt'", "prompt"),
    ("empty prompt", {"prompt": "   "}, "the prompt is empty", "prompt"),
    ("prompt too long", {"prompt": "x" * 41}, "more than the limit of 40", "prompt"),
    ("prompt with control characters", {"prompt": "a\x07b"}, "control characters", "prompt"),
    ("prompt not a string", {"prompt": 5}, "valid string", "prompt"),
    ("n over the limit", {"prompt": "a", "n": 5}, "between 1 and 4", "n"),
    ("n zero", {"prompt": "a", "n": 0}, "between 1 and 4", "n"),
    ("n a string", {"prompt": "a", "n": "2"}, "valid integer", "n"),
    ("n a float", {"prompt": "a", "n": 1.5}, "valid integer", "n"),
    ("unknown size", {"prompt": "a", "size": "512x512"}, "unsupported size '512x512'", "size"),
    ("bad response_format", {"prompt": "a", "response_format": "jpeg"}, "'b64_json' or 'url'", "response_format"),
    ("unknown field", {"prompt": "a", "colour": "red"}, "unknown field 'colour'", "colour"),
    ("OpenAI-only option", {"prompt": "a", "quality": "hd"}, "OpenAI option vqgen does not support", "quality"),
    ("streaming asked for", {"prompt": "a", "stream": True}, "streaming is not supported", "stream"),
    ("negative guidance", {"prompt": "a", "guidance_scale": -1}, "must be a number in [0, 100]", "guidance_scale"),
    ("guidance a string", {"prompt": "a", "guidance_scale": "high"}, "valid number", "guidance_scale"),
    ("negative seed", {"prompt": "a", "seed": -3}, "greater than or equal to 0", "seed"),
    ("top_p out of range", {"prompt": "a", "top_p": 1.5}, "must be in (0, 1]", "top_p"),
    ("rerank without a reranker", {"prompt": "a", "rerank": 4}, "needs a pipeline with a reranker", "rerank"),
    ("rerank over the limit", {"prompt": "a", "rerank": 10_000}, "must be 1..16", "rerank"),
    ("unknown decoder", {"prompt": "a", "decoder": "magic"}, "unknown decoder 'magic'", "decoder"),
    ("cluster without clusters", {"prompt": "a", "cluster": 4}, "no codebook clusters", "cluster"),
]


@pytest.mark.parametrize("name,body,message,param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_400_with_message(client, name, body, message, param):
    if isinstance(body, bytes):
        r = client.post("/v1/images/generations", content=body, headers={"Content-Type": "application/json"})
    else:
        r = client.post("/v1/images/generations", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert "Traceback" not in r.text


def test_unknown_model_route_and_method(client):
    r = client.post("/v1/images/generations", json={"prompt": "a", "model": "dall-e-3"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"] == "no route /v1/nothing"
    r = client.get("/v1/images/generations")
    assert r.status_code == 405 and "method GET is not allowed" in r.json()["error"]["message"]
    r = client.post("/v1/images/generations", data={"prompt": "a"})  # a form, not JSON
    assert r.status_code == 400 and "Content-Type: application/json" in r.json()["error"]["message"]
    r = client.get("/v1/images/files/doesnotexist.png")
    assert r.status_code == 404 and "expire" in r.json()["error"]["message"]


def test_health_models_docs_and_page(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["sizes"] == ["16x16"] and health["max_n"] == 4
    assert health["default_guidance_scale"] == 3.0
    assert client.get("/v1/models").json()["data"][0]["id"] == "vqgen"
    assert "/v1/images/generations" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'id="prompt"' in page.text


def test_openai_nullable_fields_take_defaults(client):
    body = {"prompt": "a red circle", "n": None, "size": None, "response_format": None, "stream": False,
            "user": "u1", "safety_identifier": "s1"}
    r = client.post("/v1/images/generations", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 1 and "b64_json" in r.json()["data"][0]


def test_body_over_the_limit_answers_413():
    with TestClient(create_app(FakePipeline(), ServeConfig(max_body_bytes=1024))) as c:
        r = c.post("/v1/images/generations", json={"prompt": "x" * 2000})
        assert r.status_code == 413 and "larger than 1024 bytes" in r.json()["error"]["message"]
        chunks = iter([b'{"prompt": "', b"x" * 800, b"x" * 800, b'"}'])  # chunked: no Content-Length
        r = c.post("/v1/images/generations", content=chunks, headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert c.post("/v1/images/generations", json={"prompt": "a"}).status_code == 200


def test_objects_alive_at_start_are_frozen_out_of_the_collector_while_serving():
    """A full collection would otherwise walk the pipeline and every library object: a 90-150 ms
    pause of all threads about once a minute under load (docs/serve.md). The server freezes what is
    alive at start-up, and gives it back to the collector when it stops."""
    gc.unfreeze()
    with TestClient(create_app(FakePipeline())) as c:
        assert gc.get_freeze_count() > 1000
        assert c.post("/v1/images/generations", json={"prompt": "a"}).status_code == 200
    assert gc.get_freeze_count() == 0


def test_not_running_answers_503():
    c = TestClient(create_app(FakePipeline()))  # no lifespan: the batcher never started
    r = c.post("/v1/images/generations", json={"prompt": "a"})
    assert r.status_code == 503 and "not accepting requests" in r.json()["error"]["message"]
    assert c.get("/health").json()["status"] == "unavailable"


def test_pipeline_failure_is_500_without_details():
    with TestClient(create_app(FakePipeline(fail=True)), raise_server_exceptions=False) as c:
        r = c.post("/v1/images/generations", json={"prompt": "a"})
        assert r.status_code == 500
        assert "secret" not in r.text and "Traceback" not in r.text
        assert r.json()["error"]["type"] == "server_error"
        assert c.get("/metrics").json()["requests_failed"] == 1


def test_api_key_required_everywhere_but_public_routes():
    with TestClient(create_app(FakePipeline(), ServeConfig(api_key="k1"))) as c:
        for path in ["/v1/models", "/metrics", "/v1/models/vqgen", "/docs", "/redoc", "/openapi.json"]:
            r = c.get(path)
            assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
        r = c.post("/v1/images/generations", json={"prompt": "a"}, headers={"Authorization": "Bearer k2"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = c.post("/v1/images/generations", json={"prompt": "a"}, headers={"Authorization": "Bearer k1"})
        assert r.status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/health").json()["auth_required"]
        assert c.get("/").status_code == 200  # the page shell: its key field sends the header
        assert c.get("/openapi.json", headers={"Authorization": "Bearer k1"}).status_code == 200


def test_image_store_expires_and_bounds():
    store = ImageStore(ttl=0.05, max_items=2)
    a = store.put(b"a")
    b, c = store.put(b"b"), store.put(b"c")
    assert store.get(a) is None and store.get(b) == b"b" and len(store) == 2  # oldest went
    time.sleep(0.06)
    assert store.get(c) is None


def test_generators_are_independent_per_image():
    g1, g2 = image_generators(5, 2, "cpu")
    assert not torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))
    h1 = image_generators(5, 1, "cpu")[0]
    assert torch.equal(torch.rand(4, generator=h1), torch.rand(4, generator=image_generators(5, 1, "cpu")[0]))


# batching, queue limit, timeout, cancellation (real sockets, concurrent clients) ----------------
def test_two_concurrent_requests_share_one_request_batch(tiny_pipe):
    # Request batching: the first request waits up to 5 s for company; the second fills the batch,
    # so it runs at once. (A continuous loop starts at once, so whether a second request shares it
    # depends on timing; test_serve_continuous.py holds the loop's steps to test that.)
    app = create_app(tiny_pipe, ServeConfig(max_batch=3, batch_window=5.0, continuous=False))
    with running_server(app) as base:
        url = f"{base}/v1/images/generations"
        results = []
        threads = [post_in_thread(url, {"prompt": "one", "n": 2, "seed": 7}, results),
                   post_in_thread(url, {"prompt": "two", "n": 1, "seed": 8, "guidance_scale": 5.0}, results)]
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200, 200]
        m = metrics(base)
        assert m["batches_run"] == 1 and m["requests_served"] == 2
        assert m["max_batch_requests"] == 2 and m["max_batch_images"] == 3
        batched = {json.loads(r.request.content)["prompt"]: r.json()["data"] for r in results}
        # the same request in another batch gives the same images: seeds ignore batch neighbours
        results = []
        threads = [post_in_thread(url, {"prompt": "three", "n": 2}, results),
                   post_in_thread(url, {"prompt": "two", "n": 1, "seed": 8, "guidance_scale": 5.0}, results)]
        for t in threads:
            t.join()
        rebatched = {json.loads(r.request.content)["prompt"]: r.json()["data"] for r in results}
        assert rebatched["two"] == batched["two"]
        assert metrics(base)["batches_run"] == 2


def test_full_queue_answers_429_and_recovers():
    gate = threading.Event()
    pipe = FakePipeline(gate=gate)
    app = create_app(pipe, ServeConfig(max_batch=1, max_queue=1, batch_window=0))
    with running_server(app) as base:
        url = f"{base}/v1/images/generations"
        results = []
        first = post_in_thread(url, {"prompt": "running"}, results)
        assert pipe.started.wait(5)  # the first request holds the sampling loop
        second = post_in_thread(url, {"prompt": "waiting"}, results)
        wait_until(lambda: metrics(base)["queue_depth"] == 1)
        r = httpx.post(url, json={"prompt": "rejected"})
        assert r.status_code == 429
        assert "queue is full" in r.json()["error"]["message"] and r.json()["error"]["code"] == "queue_full"
        assert r.headers["Retry-After"] == "1"
        gate.set()
        first.join()
        second.join()
        assert [x.status_code for x in results] == [200, 200]
        assert httpx.post(url, json={"prompt": "later"}).status_code == 200
        assert metrics(base)["requests_rejected"] == 1


def test_request_timeout_answers_504():
    gate = threading.Event()
    app = create_app(FakePipeline(gate=gate), ServeConfig(timeout=0.3, batch_window=0))
    with running_server(app) as base:
        r = httpx.post(f"{base}/v1/images/generations", json={"prompt": "slow"})
        gate.set()
        assert r.status_code == 504 and "did not finish within 0.3 s" in r.json()["error"]["message"]
        assert metrics(base)["requests_timed_out"] == 1


def test_client_disconnect_cancels_queued_request():
    gate = threading.Event()
    pipe = FakePipeline(gate=gate)
    app = create_app(pipe, ServeConfig(max_batch=1, batch_window=0))
    with running_server(app) as base:
        url = f"{base}/v1/images/generations"
        results = []
        first = post_in_thread(url, {"prompt": "running"}, results)
        assert pipe.started.wait(5)
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            httpx.post(url, json={"prompt": "abandoned"}, timeout=0.3)
        wait_until(lambda: metrics(base)["requests_cancelled"] == 1)
        assert metrics(base)["queue_depth"] == 0
        gate.set()
        first.join()
        assert results[0].status_code == 200
        wait_until(lambda: metrics(base)["batches_run"] == 1)
        assert all("abandoned" not in call for call in pipe.calls)  # never sampled


# command line -----------------------------------------------------------------------------------
def test_serve_cli_help_and_busy_port(capsys):
    from vqgen.cli import build_parser, main

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 8000  # this machine only, unless asked

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0 and "--max-batch" in capsys.readouterr().out
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", "--port", "0", "--model", "/nonexistent/pipeline"]) == 2
    err = capsys.readouterr().err
    assert "vqgen: error:" in err and "does not exist" in err and "Traceback" not in err



def test_any_pipeline_type_is_served_with_its_input_as_the_prompt():
    """A class-conditional pipeline is served like a text one: the prompt names the class."""
    from tests.tiny import tiny_pipeline as build

    pipe = build("vim", num_classes=3, class_names=["cat", "dog", "owl"], sampling=SamplingConfig(guidance_scale=2.0))
    with TestClient(create_app(pipe, ServeConfig())) as c:
        r = c.post("/v1/images/generations", json={"prompt": "owl", "n": 2, "seed": 1})
        assert r.status_code == 200 and len(r.json()["data"]) == 2
        r = c.post("/v1/images/generations", json={"prompt": "emu"})
        assert r.status_code == 400 and "unknown class 'emu'" in r.json()["error"]["message"]
