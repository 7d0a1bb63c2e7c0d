"""The openai backend: generation from any OpenAI-compatible HTTP endpoint.

It implements the generation side of `models.base.LanguageModel` (`generate`, and `copy`,
which is another client of the same endpoint). What needs the weights (`forward`, `logprobs`,
`save`, `module`, `tokenizer`: training and scoring) raises `NotImplementedError` naming this
backend. The endpoint is `reasonloop serve`, vLLM, OpenAI itself or anything that speaks
`POST {base_url}/completions` (default) or `{base_url}/chat/completions` (`api="chat"`, one
user message per prompt: for chat-only models).

Plain `http.client`, not the `openai` package: the library stays free of an extra dependency,
and a client this small keeps retries, timeouts and key handling in view. One persistent
(keep-alive) connection per worker thread; `max_concurrency` requests in flight; one request
per prompt (the chat API takes a single conversation, and a batching server merges them
again). Failures that may pass (429, 5xx, a dropped connection, a timeout) are retried
`retries` times with exponential backoff and jitter, honouring `Retry-After`.

The API key is read from the environment variable that `api_key_env` names, at each request:
the object never holds it, so no repr, log line, exception or run record can contain it, and
any text that comes back from the server is scrubbed of it before it is logged or raised.

Completions carry no log-probabilities (`Completion.logprob` is 0.0), and `n_tokens` is the
response's `usage.completion_tokens` split over its choices in proportion to their lengths
(exact for one choice, and for the character model served by `reasonloop serve`).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import torch

from reasonloop.models.base import Completion, Sampling, check_sampling

log = logging.getLogger("reasonloop.models.openai")

BACKEND = "openai"
RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
"""HTTP statuses worth another try (timeouts, conflicts, rate limits, server errors)."""
MAX_N = 128
"""Samples per request at most (OpenAI's limit on `n`); more are split over requests."""
DEFAULT_SAMPLING = Sampling()


class NotSupportedByBackend(NotImplementedError, AttributeError):
    """What this backend cannot do. Also an AttributeError, so that `hasattr` and a
    `runtime_checkable` protocol check (which calls `hasattr` in Python 3.11) answer "absent"
    for `module` and `tokenizer` instead of raising."""


class OpenAIBackendError(RuntimeError):
    """A request that failed for good: a 4xx, retries exhausted, or an unreadable answer."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class OpenAIBackendTimeout(OpenAIBackendError, TimeoutError):
    """No answer within `timeout_s`, on every attempt."""


class _Retryable(Exception):
    def __init__(
        self, what: str, status: int | None = None, wait: float | None = None, timeout: bool = False
    ) -> None:
        super().__init__(what)
        self.what, self.status, self.wait, self.timeout = what, status, wait, timeout


class OpenAIModel:
    """A client of one model on one OpenAI-compatible endpoint (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        api: Literal["completions", "chat"] = "completions",
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"model.base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, "
                f"got {base_url!r}"
            )
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(
                "model.base_url must not carry a query, fragment or credentials "
                "(put the key in the variable model.api_key_env names)"
            )
        if api not in ("completions", "chat"):
            raise ValueError(f"model.api must be 'completions' or 'chat', got {api!r}")
        if not model:
            raise ValueError("model.model_name is required for the openai backend")
        if max_concurrency < 1:
            raise ValueError(f"model.max_concurrency must be >= 1, got {max_concurrency}")
        if not timeout_s > 0:
            raise ValueError(f"model.timeout_s must be > 0, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"model.retries must be >= 0, got {retries}")
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise ValueError(
                f"model.api_key_env names the environment variable {api_key_env!r}, "
                "which is not set (or empty)"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.api = api
        self.max_concurrency = max_concurrency
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        path = parts.path.rstrip("/")
        self._base_path = path
        self._path = f"{path}/{'chat/completions' if api == 'chat' else 'completions'}"
        self._url = f"{parts.scheme}://{parts.netloc}{self._path}"
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._calls = 0
        self._calls_lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: Any) -> OpenAIModel:
        """From a `ModelConfig` with backend 'openai'."""
        if cfg.backend != BACKEND:
            raise ValueError(f"model.backend is {cfg.backend!r}; OpenAIModel needs {BACKEND!r}")
        if not cfg.base_url:
            raise ValueError("model.base_url is required for the openai backend")
        return cls(
            base_url=cfg.base_url,
            model=cfg.model_name or "",
            api_key_env=cfg.api_key_env,
            api=cfg.api,
            max_concurrency=cfg.max_concurrency,
            timeout_s=cfg.timeout_s,
            retries=cfg.retries,
        )

    def __repr__(self) -> str:
        # The key's variable NAME only; its value is never on the object at all.
        return (
            f"OpenAIModel(base_url={self.base_url!r}, model={self.model!r}, api={self.api!r}, "
            f"api_key_env={self.api_key_env!r}, max_concurrency={self.max_concurrency}, "
            f"timeout_s={self.timeout_s:g}, retries={self.retries})"
        )

    @property
    def requests_sent(self) -> int:
        """HTTP requests sent so far, retries included."""
        return self._calls

    # --------------------------------------------------------------------- unsupported

    def _unsupported(self, what: str) -> NotSupportedByBackend:
        return NotSupportedByBackend(
            f"the {BACKEND} backend generates over HTTP only: {what} needs the weights, "
            "use the tiny or hf backend for training and scoring"
        )

    @property
    def module(self) -> torch.nn.Module:
        raise self._unsupported("module (training)")

    @property
    def tokenizer(self) -> Any:
        raise self._unsupported("tokenizer")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise self._unsupported("forward (training)")

    def logprobs(self, prompts: list[str], completions: list[str]) -> list[torch.Tensor]:
        raise self._unsupported("logprobs (scoring given completions)")

    def save(self, path: str | Path) -> None:
        raise self._unsupported("save")

    def copy(self) -> OpenAIModel:
        """Another client of the same endpoint (the remote weights cannot diverge)."""
        return OpenAIModel(
            self.base_url,
            self.model,
            self.api_key_env,
            self.api,
            self.max_concurrency,
            self.timeout_s,
            self.retries,
            self.backoff_s,
            self.max_backoff_s,
        )

    def close(self) -> None:
        """Stop the worker threads (their connections close with them)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    # ---------------------------------------------------------------------- generation

    def generate(
        self, prompts: list[str], n: int = 1, sampling: Sampling = DEFAULT_SAMPLING
    ) -> list[list[Completion]]:
        """n completions per prompt: one request per prompt (and per MAX_N samples), at most
        `max_concurrency` in flight. `Completion.text` excludes the stop, as on every backend.
        A seeded `sampling` sends each request its own seed derived from it and the prompt's
        index, so a rerun asks for the same samples (whether the server honours seeds is up to
        the server)."""
        check_sampling(sampling, n)
        if sampling.stop_at_step:
            # A server's stop strings are dropped from the text, and which one stopped a choice
            # is not reported: a step's ";" could not be told from the final newline.
            raise ValueError(
                "sampling.stop_at_step is not supported by the openai backend (step-level search "
                "needs the tiny or hf backend)"
            )
        jobs: list[tuple[int, int, dict[str, Any]]] = []
        for i, prompt in enumerate(prompts):
            for start in range(0, n, MAX_N):
                k = min(MAX_N, n - start)
                jobs.append((i, k, self._body(prompt, k, sampling, i * 1_000_003 + start)))
        results: list[list[Completion]] = [[] for _ in prompts]
        if not jobs:
            return results
        if len(jobs) == 1 or self.max_concurrency == 1:
            outs = [self._request(body, k) for _, k, body in jobs]
        else:
            pool = self._executor()
            outs = list(pool.map(lambda job: self._request(job[2], job[1]), jobs))
        for (i, _, _), comps in zip(jobs, outs, strict=True):
            results[i].extend(comps)
        return results

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, "reasonloop-openai")
            return self._pool

    def _body(self, prompt: str, n: int, sampling: Sampling, offset: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "n": n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
        }
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if sampling.stop_at_newline:
            body["stop"] = ["\n"]
        if sampling.top_k:
            body["top_k"] = sampling.top_k  # not OpenAI's; vLLM and `reasonloop serve` take it
        if sampling.seed is not None:
            body["seed"] = (sampling.seed * 7_919 + offset) % 2**63
        return body

    # --------------------------------------------------------------------------- HTTP

    def _redact(self, text: str) -> str:
        """`text` without the API key (a server may echo request headers in an error)."""
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return text.replace(key, "[redacted]") if key else text

    def _headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "reasonloop",
        }
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise OpenAIBackendError(
                    f"{BACKEND} backend: environment variable {self.api_key_env!r} "
                    "(model.api_key_env) is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and fresh:
            conn.close()
            conn = None
        if conn is None:
            conn = self._new_connection(self.timeout_s)
            self._local.conn = conn
        return conn

    def _new_connection(self, timeout_s: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=timeout_s)

    def _request(self, body: dict[str, Any], n: int) -> list[Completion]:
        data = json.dumps(body).encode()
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                status, payload = self._post(data)
            except _Retryable as e:
                if attempt == attempts:
                    cls = OpenAIBackendTimeout if e.timeout else OpenAIBackendError
                    plural = "s" if attempts > 1 else ""
                    raise cls(
                        self._redact(
                            f"{BACKEND} backend: POST {self._url} failed after {attempts} "
                            f"attempt{plural}: {e.what}"
                        ),
                        status=e.status,
                        attempts=attempts,
                    ) from None
                delay = self._backoff(attempt, e.wait)
                log.warning(
                    "%s",
                    self._redact(
                        f"{BACKEND} backend: POST {self._url}: {e.what}; "
                        f"retry {attempt}/{self.retries} in {delay:.2f}s"
                    ),
                )
                time.sleep(delay)
                continue
            if status != 200:
                raise OpenAIBackendError(
                    self._redact(
                        f"{BACKEND} backend: POST {self._url} -> HTTP {status}: {_message(payload)}"
                    ),
                    status=status,
                    attempts=attempt,
                )
            return self._parse(payload, n)
        raise AssertionError("unreachable")

    def check_endpoint(self, timeout_s: float = 10.0) -> list[str]:
        """`GET /models` once, without retries: the ids the endpoint serves. Raises
        `OpenAIBackendError` naming the URL when nothing answers, the answer is not a model
        list, or the list (when not empty) lacks this client's model. A run calls it before it
        writes anything, so a down endpoint is found at the start, not after round 0."""
        path = f"{self._base_path}/models"
        url = f"{self.base_url}/models"
        timeout_s = min(timeout_s, self.timeout_s)
        conn = self._new_connection(timeout_s)
        try:
            conn.request("GET", path, headers=self._headers())
            resp = conn.getresponse()
            raw = resp.read()
        except TimeoutError:
            raise OpenAIBackendTimeout(f"GET {url}: no answer within {timeout_s:g}s") from None
        except (OSError, http.client.HTTPException) as e:
            raise OpenAIBackendError(
                self._redact(f"GET {url}: connection error: {type(e).__name__}: {e}")
            ) from None
        finally:
            conn.close()
        payload = _payload(raw)
        if resp.status != 200:
            raise OpenAIBackendError(
                self._redact(f"GET {url} -> HTTP {resp.status}: {_message(payload)}"),
                status=resp.status,
            )
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise OpenAIBackendError(
                f"GET {url}: expected an OpenAI model list, got {payload!r:.200}"
            )
        ids = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        if ids and self.model not in ids:
            raise OpenAIBackendError(
                f"GET {url}: the endpoint does not serve model {self.model!r}; it serves {ids}"
            )
        return ids

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential with equal jitter (half fixed, half random), so that many clients that
        failed together do not retry together; a server's Retry-After wins when longer."""
        cap = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        delay = cap / 2 + random.uniform(0, cap / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff_s))
        return delay

    def _post(self, data: bytes) -> tuple[int, Any]:
        """(status, decoded JSON or text); `_Retryable` for what may pass."""
        headers = self._headers()
        with self._calls_lock:
            self._calls += 1
        reused = getattr(self._local, "conn", None) is not None
        try:
            try:
                conn = self._connection()
                conn.request("POST", self._path, body=data, headers=headers)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # A kept-alive connection the server closed while idle: resend once on a new
                # one, without counting it as a failure of the server.
                conn = self._connection(fresh=True)
                conn.request("POST", self._path, body=data, headers=headers)
                resp = conn.getresponse()
            raw = resp.read()
            if resp.will_close:
                conn.close()
                self._local.conn = None
        except TimeoutError:
            self._drop_connection()
            raise _Retryable(f"timed out after {self.timeout_s:g}s", timeout=True) from None
        except (OSError, http.client.HTTPException) as e:
            self._drop_connection()
            raise _Retryable(f"connection error: {type(e).__name__}: {e}") from None
        status = resp.status
        payload = _payload(raw)
        if status in RETRY_STATUS:
            wait = _retry_after(resp.getheader("Retry-After"))
            raise _Retryable(f"HTTP {status}: {_message(payload)}", status, wait)
        return status, payload

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def _parse(self, payload: Any, n: int) -> list[Completion]:
        try:
            choices = sorted(payload["choices"], key=lambda c: c.get("index", 0))
            if self.api == "chat":
                texts = [c["message"].get("content") or "" for c in choices]
            else:
                texts = [c["text"] for c in choices]
            if len(texts) != n or not all(isinstance(t, str) for t in texts):
                raise ValueError(f"expected {n} text choices, got {len(texts)}")
            used = (payload.get("usage") or {}).get("completion_tokens")
            cut = [c.get("finish_reason") == "length" for c in choices]
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise OpenAIBackendError(
                self._redact(f"{BACKEND} backend: POST {self._url}: unexpected response ({e})")
            ) from None
        counts = _split_tokens(texts, used)
        return [Completion(t, k, stopped=not c) for t, k, c in zip(texts, counts, cut, strict=True)]


def _payload(raw: bytes) -> Any:
    """A response body: its JSON, else the start of its text (for the error message)."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw[:500].decode("utf-8", "replace")


def _split_tokens(texts: list[str], used: Any) -> list[int]:
    """`used` tokens shared over the choices in proportion to len(text) + 1 (the + 1 is the
    stop token), largest remainders first; len(text) + 1 each when the server gave no usage."""
    weights = [len(t) + 1 for t in texts]
    if not isinstance(used, int) or isinstance(used, bool) or used < 0:
        return weights
    total = sum(weights)
    exact = [used * w / total for w in weights]
    out = [int(x) for x in exact]
    for i in sorted(range(len(out)), key=lambda j: out[j] - exact[j])[: used - sum(out)]:
        out[i] += 1
    return out


def _message(payload: Any) -> str:
    """The server's error message: OpenAI's {"error": {"message"}}, or the body's start."""
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        if isinstance(err, str):
            return err[:500]
        return json.dumps(payload)[:500]
    return str(payload)[:500]


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from API servers; the backoff applies instead
