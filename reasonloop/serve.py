"""`reasonloop serve`: an OpenAI-compatible HTTP API over a trained reasoner.

    reasonloop serve RUN_DIR_OR_CHECKPOINT [--host 127.0.0.1] [--port 8000] [--round N]
                     [--max-batch 64] [--batch-wait-ms 5] [--name NAME] [--threads N]

Routes: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/completions`,
`POST /v1/chat/completions`, `GET /health`, and `GET /v1/stats` (batching counters; not an
OpenAI route). Errors are OpenAI's JSON body `{"error": {"message", "type", "param", "code"}}`
with 400 for a bad body or field (`param` names it), 404 for an unknown model or route.

Batching: each HTTP request runs on its own thread, but only one worker thread touches the
model. It takes the first queued request, waits up to `batch_wait_ms` for more (up to
`max_batch` rows, a row being one prompt x one sample) and decodes them in one `generate` call
per sampling key (temperature, top_p, top_k, max_tokens, newline stop), because the backends'
samplers take one `Sampling` for the whole batch; requests with different `n` share a call by
repeating their prompts. A request with a `seed` runs alone, so its samples do not depend on
what else was in flight (greedy requests ignore the seed and always merge).

Semantics worth knowing:
- `/v1/completions` returns the raw continuation: it ends at the model's eos, a `stop` string
  or `max_tokens`. The tiny model ends every trained completion with "\\n", so pass
  `"stop": "\\n"` to get one answer. Stop strings other than "\\n" are found in the decoded
  text after generation (the samplers only stop on eos and newline).
- `/v1/chat/completions`: a model whose tokenizer has a chat template (hf) gets the rendered
  conversation; any other model (the tiny character model) gets the last user message's
  content as its prompt, and its reply ends at the first newline, the end of a completion in
  the format it was trained on. Default `max_tokens`: the rest of the context window.
- `max_tokens` beyond the context window is cut to fit (`finish_reason` "length"); a prompt
  that leaves no room for a single token is a 400 (`code` "context_length_exceeded").
- `usage` counts tokens as the model sees them: a prompt's bos is counted; a completion's
  count includes the stop token it generated.
- `stream: true`, `logprobs`, `echo`, `best_of` other than `n`, penalties, `logit_bias` and
  unknown fields are refused with a 400 naming the field, rather than silently ignored.
  `top_k` is accepted (as vLLM does); `model` may be left out (the served model is meant).
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from reasonloop.config import ConfigError
from reasonloop.models.base import Completion, LanguageModel, Sampling

log = logging.getLogger("reasonloop.serve")

MAX_BODY_BYTES = 8 * 2**20
MAX_N = 128
"""OpenAI's own limit on `n`."""
MAX_STOP = 4
"""OpenAI's own limit on the number of stop strings."""
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default for `/v1/completions`."""
UNKNOWN_CONTEXT_DEFAULT = 1024
"""Chat `max_tokens` default for a model that does not state its context length."""


# --------------------------------------------------------------------------------------- errors


class APIError(Exception):
    """An error answered as OpenAI's JSON error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status,
            message,
            param,
            code,
            type_,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _bad(param: str, message: str, code: str | None = None) -> APIError:
    return APIError(400, f"{param}: {message}", param=param, code=code)


# ------------------------------------------------------------------------------ model loading


def resolve_checkpoint(path: str | Path, round_: int | None = None) -> tuple[Path, str, str]:
    """(checkpoint directory, backend, default model id) for a run directory or a checkpoint.

    A run directory (it has config.yaml) serves its last finished round's checkpoint, or
    `round_`; a round counts once its train phase is in the manifest and its checkpoint has
    config.json, as `reasonloop eval` decides. A checkpoint directory is a tiny checkpoint
    (config.json with format reasonloop-tiny) or a local transformers model directory."""
    import yaml

    from reasonloop.config import validate
    from reasonloop.loop.store import RunDir
    from reasonloop.models.tiny import FORMAT

    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such directory (expected a run or checkpoint directory)")
    if (root / "config.yaml").is_file():
        cfg = validate(yaml.safe_load((root / "config.yaml").read_text()) or {}, str(root))
        rd = RunDir(root)
        done = rd.trained_rounds()
        if not done:
            raise ConfigError(f"{root}: no finished checkpoint to serve")
        r = done[-1] if round_ is None else round_
        if r not in done:
            raise ConfigError(f"--round {r}: no checkpoint for that round in {root} (have {done})")
        from reasonloop.loop.run import RunMismatchError, check_checkpoint
        from reasonloop.loop.store import CorruptRunError

        # The same check a resumed run makes: a damaged or foreign checkpoint is named, not served.
        try:
            check_checkpoint(rd.checkpoint(r), cfg.model)
        except (CorruptRunError, RunMismatchError) as e:
            raise ConfigError(str(e)) from None
        return rd.checkpoint(r), cfg.model.backend, f"{root.resolve().name}-r{r:03d}"
    if round_ is not None:
        raise ConfigError(f"--round {round_}: {root} is a checkpoint, not a run directory")
    cfg_file = root / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(
            f"{root}: neither a run directory (config.yaml) nor a checkpoint (config.json)"
        )
    try:
        meta = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{cfg_file} is not valid JSON: {e}") from None
    backend = "tiny" if isinstance(meta, dict) and meta.get("format") == FORMAT else "hf"
    resolved = root.resolve()
    # RUN/checkpoints/r003 -> "RUN-r003": the bare round name says nothing on its own.
    name = (
        f"{resolved.parent.parent.name}-{resolved.name}"
        if resolved.parent.name == "checkpoints"
        else resolved.name
    )
    return root, backend, name


def load_for_serving(path: str | Path, round_: int | None = None) -> tuple[LanguageModel, str]:
    """(model, default model id) for `reasonloop serve PATH [--round N]`."""
    ckpt, backend, name = resolve_checkpoint(path, round_)
    try:
        if backend == "tiny":
            from reasonloop.models.tiny import TinyModel

            return TinyModel.load(ckpt), name
        from reasonloop.models.hf import HFModel

        return HFModel.load(ckpt), name
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load the model in {ckpt}: {e}") from None


# ------------------------------------------------------------------------- model description


class ModelView:
    """What the API needs to know of a model beyond `generate`: token counts, context length,
    and how a conversation becomes a prompt."""

    def __init__(self, model: LanguageModel) -> None:
        from reasonloop.models.hf import HFModel, HFTokenizer
        from reasonloop.models.tiny import TinyModel

        self.model = model
        self.context: int | None = None
        self.chat_template = False
        if isinstance(model, TinyModel):
            self.context = model.config.max_seq_len
        elif isinstance(model, HFModel):
            self.context = getattr(model.module.config, "max_position_embeddings", None)
            tok = model.tokenizer
            self.chat_template = isinstance(tok, HFTokenizer) and bool(
                getattr(tok.hf, "chat_template", None)
            )

    def prompt_tokens(self, prompt: str, param: str) -> int:
        """Tokens of `prompt` with its bos; a prompt that leaves no room for output is a 400."""
        try:
            n = len(self.model.tokenizer.encode(prompt)) + 1
        except ValueError as e:
            raise _bad(param, str(e)) from None
        if self.context is not None and n >= self.context:
            raise _bad(
                param,
                f"the prompt is {n} tokens (with bos); the model's context is {self.context} "
                "tokens, which leaves no room for a completion",
                code="context_length_exceeded",
            )
        return n

    def text_tokens(self, text: str) -> int:
        try:
            return len(self.model.tokenizer.encode(text))
        except ValueError:
            return len(text)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if self.chat_template:
            return self.model.tokenizer.render_chat(messages)  # type: ignore[attr-defined]
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users:
            raise _bad("messages", "needs at least one message with role 'user'")
        return users[-1]


# ----------------------------------------------------------------------------------- batching


@dataclass
class _Job:
    prompts: list[str]
    n: int
    sampling: Sampling
    key: tuple
    done: threading.Event = field(default_factory=threading.Event)
    result: list[list[Completion]] | None = None
    error: BaseException | None = None

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n


class Batcher:
    """One worker thread that merges queued requests into batched `generate` calls."""

    def __init__(self, model: LanguageModel, max_batch: int = 64, batch_wait_ms: float = 5.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {batch_wait_ms}")
        self.model = model
        self.max_batch = max_batch
        self.wait_s = batch_wait_ms / 1000
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._requests = 0
        self._calls = 0
        self._rows = 0
        self._batch_rows: Counter[int] = Counter()
        self._batch_requests: Counter[int] = Counter()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="reasonloop-batcher", daemon=True)
        self._thread.start()

    def submit(self, prompts: list[str], n: int, sampling: Sampling) -> list[list[Completion]]:
        """Blocks until the job's completions are decoded; re-raises the job's error."""
        greedy = sampling.temperature == 0
        if greedy:  # every greedy request decodes alike whatever its other knobs say
            sampling = Sampling(
                temperature=0,
                max_new_tokens=sampling.max_new_tokens,
                stop_at_newline=sampling.stop_at_newline,
            )
        key: tuple = (
            sampling.temperature,
            sampling.top_p,
            sampling.top_k,
            sampling.max_new_tokens,
            sampling.stop_at_newline,
        )
        if sampling.seed is not None:
            key += (object(),)  # a unique key: a seeded request is never merged
        job = _Job(prompts, n, sampling, key)
        with self._lock:
            if self._closed:
                raise APIError(503, "the server is shutting down", type_="server_error")
            self._requests += 1
        self._queue.put(job)
        while not job.done.wait(1.0):
            if not self._thread.is_alive():
                raise APIError(503, "the batching worker has stopped", type_="server_error")
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "generate_calls": self._calls,
                "rows": self._rows,
                "queued": self._queue.qsize(),
                "max_batch": self.max_batch,
                "batch_wait_ms": self.wait_s * 1000,
                "rows_per_call": dict(sorted(self._batch_rows.items())),
                "requests_per_call": dict(sorted(self._batch_requests.items())),
            }

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=30)

    # ---------------------------------------------------------------------------- worker

    def _loop(self) -> None:
        pending: deque[_Job] = deque()
        stopping = False
        while not (stopping and not pending):
            if not pending:
                job = self._queue.get()
                if job is None:
                    break
                pending.append(job)
            rows = sum(j.rows for j in pending)
            deadline = time.monotonic() + self.wait_s
            while rows < self.max_batch and not stopping:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                pending.append(job)
                rows += job.rows
            batch, taken = [], 0
            # FIFO; the first job always goes, even one larger than max_batch on its own.
            while pending and (not batch or taken + pending[0].rows <= self.max_batch):
                job = pending.popleft()
                batch.append(job)
                taken += job.rows
            self._run(batch)
        while True:  # fail what arrived after close() instead of leaving its thread waiting
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.error = APIError(503, "the server is shutting down", type_="server_error")
                job.done.set()

    def _run(self, batch: list[_Job]) -> None:
        groups: dict[tuple, list[_Job]] = {}
        for job in batch:
            groups.setdefault(job.key, []).append(job)
        for jobs in groups.values():
            try:
                self._generate(jobs)
            except Exception as e:  # every waiting request must get an answer
                if len(jobs) == 1:
                    jobs[0].error = e
                else:
                    # Decode one by one so that only the request at fault gets the error.
                    for job in jobs:
                        try:
                            self._generate([job])
                        except Exception as e1:
                            job.error = e1
            finally:
                for job in jobs:
                    job.done.set()

    def _generate(self, jobs: list[_Job]) -> None:
        sampling = jobs[0].sampling
        ns = {j.n for j in jobs}
        if len(ns) == 1:  # one n: each prompt is prefilled once for its n samples
            n = ns.pop()
            prompts = [p for j in jobs for p in j.prompts]
        else:  # mixed n: repeat each prompt n times and sample one completion per row
            n = 1
            prompts = [p for j in jobs for p in j.prompts for _ in range(j.n)]
        out = self.model.generate(prompts, n=n, sampling=sampling)
        with self._lock:
            self._calls += 1
            self._rows += len(prompts) * n
            self._batch_rows[len(prompts) * n] += 1
            self._batch_requests[len(jobs)] += 1
        flat = [c for cs in out for c in cs]
        at = 0
        for job in jobs:
            k = job.rows
            mine = flat[at : at + k]
            at += k
            job.result = [mine[i * job.n : (i + 1) * job.n] for i in range(len(job.prompts))]


# --------------------------------------------------------------------------- request parsing


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _bad(name, f"must be a number, got {json.dumps(v)}")
    if not ((lo < v) if lo_open else (lo <= v)) or not v <= hi:
        raise _bad(name, f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
    return float(v)


def _integer(body: dict, name: str, default: int | None, lo: int, hi: int | None = None) -> Any:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(name, f"must be an integer, got {json.dumps(v)}")
    if v < lo or (hi is not None and v > hi):
        raise _bad(name, f"must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}")
    return v


def _stops(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("stop", f"must be a string or a list of strings, got {json.dumps(v)}")
    if len(stops) > MAX_STOP:
        raise _bad("stop", f"at most {MAX_STOP} stop strings, got {len(stops)}")
    if any(s == "" for s in stops):
        raise _bad("stop", "stop strings must not be empty")
    return stops


# Refused unless absent or at their "off" value: honouring them is beyond the samplers, and
# silently ignoring them would hand the client something it did not ask for.
_UNSUPPORTED_OFF: dict[str, tuple[Any, ...]] = {
    "stream": (None, False),
    "stream_options": (None,),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "response_format": (None, {"type": "text"}),
}
_IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}
_COMMON = {"model", "n", "temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "best_of"}
_FIELDS = {
    "completions": _COMMON | {"prompt"},
    "chat": _COMMON | {"messages", "max_completion_tokens"},
}


def _check_fields(body: dict, kind: str) -> None:
    for name, off in _UNSUPPORTED_OFF.items():
        if name in body and body[name] not in off:
            what = "streaming" if name.startswith("stream") else name
            raise _bad(name, f"{what} is not supported by reasonloop serve")
    known = _FIELDS[kind] | set(_UNSUPPORTED_OFF) | _IGNORED
    unknown = sorted(set(body) - known)
    if unknown:
        raise _bad(unknown[0], "unrecognized request argument")


def _content(message: Any, i: int) -> dict[str, str]:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise _bad(where, f"must be an object with role and content, got {json.dumps(message)}")
    role = message.get("role")
    if role not in ("system", "developer", "user", "assistant", "tool"):
        raise _bad(
            f"{where}.role",
            f"must be system, developer, user, assistant or tool, got {json.dumps(role)}",
        )
    content = message.get("content")
    if content is None:
        content = ""
    if isinstance(content, list):  # content parts: only text can reach a text model
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _bad(f"{where}.content[{j}]", "only text content parts are supported")
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    if not isinstance(content, str):
        raise _bad(f"{where}.content", "must be a string or a list of text parts")
    return {"role": role, "content": content}


# ---------------------------------------------------------------------------------- the API


class App:
    """Routes and request handling, independent of the HTTP plumbing."""

    def __init__(self, model: LanguageModel, name: str, batcher: Batcher) -> None:
        self.view = ModelView(model)
        self.name = name
        self.batcher = batcher
        self.created = int(time.time())

    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "reasonloop",
        }

    def handle(self, method: str, path: str, body: Callable[[], dict]) -> dict[str, Any]:
        path = path.split("?", 1)[0].rstrip("/") or "/"
        routes = {
            "/health": ("GET", lambda: {"status": "ok", "model": self.name}),
            "/v1/models": ("GET", lambda: {"object": "list", "data": [self.model_card()]}),
            "/v1/stats": ("GET", self.batcher.stats),
            "/v1/completions": ("POST", lambda: self.completions(body())),
            "/v1/chat/completions": ("POST", lambda: self.chat(body())),
        }
        if path.startswith("/v1/models/"):
            wanted = path[len("/v1/models/") :]
            if method != "GET":
                raise APIError(405, f"{method} {path}: method not allowed (use GET)")
            if wanted != self.name:
                raise self._unknown_model(wanted)
            return self.model_card()
        if path not in routes:
            raise APIError(404, f"unknown route {method} {path}", code="unknown_url")
        want, fn = routes[path]
        if method != want:
            raise APIError(405, f"{method} {path}: method not allowed (use {want})")
        return fn()

    def _unknown_model(self, model: str) -> APIError:
        return APIError(
            404,
            f"model {model!r} does not exist; this server serves {self.name!r}",
            param="model",
            code="model_not_found",
        )

    def _common(self, body: dict, kind: str, default_max: int) -> tuple[Sampling, int, list[str]]:
        _check_fields(body, kind)
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise _bad("model", f"must be a string, got {json.dumps(model)}")
        if model is not None and model != self.name:
            raise self._unknown_model(model)
        n = _integer(body, "n", 1, 1, MAX_N)
        best_of = _integer(body, "best_of", None, 1, MAX_N)
        if best_of is not None and best_of != n:
            raise _bad("best_of", "only best_of == n is supported (no server-side ranking)")
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0, lo_open=False)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
        top_k = _integer(body, "top_k", 0, -1)
        has_new_name = body.get("max_completion_tokens") is not None
        max_name = "max_completion_tokens" if has_new_name else "max_tokens"
        max_tokens = _integer(body, max_name, default_max, 1)
        seed = _integer(body, "seed", None, -(2**63), 2**63 - 1)
        sampling = Sampling(
            temperature=temperature,
            top_p=top_p,
            top_k=max(top_k, 0),  # vLLM's -1 means off too
            max_new_tokens=max_tokens,
            seed=seed,
        )
        return sampling, n, _stops(body)

    def completions(self, body: dict) -> dict[str, Any]:
        if "prompt" not in body:
            raise _bad("prompt", "is required")
        raw = body["prompt"]
        prompts = [raw] if isinstance(raw, str) else raw
        if not isinstance(prompts, list) or not prompts:
            raise _bad("prompt", "must be a string or a non-empty list of strings")
        if not all(isinstance(p, str) for p in prompts):
            raise _bad("prompt", "token-id prompts are not supported; send text")
        sampling, n, stops = self._common(body, "completions", COMPLETIONS_DEFAULT_MAX_TOKENS)
        counts = [
            self.view.prompt_tokens(p, "prompt" if len(prompts) == 1 else f"prompt[{i}]")
            for i, p in enumerate(prompts)
        ]
        choices, used = self._decode(prompts, n, sampling, stops, chat=False)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [
                {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
                for i, (text, finish) in enumerate(choices)
            ],
            "usage": _usage(sum(counts), used),
        }

    def chat(self, body: dict) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("messages", "must be a non-empty list of {role, content} objects")
        conversation = [_content(m, i) for i, m in enumerate(messages)]
        default_max = self.view.context or UNKNOWN_CONTEXT_DEFAULT
        sampling, n, stops = self._common(body, "chat", default_max)
        prompt = self.view.chat_prompt(conversation)
        count = self.view.prompt_tokens(prompt, "messages")
        choices, used = self._decode([prompt], n, sampling, stops, chat=True)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for i, (text, finish) in enumerate(choices)
            ],
            "usage": _usage(count, used),
        }

    def _decode(
        self,
        prompts: list[str],
        n: int,
        sampling: Sampling,
        stops: list[str],
        chat: bool,
    ) -> tuple[list[tuple[str, str]], int]:
        """(text, finish_reason) per choice, prompt-major, and the completion tokens."""
        # A chat reply of a template-less model is one completion line (see the module doc).
        newline = "\n" in stops or (chat and not self.view.chat_template)
        sampling = replace(sampling, stop_at_newline=newline)
        try:
            out = self.batcher.submit(prompts, n, sampling)
        except APIError:
            raise
        except ValueError as e:  # the backend's own checks (check_sampling, check_room, ...)
            raise APIError(400, str(e)) from None
        except Exception as e:  # reported to the client, logged here
            log.exception("generation failed")
            raise APIError(500, f"generation failed: {e}", type_="server_error") from None
        choices, used = [], 0
        for comps in out:
            for c in comps:
                text, finish, tokens = self._finish(c, stops)
                choices.append((text, finish))
                used += tokens
        return choices, used

    def _finish(self, c: Completion, stops: list[str]) -> tuple[str, str, int]:
        """Cut at the first stop string; "stop" when the model or a stop string ended it."""
        text, tokens = c.text, c.n_tokens
        stopped = c.stopped  # the backend knows whether a stop token or the budget ended it
        hits = [(i, s) for s in stops if (i := text.find(s)) >= 0]
        if hits:
            i, s = min(hits)
            text = text[:i]
            tokens = min(tokens, self.view.text_tokens(text + s))
            stopped = True
        return text, "stop" if stopped else "length", tokens


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# --------------------------------------------------------------------------- HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connections
    server_version = "reasonloop-serve"
    timeout = 120  # a client that stops sending mid-request frees its thread
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _body(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None:
            raise APIError(411, "a Content-Length header is required")
        try:
            size = int(length)
        except ValueError:
            raise APIError(400, f"bad Content-Length {length!r}") from None
        if size > MAX_BODY_BYTES:
            raise APIError(413, f"request body of {size} bytes exceeds {MAX_BODY_BYTES}")
        raw = self.rfile.read(size)
        self._body_read = True
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object")
        return data

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        try:
            status, payload = 200, self.server.app.handle(method, self.path, self._body)
        except APIError as e:
            status, payload = e.status, e.body()
        except Exception as e:  # a bug must still answer in the API's format
            log.exception("unhandled error on %s %s", method, self.path)
            status, payload = (
                500,
                APIError(500, f"internal error: {e}", type_="server_error").body(),
            )
        if not self._body_read and self.headers.get("Content-Length"):
            # An unread body would be parsed as the next request on this kept-alive connection.
            self.close_connection = True
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - " + format, self.address_string(), *args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 resets connections when dozens of clients connect at
    # once (32 benchmark clients did); the kernel caps this at net.core.somaxconn.
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up before its answer is routine, not a traceback on stderr.
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("client %s went away", client_address)
            return
        super().handle_error(request, client_address)

    app: App


class ReasonerServer:
    """The HTTP server, its app and its batching worker; `start()` serves on a thread."""

    def __init__(
        self,
        model: LanguageModel,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        max_batch: int = 64,
        batch_wait_ms: float = 5.0,
    ) -> None:
        self.batcher = Batcher(model, max_batch, batch_wait_ms)
        try:
            self.httpd = _HTTPServer((host, port), _Handler)
        except OSError:
            self.batcher.close()
            raise
        self.httpd.app = App(model, name, self.batcher)
        self.name = name
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        """The API root, as OpenAI clients want it for `base_url`."""
        return f"http://{self.host}:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        return self.batcher.stats()

    def start(self) -> ReasonerServer:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="reasonloop-serve", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()
        self.batcher.close()

    def __enter__(self) -> ReasonerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------- CLI


def cmd_serve(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, name = load_for_serving(args.model, args.round)
    name = args.name or name
    try:
        server = ReasonerServer(
            model, name, args.host, args.port, args.max_batch, args.batch_wait_ms
        )
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e}") from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(message)s")
    if server.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {server.host}: the API has no authentication",
            file=sys.stderr,
        )
    print(
        f"reasonloop serve: model {name!r} at {server.url} "
        f"(max batch {args.max_batch} rows, batch wait {args.batch_wait_ms:g} ms)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="serve a trained reasoner over an OpenAI-compatible HTTP API",
        description=(
            "Serve a run's checkpoint (or a checkpoint directory) at /v1/completions, "
            "/v1/chat/completions and /v1/models, batching concurrent requests."
        ),
    )
    s.add_argument("model", metavar="MODEL_OR_RUN_DIR", help="a run directory or a checkpoint")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port (default 8000)")
    s.add_argument("--round", type=int, help="a run's round to serve (default: the last)")
    s.add_argument("--max-batch", type=int, default=64, help="rows (prompts x n) per generate call")
    s.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long the first queued request waits for others to share its batch",
    )
    s.add_argument("--name", help="model id in the API (default: run name and round)")
    s.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    s.add_argument("--verbose", action="store_true", help="log every request")
    s.set_defaults(fn=cmd_serve)
