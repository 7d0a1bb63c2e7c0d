"""`reasonloop serve`: a real server on 127.0.0.1 (ephemeral port) over a tiny model trained for
a few seconds to copy four letters, queried with the official `openai` client and raw HTTP."""

from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from reasonloop import cli
from reasonloop.algorithms.sft import train_sft
from reasonloop.config import ConfigError, ModelConfig, TrainConfig
from reasonloop.models.base import Sampling
from reasonloop.models.tiny import TinyModel
from reasonloop.serve import ReasonerServer, resolve_checkpoint
from reasonloop.types import SFTExample

NAME = "copier"
WORDS = ["abcd", "fede", "cafe", "bead", "dace", "face", "aaaa", "ebbf"]


def train_copier() -> TinyModel:
    """A model that copies 4 letters after "=" and ends with a newline (about 2 s of training)."""
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdef", k=4)) for _ in range(600)]
    model = TinyModel.create(ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=32), seed=0)
    cfg = TrainConfig(steps=150, batch_size=32, lr=5e-3, warmup_steps=10)
    train_sft(model, [SFTExample(w + "=", w) for w in words], cfg, seed=0)
    return model


@pytest.fixture(scope="module")
def copier() -> TinyModel:
    model = train_copier()
    greedy = Sampling(temperature=0, max_new_tokens=8)
    # The tests below check the server against the model; first, the model has learned its task.
    assert [c[0].text for c in model.generate([w + "=" for w in WORDS], 1, greedy)] == WORDS
    return model


@pytest.fixture(scope="module")
def server(copier: TinyModel):
    with ReasonerServer(copier, NAME, batch_wait_ms=20).start() as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ReasonerServer):
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def raw(server: ReasonerServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """(status, decoded JSON) of one request; `body` bytes are sent as they are."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def greedy_texts(model: TinyModel, prompts: list[str], **kw: Any) -> list[str]:
    sampling = Sampling(**{"temperature": 0, "max_new_tokens": 8, **kw})
    return [cs[0].text for cs in model.generate(prompts, 1, sampling)]


# ---------------------------------------------------------------------------- routes


def test_models_list_retrieve_and_health(server, client):
    assert [m.id for m in client.models.list()] == [NAME]
    assert client.models.retrieve(NAME).owned_by == "reasonloop"
    status, body = raw(server, "GET", "/health")
    assert status == 200 and body["status"] == "ok"
    status, body = raw(server, "GET", "/v1/models/other")
    assert status == 404 and body["error"]["code"] == "model_not_found"


def test_completions_match_the_model_with_n_stop_and_usage(copier, server, client):
    prompts = ["abcd=", "fede="]
    r = client.completions.create(
        model=NAME, prompt=prompts, n=3, stop="\n", max_tokens=8, temperature=0
    )
    assert r.object == "text_completion" and r.model == NAME
    assert [c.index for c in r.choices] == list(range(6))
    # prompt-major: prompt 0's three samples first
    assert [c.text for c in r.choices] == ["abcd"] * 3 + ["fede"] * 3
    assert {c.finish_reason for c in r.choices} == {"stop"}
    # bos + 5 characters per prompt; 4 characters + the newline per choice
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (12, 30, 42)
    one = client.completions.create(model=NAME, prompt="cafe=", stop=["\n"], temperature=0)
    assert one.choices[0].text == greedy_texts(copier, ["cafe="])[0] == "cafe"


def test_without_stop_the_raw_continuation_runs_to_max_tokens(copier, client):
    r = client.completions.create(model=NAME, prompt="abcd=", max_tokens=9, temperature=0)
    expected = greedy_texts(copier, ["abcd="], max_new_tokens=9, stop_at_newline=False)[0]
    assert r.choices[0].text == expected and expected.startswith("abcd\n")
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 9


def test_stop_strings_cut_at_the_first_match(client):
    r = client.completions.create(
        model=NAME, prompt="abcd=", max_tokens=8, temperature=0, stop=["d", "c"]
    )
    assert r.choices[0].text == "ab" and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 3  # "abc": the stop string is what ended it
    r = client.completions.create(
        model=NAME, prompt="abcd=", max_tokens=8, temperature=0, stop="d\n"
    )
    assert r.choices[0].text == "abc" and r.choices[0].finish_reason == "stop"


def test_max_tokens_beyond_the_context_is_cut_to_fit(copier, client):
    prompt = "ab" * 13 + "="  # 28 tokens with bos: 4 left of max_seq_len 32
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=100, temperature=0)
    sampling = Sampling(temperature=0, max_new_tokens=100, stop_at_newline=False)
    own = copier.generate([prompt], 1, sampling)[0][0]
    assert (own.text, own.n_tokens) == ("aaaa", 4)  # the 4 positions left, no stop
    assert r.choices[0].text == own.text and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (28, 4)


def test_chat_uses_the_last_user_message_and_ends_at_the_newline(client):
    r = client.chat.completions.create(
        model=NAME,
        messages=[
            {"role": "system", "content": "ignored by a model without a chat template"},
            {"role": "user", "content": "abcd="},
            {"role": "assistant", "content": "abcd"},
            {"role": "user", "content": [{"type": "text", "text": "face="}]},
        ],
        temperature=0,
        n=2,
    )
    assert r.object == "chat.completion"
    assert [c.message.content for c in r.choices] == ["face", "face"]
    assert [c.message.role for c in r.choices] == ["assistant", "assistant"]
    assert {c.finish_reason for c in r.choices} == {"stop"}
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (6, 10)


def test_a_seed_reproduces_the_models_own_samples(copier, client):
    kw = dict(model=NAME, prompt="abcd=", n=4, temperature=1.5, max_tokens=6, stop="\n")
    a = client.completions.create(seed=7, **kw)
    b = client.completions.create(seed=7, **kw)
    own = copier.generate(["abcd="], 4, Sampling(temperature=1.5, max_new_tokens=6, seed=7))
    assert [c.text for c in a.choices] == [c.text for c in b.choices] == [c.text for c in own[0]]


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "param", "words"),
    [
        ({"temperature": "hot"}, "temperature", "must be a number"),
        ({"temperature": 2.5}, "temperature", "[0.0, 2.0]"),
        ({"top_p": 0}, "top_p", "(0.0, 1.0]"),
        ({"n": 0}, "n", "[1, 128]"),
        ({"max_tokens": -1}, "max_tokens", "[1, inf]"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"stop": 5}, "stop", "string or a list of strings"),
        ({"prompt": "caf\u00e9="}, "prompt", "not in the tiny tokenizer's vocabulary"),
        ({"prompt": ["ab=", "x" * 40]}, "prompt[1]", "context is 32 tokens"),
        ({"prompt": [1, 2]}, "prompt", "token-id prompts"),
        ({"echo": True}, "echo", "not supported"),
        ({"logprobs": 2}, "logprobs", "not supported"),
        ({"extra_body": {"frobnicate": 1}}, "frobnicate", "unrecognized"),
    ],
)
def test_bad_completion_requests_are_400_naming_the_field(client, kwargs, param, words):
    import openai

    body = {"model": NAME, "prompt": "ab=", **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**body)
    assert e.value.status_code == 400
    err = e.value.body
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert err["message"].startswith(f"{param}: ") and words in err["message"]


def test_bad_chat_requests_and_streaming_are_400(client):
    import openai

    cases = [
        ({"messages": []}, "messages"),
        ({"messages": [{"content": "ab="}]}, "messages[0].role"),
        ({"messages": [{"role": "system", "content": "only a system message"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "ab="}], "stream": True}, "stream"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=NAME, **kwargs)
        assert e.value.body["param"] == param, kwargs


def test_unknown_model_and_route_are_404_and_bad_json_is_400(server, client):
    import openai

    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-5", prompt="ab=")
    assert e.value.body["code"] == "model_not_found" and "copier" in e.value.body["message"]
    status, body = raw(server, "POST", "/v1/embeddings", {"input": "x"})
    assert status == 404 and body["error"]["code"] == "unknown_url"
    status, body = raw(server, "POST", "/v1/completions", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = raw(server, "POST", "/v1/completions", b"[1, 2]")
    assert status == 400 and "JSON object" in body["error"]["message"]
    status, body = raw(server, "GET", "/v1/completions")
    assert status == 405 and "use POST" in body["error"]["message"]
    status, body = raw(server, "POST", "/v1/completions", {"model": NAME})
    assert status == 400 and body["error"]["param"] == "prompt"


# ---------------------------------------------------------------------------- batching


def _concurrent(client, prompts: list[str]) -> list[str]:
    """Each prompt from its own thread, all released at once; the greedy answers in order."""
    out: list[str | BaseException] = [""] * len(prompts)
    start = threading.Barrier(len(prompts))

    def ask(i: int) -> None:
        try:
            start.wait()
            r = client.completions.create(
                model=NAME, prompt=prompts[i], max_tokens=8, stop="\n", temperature=0
            )
            out[i] = r.choices[0].text
        except BaseException as e:  # re-raised below, in the test's thread
            out[i] = e

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for o in out:
        if isinstance(o, BaseException):
            raise o
    return out  # type: ignore[return-value]


def test_concurrent_requests_are_merged_into_fewer_generate_calls(copier, client):
    import openai

    words = [w[:2] + v for w in WORDS[:4] for v in ("ab", "ef", "cd", "fa")]  # 16 prompts
    prompts = [w + "=" for w in words]
    expected = greedy_texts(copier, prompts)
    assert expected == words
    # A long batch wait so that, on a busy machine too, the 16 requests meet in the queue.
    with ReasonerServer(copier, NAME, batch_wait_ms=300) as srv:
        srv.start()
        with openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=60) as c:
            assert _concurrent(c, prompts) == expected
        stats = srv.stats()
        status, over_http = raw(srv, "GET", "/v1/stats")
    assert stats["requests"] == 16 and stats["rows"] == 16
    assert stats["generate_calls"] < 16
    assert max(stats["requests_per_call"]) > 1
    assert sum(k * v for k, v in stats["requests_per_call"].items()) == 16
    assert status == 200 and over_http["generate_calls"] == stats["generate_calls"]


def test_max_batch_caps_the_rows_of_one_generate_call(copier, client):
    import openai

    prompts = [w + "=" for w in WORDS] * 2
    with ReasonerServer(copier, NAME, max_batch=4, batch_wait_ms=200).start() as srv:
        with openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=60) as c:
            assert _concurrent(c, prompts) == WORDS * 2
        status, stats = raw(srv, "GET", "/v1/stats")
    assert status == 200 and stats["requests"] == 16
    assert max(int(k) for k in stats["rows_per_call"]) <= 4
    assert stats["generate_calls"] >= 4


def test_mixed_n_and_sampling_keys_share_a_cycle_and_stay_correct(copier, client):
    import openai

    results: dict[str, Any] = {}
    with ReasonerServer(copier, NAME, batch_wait_ms=300).start() as srv:
        with openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=60) as c:
            go = threading.Barrier(3)

            def ask(key: str, **kw: Any) -> None:
                go.wait()
                results[key] = c.completions.create(model=NAME, stop="\n", temperature=0, **kw)

            threads = [
                threading.Thread(target=ask, args=("n1",), kwargs={"prompt": "abcd="}),
                threading.Thread(target=ask, args=("n3",), kwargs={"prompt": "fede=", "n": 3}),
                threading.Thread(
                    target=ask, args=("short",), kwargs={"prompt": "cafe=", "max_tokens": 2}
                ),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
        stats = srv.stats()
    assert [ch.text for ch in results["n1"].choices] == ["abcd"]
    assert [ch.text for ch in results["n3"].choices] == ["fede"] * 3
    assert [(ch.text, ch.finish_reason) for ch in results["short"].choices] == [("ca", "length")]
    # n=1 and n=3 greedy requests merge (rows repeated); max_tokens=2 is another key.
    assert stats["requests"] == 3 and stats["rows"] == 5


# ---------------------------------------------------------------------------- loading, CLI


def _run_dir(root: Path, copier: TinyModel) -> Path:
    """A run directory as `reasonloop run` leaves it: round 0 the copier, round 1 random."""
    run = root / "myrun"
    (run / "checkpoints").mkdir(parents=True)
    model = {"dim": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 32}
    (run / "config.yaml").write_text(yaml.safe_dump({"model": model}))
    rounds = {str(r): {"phases": {"train": {}}, "done": True} for r in (0, 1)}
    (run / "manifest.json").write_text(json.dumps({"rounds": rounds}))
    copier.save(run / "checkpoints" / "r000")
    TinyModel.create(ModelConfig(**model), seed=1).save(run / "checkpoints" / "r001")
    return run


def test_resolve_a_run_dir_or_a_checkpoint(tmp_path, copier):
    run = _run_dir(tmp_path, copier)
    assert resolve_checkpoint(run) == (run / "checkpoints" / "r001", "tiny", "myrun-r001")
    assert resolve_checkpoint(run, 0) == (run / "checkpoints" / "r000", "tiny", "myrun-r000")
    assert resolve_checkpoint(run / "checkpoints" / "r000")[1:] == ("tiny", "myrun-r000")
    with pytest.raises(ConfigError, match=r"--round 7: no checkpoint .* \(have \[0, 1\]\)"):
        resolve_checkpoint(run, 7)
    with pytest.raises(ConfigError, match="is a checkpoint, not a run directory"):
        resolve_checkpoint(run / "checkpoints" / "r000", 0)
    with pytest.raises(ConfigError, match="neither a run directory"):
        resolve_checkpoint(tmp_path)
    assert cli.main(["serve", str(tmp_path / "missing")]) == 2


def test_a_foreign_checkpoint_in_a_run_dir_is_refused_by_name(tmp_path, copier):
    run = _run_dir(tmp_path, copier)
    foreign = ModelConfig(dim=64, n_layers=2, n_heads=4, max_seq_len=32)
    TinyModel.create(foreign, seed=1).save(run / "checkpoints" / "r001")
    with pytest.raises(ConfigError, match=r"r001: this checkpoint does not match .*dim 64 there"):
        resolve_checkpoint(run)
    (run / "checkpoints" / "r000" / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ConfigError, match=r"r000/model.safetensors: damaged weights"):
        resolve_checkpoint(run, 0)


def test_cli_serves_a_run_dirs_round(tmp_path, copier):
    run = _run_dir(tmp_path, copier)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "reasonloop.cli", "serve", str(run), "--port", "0"]
    proc = subprocess.Popen(
        [*cmd, "--round", "0", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()  # printed once the socket listens
        assert "reasonloop serve: model 'myrun-r000' at http://127.0.0.1:" in line, (
            line + proc.stderr.read() if proc.poll() is not None else line
        )
        url = line.split(" at ", 1)[1].split()[0]
        host, port = url.removeprefix("http://").removesuffix("/v1").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        body = {"model": "myrun-r000", "prompt": "bead=", "stop": "\n", "temperature": 0}
        conn.request("POST", "/v1/completions", body=json.dumps(body))
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["choices"][0]["text"] == "bead"
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


def test_an_hf_model_with_a_chat_template_gets_the_rendered_conversation(tmp_path, copier):
    pytest.importorskip("transformers")
    import openai

    from reasonloop.models.hf import HFModel

    copier.export_hf(tmp_path / "hf")
    model = HFModel.load(tmp_path / "hf")
    # A template that writes bos itself, as many do: the server must not send it twice.
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    model.tokenizer.hf.chat_template = template
    messages = [{"role": "system", "content": "ab"}, {"role": "user", "content": "cd="}]
    with ReasonerServer(model, "hf-copier").start() as srv:
        with openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=60) as c:
            r = c.chat.completions.create(
                model="hf-copier", messages=messages, temperature=0, max_tokens=8
            )
    # Rendered "<s>abcd=", bos stripped: the prompt is bos + 5 characters, with the system
    # message in it; a templated reply runs to eos or max_tokens, not to the first newline.
    assert r.usage.prompt_tokens == 6
    sampling = Sampling(temperature=0, max_new_tokens=8, stop_at_newline=False)
    own = model.generate(["abcd="], 1, sampling)[0][0]
    assert own.text.startswith("abcd\n")
    assert r.choices[0].message.content == own.text and r.choices[0].finish_reason == "length"
