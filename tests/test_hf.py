"""The hf backend on small models built from a config (no weights can be downloaded here)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from reasonloop.config import ModelConfig
from reasonloop.models.base import LanguageModel, Sampling
from reasonloop.models.hf import HFModel, HFTokenizer
from reasonloop.models.tiny import TinyModel
from reasonloop.models.tokenizer import N_USED, NEWLINE_ID, CharTokenizer

torch.set_num_threads(1)

LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 96,
}
PROMPTS = ["12+34=", "a longer prompt, with words=", "7"]


def _model(seed: int = 0, **overrides) -> HFModel:
    return HFModel.from_config(
        ModelConfig(backend="hf", hf_config={**LLAMA, **overrides}), seed=seed
    )


def _completion_loss(model: HFModel, prompt: str, completion: str) -> torch.Tensor:
    """Mean negative log-likelihood of the completion tokens (an SFT loss on one example)."""
    p, c = model.encode_prompt(prompt), model.tokenizer.encode(completion)
    ids = torch.tensor([p + c])
    logits = model.forward(ids[:, :-1], torch.ones_like(ids[:, :-1]))
    logp = F.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return -logp[:, len(p) - 1 :].mean()


def _train(
    model: HFModel, pairs: list[tuple[str, str]], steps: int, lr: float = 3e-3
) -> list[float]:
    opt = torch.optim.AdamW(model.module.parameters(), lr=lr)
    model.module.train()
    losses = []
    for _ in range(steps):
        loss = sum(_completion_loss(model, p, c) for p, c in pairs) / len(pairs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def trained() -> HFModel:
    """A model that has memorised two answers, each ending in a newline."""
    model = _model(seed=1)
    _train(model, [("12+34=", "46\n"), ("7", "seven\n")], steps=60, lr=1e-2)
    return model


def test_built_from_config_with_the_char_tokenizer():
    model = _model()
    assert isinstance(model, LanguageModel)
    assert isinstance(model.tokenizer, CharTokenizer)
    assert type(model.module).__name__ == "LlamaForCausalLM"
    assert model.module.config.hidden_size == 64 and model.module.config.vocab_size == 128
    same, other = _model(seed=0), _model(seed=1)
    ids = torch.tensor([model.encode_prompt("1+2=")])
    assert torch.equal(model.forward(ids), same.forward(ids))  # same seed, same weights
    assert not torch.equal(model.forward(ids), other.forward(ids))


def test_generate_shapes_budgets_and_determinism():
    model = _model()
    s = Sampling(temperature=1.0, max_new_tokens=12, seed=5, stop_at_newline=False)
    out = model.generate(PROMPTS, n=3, sampling=s)
    assert [len(o) for o in out] == [3, 3, 3]
    assert all(0 < c.n_tokens <= 12 and c.logprob < 0 for o in out for c in o)
    assert model.generate(PROMPTS, n=3, sampling=s) == out
    other = model.generate(PROMPTS, n=3, sampling=Sampling(**{**s.__dict__, "seed": 6}))
    assert other != out
    assert model.generate([], n=2, sampling=s) == []
    assert all(
        c.text == "" and c.n_tokens == 0
        for c in model.generate(["x"], 2, Sampling(max_new_tokens=0))[0]
    )


def test_seeded_generation_leaves_the_global_rng_alone():
    model = _model()
    state = torch.get_rng_state()
    model.generate(["1"], 2, Sampling(max_new_tokens=4, seed=3))
    assert torch.equal(torch.get_rng_state(), state)


def test_greedy_follows_the_argmax_of_forward():
    model = _model()
    greedy = model.generate(
        PROMPTS[:1], n=2, sampling=Sampling(temperature=0, max_new_tokens=5, stop_at_newline=False)
    )[0]
    assert greedy[0] == greedy[1]
    ids = model.encode_prompt(PROMPTS[0])
    expected = []
    for _ in range(greedy[0].n_tokens):
        logits = model.forward(torch.tensor([ids]))[0, -1]
        logits[[0, 1]] = -torch.inf  # pad, bos and unused ids are never generated
        logits[N_USED:] = -torch.inf
        expected.append(int(logits.argmax()))
        ids.append(expected[-1])
    assert greedy[0].text == model.tokenizer.decode(expected)
    top1 = model.generate(
        PROMPTS[:1],
        1,
        Sampling(temperature=0.7, top_k=1, max_new_tokens=5, stop_at_newline=False, seed=0),
    )
    assert top1[0][0].text == greedy[0].text


def test_logprobs_agree_with_forward_and_with_generate():
    model = _model()
    prompts, completions = ["12+34=", "hello"], ["46\n", "a longer completion"]
    got = model.logprobs(prompts, completions)
    for p, c, lp in zip(prompts, completions, got, strict=True):
        pid, cid = model.encode_prompt(p), model.tokenizer.encode(c)
        ids = torch.tensor([pid + cid])
        with torch.no_grad():
            ref = F.log_softmax(model.forward(ids)[0, :-1], -1)
        expected = ref[len(pid) - 1 :].gather(-1, ids[0, len(pid) :, None]).squeeze(-1)
        assert lp.shape == (len(cid),) and lp.dtype == torch.float32
        torch.testing.assert_close(lp, expected, atol=1e-5, rtol=0)
    # a sampled completion's logprob: its tokens plus the stop token (newline or eos), if any
    out = model.generate(
        PROMPTS, n=2, sampling=Sampling(temperature=1.0, max_new_tokens=10, seed=2)
    )
    for p, comps in zip(PROMPTS, out, strict=True):
        for c in comps:
            text_ids = model.tokenizer.encode(c.text)
            stops = [[NEWLINE_ID], [model.tokenizer.eos_id]] if c.n_tokens > len(text_ids) else [[]]
            candidates = [_sequence_logprob(model, p, text_ids + stop) for stop in stops]
            assert min(abs(c.logprob - x) for x in candidates) < 1e-3


def test_sampled_token_logprobs_are_those_training_scores():
    """A completion that stopped at a newline carries, token by token, the forward pass's
    log-probs of text + "\n" (what `sft.encode_example` trains on); eos stops and cut ones carry
    none, as on the tiny backend."""
    model = _model()
    prompts = [f"{a}{b}+" for a in range(10) for b in range(4)]
    s = Sampling(temperature=1.0, max_new_tokens=8, seed=0)
    out = [c for cs in model.generate(prompts, 4, s) for c in cs]
    rows = [p for p in prompts for _ in range(4)]
    per_token = [(p, c) for p, c in zip(rows, out, strict=True) if c.token_logprobs is not None]
    others = [c for c in out if c.token_logprobs is None]
    assert len(per_token) >= 5 and others  # random weights: eos stops and cut rows too
    assert all(not c.stopped or c.n_tokens == len(c.text) + 1 for c in others)
    scores = model.logprobs([p for p, _ in per_token], [c.text + "\n" for _, c in per_token])
    for (_, c), lp in zip(per_token, scores, strict=True):
        assert c.stopped and len(c.token_logprobs) == c.n_tokens == len(c.text) + 1
        assert sum(c.token_logprobs) == pytest.approx(c.logprob, abs=1e-5)
        torch.testing.assert_close(torch.tensor(c.token_logprobs), lp, atol=1e-4, rtol=0)


def _sequence_logprob(model: HFModel, prompt: str, ids: list[int]) -> float:
    pid = model.encode_prompt(prompt)
    full = torch.tensor([pid + ids])
    with torch.no_grad():
        logp = F.log_softmax(model.forward(full)[0, :-1], -1)
    return float(logp[len(pid) - 1 :].gather(-1, full[0, len(pid) :, None]).sum())


def test_forward_handles_left_and_right_padding():
    model = _model()
    ids = model.encode_prompt("abc=")
    alone = model.forward(torch.tensor([ids]))[0]
    right = model.forward(torch.tensor([ids + [0, 0]]), torch.tensor([[1] * len(ids) + [0, 0]]))[
        0, : len(ids)
    ]
    left = model.forward(torch.tensor([[0, 0] + ids]), torch.tensor([[0, 0] + [1] * len(ids)]))[
        0, 2:
    ]
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)


def test_sft_steps_lower_the_loss_and_generation_stops_at_newline(trained):
    fresh = _model(seed=1)
    before = _completion_loss(fresh, "12+34=", "46\n").item()
    after = _completion_loss(trained, "12+34=", "46\n").item()
    assert after < before / 4
    out = trained.generate(
        ["12+34=", "7"], n=2, sampling=Sampling(temperature=0, max_new_tokens=20)
    )
    assert [c.text for c in out[0]] == ["46", "46"] and out[0][0].n_tokens == 3
    assert out[1][0].text == "seven" and out[1][0].n_tokens == 6
    # without the newline stop, decoding runs on past it
    longer = trained.generate(
        ["12+34="], 1, Sampling(temperature=0, max_new_tokens=6, stop_at_newline=False)
    )
    assert longer[0][0].text.startswith("46\n") and longer[0][0].n_tokens == 6


def test_generation_stops_at_the_position_limit():
    model = _model()
    prompt = "x" * 90  # 91 tokens with bos; max_position_embeddings is 96
    (out,) = model.generate([prompt], 2, Sampling(max_new_tokens=50, stop_at_newline=False, seed=0))
    assert all(c.n_tokens <= 5 for c in out)
    with pytest.raises(ValueError, match="prompt 0 is 96 tokens"):
        model.generate(["x" * 95], 1, Sampling())


def test_save_load_round_trip(tmp_path, trained):
    path = tmp_path / "ckpt"
    trained.save(path)
    trained.save(path)  # overwriting an existing checkpoint works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dirs left
    assert any(p.suffix == ".safetensors" for p in path.iterdir())
    loaded = HFModel.load(path)
    assert isinstance(loaded.tokenizer, CharTokenizer)
    ids = torch.tensor([trained.encode_prompt("12+34=46")])
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward(ids), trained.forward(ids), atol=0, rtol=0)
    via_config = HFModel.from_config(ModelConfig(backend="hf", path=str(path)), seed=0)
    s = Sampling(temperature=0, max_new_tokens=8)
    assert via_config.generate(["12+34="], 1, s) == trained.generate(["12+34="], 1, s)


def test_a_checkpoint_generation_config_does_not_change_decoding(tmp_path, trained):
    from transformers import GenerationConfig

    s = Sampling(temperature=0, max_new_tokens=8)
    expected = trained.generate(["12+34="], 1, s)
    clone = trained.copy()
    clone.module.generation_config = GenerationConfig(repetition_penalty=50.0, min_new_tokens=5)
    clone.save(tmp_path / "m")
    loaded = HFModel.load(tmp_path / "m")
    assert loaded.module.generation_config.repetition_penalty == 50.0
    assert loaded.generate(["12+34="], 1, s) == expected


def test_copy_is_independent():
    model = _model()
    clone = model.copy()
    ids = torch.tensor([model.encode_prompt("1+1=")])
    with torch.no_grad():
        for p in clone.module.parameters():
            p.add_(0.1)
        assert not torch.equal(clone.forward(ids), model.forward(ids))
        assert torch.equal(model.forward(ids), _model().forward(ids))


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_model does not exist"):
        HFModel.load(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        HFModel.load(tmp_path)
    with pytest.raises(ValueError, match="needs model.path .* or model.hf_config"):
        HFModel.from_config(ModelConfig(backend="hf"), seed=0)
    with pytest.raises(ValueError, match="needs a 'model_type'"):
        HFModel.from_config(ModelConfig(backend="hf", hf_config={"hidden_size": 64}), seed=0)
    with pytest.raises(ValueError, match="backend is 'tiny'"):
        HFModel.from_config(ModelConfig(), seed=0)
    with pytest.raises(ValueError, match="character tokenizer needs 128"):
        _model(vocab_size=64)
    with pytest.raises(ValueError, match="n .samples per prompt. must be >= 1"):
        _model().generate(["x"], 0)


def test_loads_an_exported_tiny_model_with_identical_behaviour(tmp_path):
    tiny = TinyModel.create(ModelConfig(dim=64, n_layers=2, n_heads=4, max_seq_len=64), seed=0)
    tiny.export_hf(tmp_path / "tiny")
    hf = HFModel.load(tmp_path / "tiny")
    s = Sampling(temperature=0, max_new_tokens=20)
    ours, theirs = hf.generate(PROMPTS, 2, s), tiny.generate(PROMPTS, 2, s)
    assert [[(c.text, c.n_tokens) for c in o] for o in ours] == [
        [(c.text, c.n_tokens) for c in o] for o in theirs
    ]
    assert [c.logprob for o in ours for c in o] == pytest.approx(
        [c.logprob for o in theirs for c in o], abs=1e-4
    )
    for a, b in zip(
        hf.logprobs(PROMPTS, ["46\n"] * 3), tiny.logprobs(PROMPTS, ["46\n"] * 3), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def _bpe_tokenizer(tmp_path):
    """A small byte-level BPE trained here, in which ".\\n" is a single token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=262,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(
        ["".join(rng.choices("abcdefgh", k=4)) + ".\n" for _ in range(200)], trainer
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def test_a_directory_tokenizer_is_used_and_newline_tokens_stop(tmp_path):
    hf_tok = _bpe_tokenizer(tmp_path)
    assert hf_tok.decode(hf_tok.encode("xy.\n", add_special_tokens=False)[-1:]) == ".\n"
    model = _model(seed=2, vocab_size=len(hf_tok), pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model.module.save_pretrained(tmp_path / "m")
    hf_tok.save_pretrained(tmp_path / "m")
    model = HFModel.load(tmp_path / "m")
    assert isinstance(model.tokenizer, HFTokenizer)
    assert model.tokenizer.encode("ab") == hf_tok.encode("ab", add_special_tokens=False)
    _train(model, [("ab=", "xy.\n")], steps=40, lr=1e-2)
    (out,) = model.generate(["ab="], 1, Sampling(temperature=0, max_new_tokens=10))
    # the stop token ".\n" keeps the text before its newline
    assert out[0].text == "xy." and out[0].n_tokens == 3
    model.save(tmp_path / "again")
    again = HFModel.load(tmp_path / "again")
    assert isinstance(again.tokenizer, HFTokenizer)
    assert again.generate(["ab="], 1, Sampling(temperature=0, max_new_tokens=10)) == [out]


def test_train_sft_runs_on_hf_and_lowers_the_loss():
    from reasonloop.algorithms.sft import train_sft
    from reasonloop.config import TrainConfig
    from reasonloop.types import SFTExample

    model = _model(seed=3)
    examples = [SFTExample(f"{a}+{b}=", str(a + b)) for a in range(3) for b in range(3)]
    before = sum(_completion_loss(model, e.prompt, e.completion + "\n").item() for e in examples)
    stats = train_sft(
        model, examples, TrainConfig(lr=1e-2, steps=80, batch_size=9, warmup_steps=2), seed=0
    )
    after = sum(_completion_loss(model, e.prompt, e.completion + "\n").item() for e in examples)
    assert stats["steps"] == 80 and stats["loss_last"] < stats["loss_first"] / 4
    assert after < before / 4
    out = model.generate([e.prompt for e in examples], 1, Sampling(temperature=0, max_new_tokens=5))
    assert sum(o[0].text == e.completion for o, e in zip(out, examples, strict=True)) >= 8


def test_logits_at_selected_positions_match_the_full_forward():
    """`forward(..., at=mask)` (what SFT calls): the rows of the full logits where the mask is
    set, in row-major order, through transformers' `logits_to_keep` from the first position any
    row sets; an all-false mask gives no rows."""
    model = _model()
    ids = torch.tensor([model.encode_prompt("12+34=46"), model.encode_prompt("7=seven!")])
    attn = torch.ones_like(ids)
    at = torch.zeros_like(ids, dtype=torch.bool)
    at[0, 5:] = True
    at[1, 3:6] = True
    full = model.forward(ids, attn)
    picked = model.forward(ids, attn, at=at)
    assert picked.shape == (int(at.sum()), full.shape[-1])
    torch.testing.assert_close(picked, full[at], atol=1e-5, rtol=0)
    assert model.forward(ids, attn, at=torch.zeros_like(at)).shape == (0, full.shape[-1])
