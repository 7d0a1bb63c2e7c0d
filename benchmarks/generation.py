"""Tiny sampler vs `transformers.LlamaForCausalLM.generate` on the same (exported) weights.

    python benchmarks/generation.py [--threads 2] [--batch 256] [--new-tokens 64] [--reps 3]

Both decode `batch` prompts of mixed lengths (left-padded). "Full length" rows do exactly the
same work on both sides: every row runs `new_tokens` steps (HF gets min_new_tokens; ours keeps
finished rows in the batch). "Stop at eos or \\n" is the loop's real case: rows stop, HF keeps
computing finished rows until the last one stops, ours drops them; it counts the tokens each
row generated up to its stop (random weights: about 2% of samples are a stop character).
Greedy and sampled (temperature 1) are timed; each number is the best of `reps` runs, ours and
HF interleaved after a warm-up, because the machine is shared and noise only makes runs slower.
Every row runs twice: both sides in float32, then both in bf16 (ours with
`model.decode_dtype: bfloat16`, HF loaded in bf16); %peak is of that dtype's matmul peak.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from matmul_peak import matmul_peak_gflops  # noqa: E402

from reasonloop.config import ModelConfig  # noqa: E402
from reasonloop.models import tiny  # noqa: E402
from reasonloop.models.base import Sampling  # noqa: E402
from reasonloop.models.tiny import COMPACT_BELOW, TinyModel  # noqa: E402
from reasonloop.models.tokenizer import BOS_ID, EOS_ID, N_USED, NEWLINE_ID, PAD_ID  # noqa: E402


def make_prompts(batch: int, seed: int = 0) -> list[str]:
    """Arithmetic-looking prompts of 6..20 characters."""
    rng = random.Random(seed)
    out = []
    for _ in range(batch):
        terms = [str(rng.randint(0, 10 ** rng.randint(1, 4))) for _ in range(rng.randint(2, 4))]
        out.append(("+".join(terms) + "=")[:20])
    return out


def best_times(fns: list, reps: int) -> list[tuple[float, object]]:
    """Best wall time and last result of each function, runs interleaved so noise hits all."""
    results = [fn() for fn in fns]  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            results[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return list(zip(best, results, strict=True))


def bench(cfg: ModelConfig, batch: int, new_tokens: int, reps: int, peak: dict[str, float]) -> None:
    from transformers import LlamaForCausalLM

    model = TinyModel.create(cfg, seed=0)
    with torch.no_grad():  # logit 0: never the argmax, as some real character's is positive
        never = [PAD_ID, BOS_ID, EOS_ID, *range(N_USED, model.tokenizer.vocab_size)]
        model.module.lm_head.weight[never] = 0.0
    with tempfile.TemporaryDirectory() as d:
        model.export_hf(d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hfs = {
                "float32": LlamaForCausalLM.from_pretrained(d).eval(),
                "bfloat16": LlamaForCausalLM.from_pretrained(d, dtype=torch.bfloat16).eval(),
            }
    # The same weights, decoded in bf16 (`model.decode_dtype`).
    models = {
        "float32": model,
        "bfloat16": TinyModel(cfg.model_copy(update={"decode_dtype": "bfloat16"}), model.module),
    }

    prompts = make_prompts(batch)
    encoded = [[BOS_ID, *model.tokenizer.encode(p)] for p in prompts]
    P = max(map(len, encoded))
    ids = torch.full((batch, P), PAD_ID)
    mask = torch.zeros(batch, P, dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, P - len(e) :] = torch.tensor(e)
        mask[i, P - len(e) :] = 1

    def ours(dtype: str, temperature: float, stop_at_newline: bool = False, compact: bool = False):
        s = Sampling(
            temperature, max_new_tokens=new_tokens, stop_at_newline=stop_at_newline, seed=1
        )

        def run():
            # Full-length rows: keep every row in the batch, as HF does with min_new_tokens,
            # so that both sides do exactly the same work.
            tiny.COMPACT_BELOW = COMPACT_BELOW if compact else 0.0
            try:
                return models[dtype].generate(prompts, 1, s)
            finally:
                tiny.COMPACT_BELOW = COMPACT_BELOW

        return run

    def theirs(dtype: str, sample: bool, stop: bool = False):
        kw = (
            {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
            if sample
            else {"do_sample": False}
        )
        if stop:
            kw["eos_token_id"] = [EOS_ID, NEWLINE_ID]
        else:
            kw["min_new_tokens"] = new_tokens
        return lambda: hfs[dtype].generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, pad_token_id=PAD_ID, **kw
        )

    def hf_tokens(out: torch.Tensor) -> int:
        """Generated tokens up to and including each row's first stop."""
        gen = out[:, P:]
        stops = (gen == EOS_ID) | (gen == NEWLINE_ID)
        first = torch.where(
            stops.any(1),
            stops.int().argmax(1) + 1,
            torch.full_like(stops[:, 0], gen.shape[1], dtype=torch.long),
        )
        return int(first.sum())

    n_params = sum(p.numel() for p in model.module.parameters()) - model.module.embed.weight.numel()
    avg_ctx = sum(map(len, encoded)) / batch + new_tokens / 2
    flops = batch * new_tokens * (2 * n_params + 4 * cfg.n_layers * cfg.dim * avg_ctx)
    flops += sum(map(len, encoded)) * 2 * n_params  # prefill
    print(
        f"\nmodel dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads: {n_params / 1e6:.2f}M params "
        f"(+ embedding); batch {batch}, prompts {min(map(len, encoded))}..{P} tokens, {new_tokens} new tokens"
    )
    print(
        f"{'decoding (both sides in the dtype)':<42}{'ours tok/s':>12}{'HF tok/s':>12}{'ratio':>8}"
        f"{'ours %peak':>12}{'HF %peak':>10}"
    )
    greedy_text = {}
    with torch.inference_mode():
        rows = [
            (d, f"{d}: {name}", a, b)
            for d in ("float32", "bfloat16")
            for name, a, b in (
                ("greedy, full length", ours(d, 0.0), theirs(d, False)),
                ("sampled, full length", ours(d, 1.0), theirs(d, True)),
                ("sampled, stop at eos or \\n", ours(d, 1.0, True, True), theirs(d, True, True)),
            )
        ]
        for dt, name, a, b in rows:
            (t_ours, out_ours), (t_hf, out_hf) = best_times([a, b], reps)
            if "full" in name:
                assert max(c[0].n_tokens for c in out_ours) == new_tokens
                assert out_hf.shape[1] == P + new_tokens
                n_ours = n_hf = batch * new_tokens
                p = peak[dt]
                share = (
                    f"{100 * flops / t_ours / 1e9 / p:>11.1f}%{100 * flops / t_hf / 1e9 / p:>9.1f}%"
                )
            else:  # useful tokens: each row up to its stop
                n_ours, n_hf = sum(c[0].n_tokens for c in out_ours), hf_tokens(out_hf)
                share = f"{'-':>12}{'-':>10}"
            ratio = (n_ours / t_ours) / (n_hf / t_hf)
            print(f"{name:<42}{n_ours / t_ours:>12.0f}{n_hf / t_hf:>12.0f}{ratio:>7.2f}x{share}")
            if "greedy" in name:
                hf_text = [model.tokenizer.decode(row[P:].tolist()) for row in out_hf]
                greedy_text[dt, "ours"] = [c[0].text for c in out_ours]
                greedy_text[dt, "HF"] = hf_text
    # Random weights put many near-ties among the logits: bf16 rounding flips some of them.
    for a, b in (
        (("float32", "ours"), ("float32", "HF")),
        (("bfloat16", "ours"), ("bfloat16", "HF")),
        (("bfloat16", "ours"), ("float32", "ours")),
        (("bfloat16", "HF"), ("float32", "HF")),
    ):
        same = sum(x == y for x, y in zip(greedy_text[a], greedy_text[b], strict=True))
        print(f"greedy outputs, {' '.join(a)} = {' '.join(b)}: {same}/{batch}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = {
        dt: matmul_peak_gflops(args.threads, dtype=getattr(torch, dt))
        for dt in ("float32", "bfloat16")
    }
    print(
        f"torch threads {args.threads}; matmul peak: fp32 {peak['float32']:.1f} GFLOP/s, "
        f"bf16 {peak['bfloat16']:.1f} GFLOP/s (shared machine: noisy); %peak is of the row's dtype"
    )
    for cfg in (ModelConfig(dim=256, n_layers=4, n_heads=4), ModelConfig()):
        bench(cfg, args.batch, args.new_tokens, args.reps, peak)


if __name__ == "__main__":
    main()
