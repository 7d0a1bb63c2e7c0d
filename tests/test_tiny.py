"""The tiny backend: tokenizer, checkpoints, forward, batched sampling, log-probs."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from dataclasses import replace

import pytest
import torch

from reasonloop.algorithms.sft import train_sft
from reasonloop.config import ModelConfig, TrainConfig
from reasonloop.models import tiny
from reasonloop.models.base import LanguageModel, Sampling, Tokenizer
from reasonloop.models.tiny import TinyModel
from reasonloop.models.tokenizer import BOS_ID, EOS_ID, N_USED, NEWLINE_ID, PAD_ID, CharTokenizer
from reasonloop.types import SFTExample

PROMPTS = ["1", "12+34=", "a much longer prompt, with words=", "xy"]
GREEDY = Sampling(temperature=0, max_new_tokens=12, stop_at_newline=False)


def _model(seed: int = 0, **cfg) -> TinyModel:
    """A small random model with weights spread wider than at init, so logits are far from ties."""
    model = TinyModel.create(
        ModelConfig(**{"dim": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 64, **cfg}), seed
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.fixture(scope="module")
def copier() -> TinyModel:
    """A model trained for a second to copy 4 letters after "=" and end with a newline."""
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdef", k=4)) for _ in range(600)]
    model = TinyModel.create(ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=32), seed=0)
    cfg = TrainConfig(steps=150, batch_size=32, lr=5e-3, warmup_steps=10)
    train_sft(model, [SFTExample(w + "=", w) for w in words], cfg, seed=0)
    return model


# ------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_with_fixed_ids():
    tok = CharTokenizer()
    assert isinstance(tok, Tokenizer)
    text = "".join(chr(c) for c in range(32, 127)) + "\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(set(ids)) == len(text) and min(ids) == NEWLINE_ID and max(ids) == N_USED - 1
    # the ids are part of every checkpoint's format: they must never move
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 128)
    assert tok.encode("\n ~") == [3, 4, 98]
    assert tok.decode([BOS_ID, *tok.encode("ab"), EOS_ID, PAD_ID, 120]) == "ab"


def test_tokenizer_names_a_bad_character():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match=r"'é' \(U\+00E9\) at position 2"):
        tok.encode("abé")
    with pytest.raises(ValueError, match=r"'\\t'"):
        tok.encode("a\tb")
    with pytest.raises(ValueError, match="outside the tiny vocabulary"):
        tok.decode([5, 128])


# ------------------------------------------------------------------------ create, save, load


def test_create_is_seeded_and_leaves_the_global_rng_alone():
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4)
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    a, b, c = TinyModel.create(cfg, 1), TinyModel.create(cfg, 1), TinyModel.create(cfg, 2)
    assert torch.rand(1) == expected
    sa, sb, sc = (m.module.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["layers.0.wqkv.weight"], sc["layers.0.wqkv.weight"])
    assert isinstance(a, LanguageModel)


@pytest.mark.parametrize("theta", [10000.0, math.inf])
def test_save_load_round_trip(tmp_path, theta):
    model = _model(rope_theta=theta)
    model.save(tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.json", "model.safetensors"]
    # strict JSON (no Infinity literal), so any reader can open it
    json.loads((tmp_path / "ckpt/config.json").read_text(), parse_constant=lambda c: 1 / 0)
    loaded = TinyModel.load(tmp_path / "ckpt")
    assert loaded.config == model.config
    ids = torch.randint(3, N_USED, (2, 20))
    assert torch.equal(loaded.forward(ids), model.forward(ids))

    other = _model(seed=1, rope_theta=theta)
    other.save(tmp_path / "ckpt")  # replaces the old checkpoint, leaves no temporary behind
    assert os.listdir(tmp_path) == ["ckpt"]
    assert torch.equal(TinyModel.load(tmp_path / "ckpt").forward(ids), other.forward(ids))


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TinyModel.load(tmp_path / "nowhere")
    _model().save(tmp_path / "m")
    cfg_file, weights = tmp_path / "m/config.json", tmp_path / "m/model.safetensors"

    meta = json.loads(cfg_file.read_text())
    meta["model"]["dim"] = 64
    cfg_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor .* has shape .*config.json"):
        TinyModel.load(tmp_path / "m")

    meta["model"]["dim"] = "wide"
    cfg_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"(?s)config\.json: invalid model config.*dim"):
        TinyModel.load(tmp_path / "m")

    cfg_file.write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        TinyModel.load(tmp_path / "m")

    _model().save(tmp_path / "p")
    torch.save({"x": torch.zeros(1)}, tmp_path / "p/model.safetensors")  # never unpickled
    with pytest.raises(ValueError, match=r"p/model\.safetensors is not a readable safetensors"):
        TinyModel.load(tmp_path / "p")

    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"m/model\.safetensors is missing"):
        TinyModel.load(tmp_path / "m")


def test_copy_is_independent():
    model = _model()
    twin = model.copy()
    ids = torch.randint(3, N_USED, (1, 10))
    assert torch.equal(twin.forward(ids), model.forward(ids))
    with torch.no_grad():
        twin.module.lm_head.weight.zero_()
    assert not torch.equal(twin.forward(ids), model.forward(ids))


# --------------------------------------------------------------------------------- forward


def test_forward_with_left_or_right_padding_matches_unpadded():
    model = _model()
    ids = torch.randint(3, N_USED, (1, 7))
    plain = model.forward(ids)
    pad = torch.full((1, 3), PAD_ID)
    ones, zeros = torch.ones(1, 7, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long)
    left = model.forward(torch.cat([pad, ids], 1), torch.cat([zeros, ones], 1))
    right = model.forward(torch.cat([ids, pad], 1), torch.cat([ones, zeros], 1))
    torch.testing.assert_close(left[:, 3:], plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(right[:, :7], plain, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="max_seq_len 64"):
        model.forward(torch.zeros(1, 65, dtype=torch.long))


# ------------------------------------------------------------------------------ generation


@pytest.mark.parametrize("theta", [10000.0, math.inf])
def test_batched_greedy_equals_one_prompt_at_a_time(theta):
    model = _model(rope_theta=theta)
    batched = model.generate(PROMPTS, 2, GREEDY)
    assert [len(c) for c in batched] == [2] * len(PROMPTS)
    for prompt, (first, second) in zip(PROMPTS, batched, strict=True):
        (alone,) = model.generate([prompt], 1, GREEDY)[0]
        assert (first.text, first.n_tokens) == (second.text, second.n_tokens)
        assert first.text == alone.text and first.n_tokens == alone.n_tokens
        assert first.logprob == pytest.approx(alone.logprob, abs=1e-4)
    # greedy means the argmax of the model's own next-token logits at every step
    prompt, text = PROMPTS[1], batched[1][0].text
    ids = [BOS_ID, *model.tokenizer.encode(prompt + text)]
    logits = model.forward(torch.tensor([ids]))[0, len(prompt) :]
    logits[:, [PAD_ID, BOS_ID]] = -math.inf
    logits[:, N_USED:] = -math.inf
    assert model.tokenizer.decode(logits.argmax(-1).tolist())[: len(text)] == text


def test_finished_rows_leave_the_batch_without_changing_results(monkeypatch):
    """Long prompts get small budgets (max_seq_len), so most rows finish early and the batch is
    compacted mid-way; every completion must still equal its one-prompt-at-a-time twin."""
    model = _model(max_seq_len=40)
    prompts = ["ab", "7", "x=", *("q" * k for k in range(24, 31))]
    compactions = []
    original = tiny._keep_rows
    monkeypatch.setattr(tiny, "_keep_rows", lambda *a: compactions.append(1) or original(*a))
    s = replace(GREEDY, max_new_tokens=30)
    batched = model.generate(prompts, 2, s)
    assert compactions
    for prompt, pair in zip(prompts, batched, strict=True):
        (alone,) = model.generate([prompt], 1, s)[0]
        assert [(c.text, c.n_tokens) for c in pair] == [(alone.text, alone.n_tokens)] * 2
        assert pair[1].logprob == pytest.approx(alone.logprob, abs=1e-4)


@pytest.mark.parametrize("n", [1, 3])
def test_prefill_in_length_chunks_changes_nothing(monkeypatch, n):
    """Prompts sorted by length are prefilled in chunks, each cut to its own longest prompt:
    the same completions as one chunk padded to the longest of all."""
    model = _model()
    rng = random.Random(0)
    prompts = ["".join(rng.choices("0123456789+=", k=rng.randint(1, 30))) for _ in range(40)]
    s = replace(GREEDY, max_new_tokens=10)
    monkeypatch.setattr(tiny, "PREFILL_CHUNK_ROWS", 5)
    assert len(tiny._prefill_chunks(sorted(len(p) for p in prompts))) == 8
    chunked = model.generate(prompts, n, s)
    monkeypatch.setattr(tiny, "PREFILL_CHUNK_ROWS", 1000)
    whole = model.generate(prompts, n, s)
    for a, b in zip(chunked, whole, strict=True):
        assert [(c.text, c.n_tokens) for c in a] == [(c.text, c.n_tokens) for c in b]
        assert [c.logprob for c in a] == pytest.approx([c.logprob for c in b], abs=1e-4)


def test_stops_at_newline_unless_told_not_to(copier):
    (out,) = copier.generate(["bead="], 1, Sampling(temperature=0, max_new_tokens=10))[0]
    assert (out.text, out.n_tokens) == ("bead", 5)
    # n_tokens and logprob count the newline that stopped it
    (lp,) = copier.logprobs(["bead="], ["bead\n"])
    assert out.logprob == pytest.approx(float(lp.sum()), abs=1e-4)
    (cont,) = copier.generate(["bead="], 1, replace(GREEDY, max_new_tokens=10))[0]
    assert cont.text.startswith("bead\n") and cont.n_tokens > 5


def test_n_samples_are_seeded_and_differ():
    model = _model()
    s = Sampling(temperature=1.0, max_new_tokens=8, stop_at_newline=False, seed=3)
    out = model.generate(PROMPTS, 4, s)
    assert [len(c) for c in out] == [4] * len(PROMPTS)
    assert model.generate(PROMPTS, 4, s) == out
    assert model.generate(PROMPTS, 4, replace(s, seed=4)) != out
    assert len({c.text for c in out[1]}) > 1
    assert model.generate([], 2, s) == []
    (empty,) = model.generate(["x"], 2, replace(s, max_new_tokens=0))
    assert [(c.text, c.n_tokens) for c in empty] == [("", 0), ("", 0)]


def test_top_k_1_and_tiny_top_p_equal_greedy():
    model = _model()
    greedy = [[c.text for c in cs] * 3 for cs in model.generate(PROMPTS, 1, GREEDY)]
    for s in (
        replace(GREEDY, temperature=0.8, top_k=1, seed=0),
        replace(GREEDY, temperature=2.0, top_p=1e-6, seed=0),
    ):
        assert [[c.text for c in cs] for cs in model.generate(PROMPTS, 3, s)] == greedy


def test_sampling_follows_temperature_top_k_and_top_p():
    """One-token samples against the distribution computed from the model's logits."""
    model = _model()
    logits = model.forward(torch.tensor([[BOS_ID, *model.tokenizer.encode("12+")]]))[0, -1]
    logits[[PAD_ID, BOS_ID]] = -math.inf
    logits[N_USED:] = -math.inf
    n = 4000

    def freq(s: Sampling) -> torch.Tensor:
        # one token each; stop_at_newline=False, so an empty text is an eos
        outs = model.generate(["12+"], n, s)[0]
        ids = [model.tokenizer.encode(c.text)[0] if c.text else EOS_ID for c in outs]
        return torch.bincount(torch.tensor(ids), minlength=128).float() / n

    base = Sampling(temperature=0.7, max_new_tokens=1, stop_at_newline=False, seed=1)
    probs = (logits / 0.7).softmax(-1)
    got = freq(base)
    assert (got - probs).abs().max() < 0.04
    top5 = set(logits.topk(5).indices.tolist())
    assert set(freq(replace(base, top_k=5)).nonzero().flatten().tolist()) <= top5
    p_sorted, idx = probs.sort(descending=True)
    nucleus = set(idx[: int((p_sorted.cumsum(0) < 0.5).sum()) + 1].tolist())
    assert set(freq(replace(base, top_p=0.5)).nonzero().flatten().tolist()) <= nucleus


def test_budgets_and_bad_input():
    model = _model(max_seq_len=16)
    (out,) = model.generate(["x" * 10], 1, replace(GREEDY, max_new_tokens=50))[0]
    assert out.n_tokens <= 5  # 11 prompt tokens with bos leave 5 of 16
    with pytest.raises(ValueError, match="prompt 1 is 16 tokens.*max_seq_len 16"):
        model.generate(["ok", "y" * 15], 1, GREEDY)
    with pytest.raises(ValueError, match="prompt 1: character 'é'"):
        model.generate(["ok", "café"], 1, GREEDY)
    with pytest.raises(ValueError, match=r"n \(samples per prompt\) must be >= 1"):
        model.generate(["x"], 0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(["x"], 1, Sampling(top_p=0))


# ------------------------------------------------------------------------------- log-probs


def test_logprobs_agree_with_forward_and_with_generate():
    model = _model()
    prompts, completions = ["12+", "abc", "q"], ["34\n", "d", ""]
    got = model.logprobs(prompts, completions)
    for p, c, lp in zip(prompts, completions, got, strict=True):
        ids = [BOS_ID, *model.tokenizer.encode(p + c)]
        p_len = len(p) + 1
        logp = torch.log_softmax(model.forward(torch.tensor([ids[:-1]]))[0], -1)
        expected = logp[p_len - 1 :].gather(-1, torch.tensor(ids[p_len:])[:, None]).squeeze(-1)
        assert lp.shape == (len(c),) and not lp.requires_grad
        assert not lp.is_inference()  # usable as a constant in a later loss with gradients
        torch.testing.assert_close(lp, expected, atol=1e-5, rtol=0)

    # stop_at_newline=False: only eos stops, so a completion without one scores as its text
    s = Sampling(temperature=1.0, max_new_tokens=6, stop_at_newline=False, seed=0)
    out = [c for p, cs in zip(prompts, model.generate(prompts, 3, s), strict=True) for c in cs]
    budget = [
        (p, c)
        for p, c in zip([p for p in prompts for _ in range(3)], out, strict=True)
        if c.n_tokens == len(c.text)
    ]
    assert len(budget) >= 5
    scores = model.logprobs([p for p, _ in budget], [c.text for _, c in budget])
    assert [c.logprob for _, c in budget] == pytest.approx(
        [float(lp.sum()) for lp in scores], abs=1e-4
    )
    assert all(c.token_logprobs is None for _, c in budget)  # none ended at a newline

    # Token by token, a completion that stopped at "\n" carries the forward pass's log-probs of
    # text + "\n" (what training encodes); eos stops and cut ones carry none.
    s = Sampling(temperature=1.0, max_new_tokens=8, seed=0)
    prompts = [f"{a}{b}+" for a in range(10) for b in range(4)]
    out = [c for p, cs in zip(prompts, model.generate(prompts, 4, s), strict=True) for c in cs]
    rows = [p for p in prompts for _ in range(4)]
    per_token = [(p, c) for p, c in zip(rows, out, strict=True) if c.token_logprobs is not None]
    assert len(per_token) >= 5 and len(per_token) < len(out)  # random weights: eos stops too
    assert all(not c.stopped or c.n_tokens == len(c.text) + 1 for c in out)
    scores = model.logprobs([p for p, _ in per_token], [c.text + "\n" for _, c in per_token])
    for (_, c), lp in zip(per_token, scores, strict=True):
        assert len(c.token_logprobs) == c.n_tokens
        assert sum(c.token_logprobs) == pytest.approx(c.logprob, abs=1e-5)
        torch.testing.assert_close(torch.tensor(c.token_logprobs), lp, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("theta", [10000.0, math.inf])
def test_logits_at_selected_positions_match_the_full_forward_and_its_gradients(kernels, theta):
    """`forward(..., at=mask)` runs the last layer's output projection and feed-forward on the
    selected rows only: the same logits as the full forward's rows there, and the same gradient
    for a loss read at those rows (the unselected rows still feed the last layer's keys and
    values, so the earlier layers' gradients depend on them). Right padding takes the fused
    attention (with kernels), left padding the torch path."""
    from reasonloop.models import train_kernels

    model = TinyModel.create(
        ModelConfig(dim=64, n_layers=3, n_heads=4, max_seq_len=32, rope_theta=theta), seed=0
    )
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, N_USED, (3, 12), generator=gen)
    right = torch.ones_like(ids)
    right[1, 9:] = 0
    left = torch.ones_like(ids)
    left[2, :4] = 0
    at = torch.rand(ids.shape, generator=gen) < 0.5
    at[0] = False  # a row with nothing selected
    ctx = contextlib.nullcontext() if kernels else train_kernels.disabled()
    with ctx:
        for attn in (right, left):
            grads = []
            for full in (True, False):
                model.module.zero_grad()
                out = model.forward(ids, attn) if full else model.forward(ids, attn, at=at)
                picked = out[at] if full else out
                assert picked.shape == (int(at.sum()), out.shape[-1])
                (picked.square().mean()).backward()
                grads.append({n: p.grad.clone() for n, p in model.module.named_parameters()})
                if full:
                    reference = picked.detach()
                else:
                    torch.testing.assert_close(picked, reference, atol=1e-5, rtol=1e-5)
            for name, g in grads[0].items():
                torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-4, msg=name)
    with pytest.raises(ValueError, match="at"):
        model.module(ids, at=at, last_only=True)
