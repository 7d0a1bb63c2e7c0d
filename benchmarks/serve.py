"""Throughput of `reasonloop serve` under 1, 8 and 32 concurrent clients.

    python benchmarks/serve.py [--dim 128 --layers 4 --heads 4] [--new-tokens 64]
                               [--clients 1 8 32] [--seconds 6] [--repeats 3]
                               [--max-batch 64] [--batch-wait-ms 5] [--threads 1]

Starts the server in this process on a randomly initialised tiny model (the speed of a
forward does not depend on what the weights learned), then for each client count runs that
many threads, each sending greedy `/v1/completions` requests of `new_tokens` tokens back to back
over one kept-alive connection, for `seconds`. Greedy decoding makes every level do the same
work per request. Tokens are the server's `usage.completion_tokens` (a random model sometimes
samples eos early, the same way at every level). Each figure is the median of `repeats` runs,
since the machine is shared and noisy; the levels run interleaved within a repeat, and the
speed-up is the median of each repeat's own ratio, so slow drifts in the load cancel. The
clients are threads of this process too: their HTTP and JSON work shares the interpreter
with the server's. The last line is the same model's `generate` called directly, back to back,
on a batch of the largest client count (timed in every repeat): the ceiling for batching.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import threading
import time

import torch

from reasonloop.config import ModelConfig
from reasonloop.models.base import Sampling
from reasonloop.models.tiny import TinyModel
from reasonloop.serve import ReasonerServer


def prompts(n: int, seed: int = 0) -> list[str]:
    """Addition prompts of 5..13 characters."""
    rng = random.Random(seed)
    return [f"{rng.randint(0, 10 ** rng.randint(1, 5))}+{rng.randint(0, 9999)}=" for _ in range(n)]


def client_loop(
    port: int, body: dict, texts: list[str], deadline: float, out: list, errors: list
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    i = 0
    try:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            data = json.dumps({**body, "prompt": texts[i % len(texts)]}).encode()
            conn.request("POST", "/v1/completions", body=data)
            resp = conn.getresponse()
            payload = json.loads(resp.read())
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {payload}")
            out.append((time.perf_counter() - t, payload["usage"]["completion_tokens"]))
            i += 1
    except Exception as e:  # reported by the main thread
        errors.append(e)
    finally:
        conn.close()


def level(server: ReasonerServer, clients: int, body: dict, seconds: float) -> dict[str, float]:
    before = server.stats()
    done: list[tuple[float, int]] = []
    errors: list[Exception] = []
    start = time.perf_counter()
    deadline = start + seconds
    threads = [
        threading.Thread(
            target=client_loop,
            args=(server.port, body, prompts(64, seed=c), deadline, done, errors),
        )
        for c in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start  # to the last answer, past the deadline
    if errors:
        raise errors[0]
    after = server.stats()
    calls = after["generate_calls"] - before["generate_calls"]
    rows = after["rows"] - before["rows"]
    return {
        "req_s": len(done) / elapsed,
        "tok_s": sum(k for _, k in done) / elapsed,
        "p50_ms": statistics.median(t for t, _ in done) * 1000,
        "rows_per_call": rows / max(calls, 1),
    }


def direct(model: TinyModel, batch: list[str], sampling: Sampling, seconds: float) -> float:
    """Tokens/s of the model's own `generate` on `batch`, called back to back for `seconds`."""
    tokens, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        tokens += sum(cs[0].n_tokens for cs in model.generate(batch, 1, sampling))
    return tokens / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=6.0, help="per level and repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, max_seq_len=256)
    model = TinyModel.create(cfg, seed=0)
    body = {"model": "bench", "max_tokens": args.new_tokens, "temperature": 0}
    print(
        f"tiny model dim {args.dim}, {args.layers} layers; {args.new_tokens} new tokens a request, "
        f"greedy; max batch {args.max_batch}, batch wait {args.batch_wait_ms:g} ms; "
        f"torch threads {torch.get_num_threads()}; median of {args.repeats} x {args.seconds:g} s",
        flush=True,
    )
    runs: dict[int, list[dict[str, float]]] = {c: [] for c in args.clients}
    with ReasonerServer(
        model, "bench", max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms
    ).start() as server:
        level(server, 1, body, 1.0)  # warm-up
        batch = prompts(max(args.clients))
        greedy = Sampling(temperature=0, max_new_tokens=args.new_tokens, stop_at_newline=False)
        ceiling: list[float] = []
        for r in range(args.repeats):
            ceiling.append(direct(model, batch, greedy, args.seconds))
            for c in args.clients:  # levels interleaved: noise spreads over all of them
                runs[c].append(level(server, c, body, args.seconds))
                m = runs[c][-1]
                print(
                    f"  repeat {r + 1}, {c:>2} clients: {m['req_s']:.1f} req/s, "
                    f"{m['tok_s']:.0f} tok/s",
                    flush=True,
                )
    first = args.clients[0]
    for ms in runs.values():  # against the first level of the same repeat: drift cancels
        for m, b in zip(ms, runs[first], strict=True):
            m["ratio"] = m["req_s"] / b["req_s"]
    med = {c: {k: statistics.median(m[k] for m in ms) for k in ms[0]} for c, ms in runs.items()}
    print()
    print(
        f"{'clients':>7}  {'req/s':>7}  {'tokens/s':>8}  {f'vs {first}':>7}  {'p50 ms':>7}  "
        "rows/call"
    )
    for c in args.clients:
        m = med[c]
        print(
            f"{c:>7}  {m['req_s']:>7.1f}  {m['tok_s']:>8.0f}  {m['ratio']:>6.2f}x"
            f"  {m['p50_ms']:>7.0f}  {m['rows_per_call']:>9.1f}"
        )
    print(f"(medians of {args.repeats} repeats; `vs {first}`: the median of per-repeat ratios)")
    print(
        f"direct generate, batch {max(args.clients)}: {statistics.median(ceiling):.0f} tokens/s "
        "(the model's own batched generate: no HTTP, no queue)"
    )


if __name__ == "__main__":
    main()
