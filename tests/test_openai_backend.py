"""The openai backend (client) against a real `reasonloop serve` server and against small
scripted HTTP servers on 127.0.0.1 that fail on purpose (503s, 429, slow answers, 400s)."""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch

from reasonloop.algorithms.sft import train_sft
from reasonloop.config import ConfigError, ModelConfig, TrainConfig, validate
from reasonloop.models import build_model, load_model
from reasonloop.models.base import LanguageModel, Sampling
from reasonloop.models.openai import (
    NotSupportedByBackend,
    OpenAIBackendError,
    OpenAIBackendTimeout,
    OpenAIModel,
)
from reasonloop.models.tiny import TinyModel
from reasonloop.serve import ReasonerServer
from reasonloop.types import SFTExample

NAME = "copier"
KEY_ENV = "REASONLOOP_TEST_API_KEY"
SECRET = "sk-test-" + "7f3a9c" * 6
GREEDY = Sampling(temperature=0, max_new_tokens=8)


@pytest.fixture(scope="module")
def copier() -> TinyModel:
    """A model trained for about 2 s to copy 4 letters after "=" and end with a newline."""
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdef", k=4)) for _ in range(600)]
    model = TinyModel.create(ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=32), seed=0)
    cfg = TrainConfig(steps=150, batch_size=32, lr=5e-3, warmup_steps=10)
    train_sft(model, [SFTExample(w + "=", w) for w in words], cfg, seed=0)
    return model


@pytest.fixture(scope="module")
def served(copier: TinyModel) -> Iterator[ReasonerServer]:
    with ReasonerServer(copier, NAME, batch_wait_ms=20).start() as srv:
        yield srv


# A scripted server: `answer(request number, handler)` -> (status, JSON body, headers) or None
# (to drop the connection); it may sleep first.
Answer = Callable[[int, BaseHTTPRequestHandler], tuple[int, Any, dict[str, str]] | None]


class Scripted:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth: list[str | None] = []
        self.lock = threading.Lock()


def completion(texts: list[str]) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 0,
        "model": NAME,
        "choices": [
            {"index": i, "text": t, "finish_reason": "stop", "logprobs": None}
            for i, t in enumerate(texts)
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": sum(len(t) + 1 for t in texts)},
    }


@contextmanager
def scripted(answer: Answer) -> Iterator[tuple[str, Scripted]]:
    state = Scripted(answer)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with state.lock:
                state.calls += 1
                k = state.calls
                state.auth.append(self.headers.get("Authorization"))
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                out = state.answer(k, self)
            finally:
                with state.lock:
                    state.in_flight -= 1
            if out is None:
                self.close_connection = True
                return
            status, body, headers = out
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for h, v in headers.items():
                self.send_header(h, v)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


# ------------------------------------------------------------------ against reasonloop serve


def test_greedy_text_through_the_server_equals_the_models_own(copier, served):
    prompts = [w + "=" for w in ("abcd", "fede", "cafe", "bead", "dace", "face", "ebbf", "aaaa")]
    own = copier.generate(prompts, 1, GREEDY)
    assert [cs[0].text for cs in own] == [p[:-1] for p in prompts]  # the model learned its task
    client = OpenAIModel(served.url, NAME, max_concurrency=4)
    try:
        got = client.generate(prompts, 1, GREEDY)
        assert [[c.text for c in cs] for cs in got] == [[c.text for c in cs] for cs in own]
        # n_tokens: the 4 letters and the newline, as the tiny backend counts them
        assert [cs[0].n_tokens for cs in got] == [cs[0].n_tokens for cs in own] == [5] * 8
        assert all(cs[0].stopped for cs in got) and all(cs[0].stopped for cs in own)
        # Two tokens of a 4-letter copy: cut by the budget, finish_reason "length" -> not stopped.
        short = Sampling(temperature=0.0, max_new_tokens=2)
        cut_own = copier.generate(prompts[:2], 1, short)
        cut_got = client.generate(prompts[:2], 1, short)
        assert [cs[0].text for cs in cut_got] == [cs[0].text for cs in cut_own] == ["ab", "fe"]
        assert not any(cs[0].stopped for cs in cut_got + cut_own)
        sampled = client.generate(prompts[:2], 3, Sampling(temperature=1.0, max_new_tokens=8))
        assert [len(cs) for cs in sampled] == [3, 3]
        assert client.requests_sent == 12
    finally:
        client.close()
    chat = OpenAIModel(served.url, NAME, api="chat")
    assert [cs[0].text for cs in chat.generate(prompts[:3], 1, GREEDY)] == ["abcd", "fede", "cafe"]


def test_built_from_a_run_config(served):
    data = {"model": {"backend": "openai", "base_url": served.url, "model_name": NAME}}
    cfg = validate(data, "test").model
    for model in (build_model(cfg, seed=0), load_model(cfg, "unused")):
        assert isinstance(model, OpenAIModel) and model.model == NAME
        assert model.generate(["bead="], 1, GREEDY)[0][0].text == "bead"
    with pytest.raises(ConfigError, match="needs base_url"):
        validate({"model": {"backend": "openai", "model_name": NAME}}, "test")
    with pytest.raises(ConfigError, match="max_concurrency"):
        validate({"model": {**data["model"], "max_concurrency": 0}}, "test")


def test_the_endpoint_check_lists_the_served_model_and_names_a_missing_one(served):
    assert OpenAIModel(served.url, NAME).check_endpoint() == [NAME]
    assert OpenAIModel(served.url, NAME, api="chat").check_endpoint() == [NAME]
    with pytest.raises(OpenAIBackendError, match=rf"does not serve model 'other'.*{NAME}"):
        OpenAIModel(served.url, "other").check_endpoint()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: refused
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        with pytest.raises(OpenAIBackendError, match=rf"GET {url}/models: connection error"):
            OpenAIModel(url, NAME).check_endpoint()
    finally:
        sock.close()


def test_a_server_error_names_the_status_and_the_servers_message(served):
    client = OpenAIModel(served.url, "no-such-model", retries=3)
    with pytest.raises(OpenAIBackendError, match=r"HTTP 404: model 'no-such-model' does not") as e:
        client.generate(["abcd="], 1, GREEDY)
    assert e.value.status == 404 and e.value.attempts == 1 and client.requests_sent == 1
    bad = OpenAIModel(served.url, NAME)
    with pytest.raises(OpenAIBackendError, match=r"HTTP 400: prompt: .*'\\t'"):
        bad.generate(["a\tb="], 1, GREEDY)


# ------------------------------------------------------------------ retries, timeouts


def test_retries_503_twice_then_succeeds(caplog):
    def answer(k: int, _: BaseHTTPRequestHandler):
        if k <= 2:
            return 503, error("overloaded, come back later"), {}
        return 200, completion(["abcd"]), {}

    with scripted(answer) as (url, state), caplog.at_level(logging.WARNING):
        client = OpenAIModel(url, NAME, retries=3, backoff_s=0.01)
        out = client.generate(["abcd="], 1, GREEDY)
    assert out[0][0].text == "abcd" and out[0][0].n_tokens == 5
    assert state.calls == 3 and client.requests_sent == 3
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and "HTTP 503: overloaded" in retries[0] and "retry 2/3" in retries[1]


def test_gives_up_after_the_retries_and_does_not_retry_a_400():
    with scripted(lambda k, _: (500, error("boom"), {})) as (url, state):
        client = OpenAIModel(url, NAME, retries=2, backoff_s=0.01)
        with pytest.raises(
            OpenAIBackendError, match="failed after 3 attempts: HTTP 500: boom"
        ) as e:
            client.generate(["abcd="], 1, GREEDY)
    assert state.calls == 3 and e.value.status == 500 and e.value.attempts == 3
    with scripted(lambda k, _: (400, error("n: must be in [1, 128]"), {})) as (url, state):
        client = OpenAIModel(url, NAME, retries=5, backoff_s=0.01)
        with pytest.raises(OpenAIBackendError, match=r"HTTP 400: n: must be"):
            client.generate(["abcd="], 1, GREEDY)
    assert state.calls == 1


def test_a_429_waits_for_retry_after():
    def answer(k: int, _: BaseHTTPRequestHandler):
        if k == 1:
            return 429, error("rate limited"), {"Retry-After": "0.5"}
        return 200, completion(["fede"]), {}

    with scripted(answer) as (url, state):
        client = OpenAIModel(url, NAME, retries=1, backoff_s=0.01)
        t = time.monotonic()
        assert client.generate(["fede="], 1, GREEDY)[0][0].text == "fede"
        assert time.monotonic() - t >= 0.5 and state.calls == 2


def test_a_dropped_connection_is_retried():
    with scripted(lambda k, _: None if k == 1 else (200, completion(["cafe"]), {})) as (url, st):
        client = OpenAIModel(url, NAME, retries=2, backoff_s=0.01)
        assert client.generate(["cafe="], 1, GREEDY)[0][0].text == "cafe"
    assert st.calls == 2


def test_a_slow_server_times_out_with_a_clear_error():
    def answer(k: int, _: BaseHTTPRequestHandler):
        time.sleep(1.5)
        return 200, completion(["late"]), {}

    with scripted(answer) as (url, state):
        client = OpenAIModel(url, NAME, timeout_s=0.2, retries=1, backoff_s=0.01)
        t = time.monotonic()
        with pytest.raises(
            OpenAIBackendTimeout, match=r"failed after 2 attempts: timed out after 0.2s"
        ):
            client.generate(["abcd="], 1, GREEDY)
        assert time.monotonic() - t < 1.4  # it did not wait for the answers
    assert state.calls == 2


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = OpenAIModel(f"http://127.0.0.1:{port}/v1", NAME, retries=2, backoff_s=0.01)
    with pytest.raises(OpenAIBackendError, match="failed after 3 attempts: connection error"):
        client.generate(["abcd="], 1, GREEDY)
    assert client.requests_sent == 3


def test_max_concurrency_bounds_the_requests_in_flight():
    def answer(k: int, _: BaseHTTPRequestHandler):
        time.sleep(0.15)
        return 200, completion(["abcd"]), {}

    with scripted(answer) as (url, state):
        client = OpenAIModel(url, NAME, max_concurrency=3)
        out = client.generate(["abcd="] * 12, 1, GREEDY)
        client.close()
    assert len(out) == 12 and state.calls == 12
    assert state.max_in_flight == 3


# ------------------------------------------------------------------ the API key


def test_the_api_key_is_sent_but_never_shown(monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)

    def answer(k: int, h: BaseHTTPRequestHandler):
        # A careless server that echoes the request's headers into its errors.
        echoed = f"bad auth header {h.headers.get('Authorization')}"
        return (503, error(echoed), {}) if k == 1 else (401, error(echoed), {})

    with scripted(answer) as (url, state), caplog.at_level(logging.DEBUG):
        client = OpenAIModel(url, NAME, api_key_env=KEY_ENV, retries=2, backoff_s=0.01)
        with pytest.raises(OpenAIBackendError) as e:
            client.generate(["abcd="], 1, GREEDY)
    assert state.auth == [f"Bearer {SECRET}"] * 2  # the key did reach the server
    assert e.value.status == 401 and "[redacted]" in str(e.value)
    shown = [
        repr(client),
        str(client.__dict__),
        repr(client.copy()),
        str(e.value),
        "".join(traceback.format_exception(e.value)),
        caplog.text,
        "\n".join(r.getMessage() for r in caplog.records),
    ]
    assert "[redacted]" in caplog.text  # the retry's log line quoted the echo, scrubbed
    for text in shown:
        assert SECRET not in text
    assert KEY_ENV in repr(client)  # the variable's name is fine to show


def test_a_missing_key_variable_is_named(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ValueError, match=f"{KEY_ENV}.*not set"):
        OpenAIModel("http://127.0.0.1:1/v1", NAME, api_key_env=KEY_ENV)
    with pytest.raises(ValueError, match="base_url must be an http"):
        OpenAIModel("127.0.0.1:8000", NAME)
    with pytest.raises(ValueError, match="must not carry a query, fragment or credentials"):
        OpenAIModel("http://user:pw@127.0.0.1:8000/v1", NAME)


# ------------------------------------------------------------------ what it cannot do


def test_training_and_scoring_raise_not_implemented_naming_the_backend():
    client = OpenAIModel("http://127.0.0.1:1/v1", NAME)
    calls = [
        lambda: client.module,
        lambda: client.tokenizer,
        lambda: client.forward(torch.zeros(1, 2, dtype=torch.long)),
        lambda: client.logprobs(["a"], ["b"]),
        lambda: client.save("/tmp/x"),
    ]
    for call in calls:
        with pytest.raises(NotImplementedError, match="the openai backend generates over HTTP"):
            call()
    # An AttributeError too, so a protocol check answers "not a full model" instead of raising.
    assert issubclass(NotSupportedByBackend, AttributeError)
    assert not isinstance(client, LanguageModel)
    assert client.generate([], 3, GREEDY) == []
    with pytest.raises(ValueError, match="n .* must be >= 1"):
        client.generate(["a"], 0, GREEDY)
