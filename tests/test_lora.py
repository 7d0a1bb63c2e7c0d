"""The hf backend complete: LoRA through peft, gradient checkpointing, bf16 training, chat
templates, and the loop on LoRA (small Llama models built from a config: nothing downloaded)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("peft")

from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from reasonloop.algorithms.optim import adamw  # noqa: E402
from reasonloop.algorithms.sft import encode_example, train_sft  # noqa: E402
from reasonloop.config import ConfigError, ModelConfig, TrainConfig, load_config  # noqa: E402
from reasonloop.loop.run import check_checkpoint, run  # noqa: E402
from reasonloop.loop.store import CorruptRunError, read_records  # noqa: E402
from reasonloop.models import load_model  # noqa: E402
from reasonloop.models.base import Sampling  # noqa: E402
from reasonloop.models.hf import ADAPTER_CONFIG, ADAPTER_WEIGHTS, HFModel  # noqa: E402
from reasonloop.models.tokenizer import hf_tokenizer  # noqa: E402
from reasonloop.types import SFTExample, Trace  # noqa: E402

LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 96,
}
EXAMPLES = [
    SFTExample(prompt=f"{a}+{b}=", completion=f"{a + b}", task_id=f"{a}+{b}")
    for a in range(8)
    for b in range(4)
]
TRAIN = TrainConfig(steps=25, batch_size=16, lr=1e-2, warmup_steps=0, weight_decay=0.0)
PROBE = ["3+1=", "a longer prompt=", "7"]


def _cfg(**fields) -> ModelConfig:
    return ModelConfig(backend="hf", hf_config=LLAMA, **fields)


def _batch(model: HFModel, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask of the prompts (so masks and positions matter)."""
    seqs = [model.encode_prompt(p) for p in prompts]
    T = max(map(len, seqs))
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    return ids, mask


@torch.no_grad()
def _logits(model: HFModel) -> torch.Tensor:
    model.module.eval()
    ids, mask = _batch(model, PROBE)
    out = model.forward(ids, mask) * mask[..., None]
    model.module.train()
    return out


def _base(model: HFModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model._base_state_dict().items()}


def _adapter(model: HFModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.module.named_parameters() if "lora_" in n}


@pytest.fixture(scope="module")
def trained() -> tuple[HFModel, dict[str, torch.Tensor], dict]:
    """A LoRA model after a few SFT steps, its base weights before them, and the stats."""
    model = HFModel.from_config(_cfg(lora={"r": 4, "alpha": 8}), seed=0)
    base = _base(model)
    stats = train_sft(model, EXAMPLES, TRAIN, seed=0)
    return model, base, stats


# ------------------------------------------------------------------------------------ LoRA


def test_only_the_adapters_train_and_the_base_stays(trained):
    model, base, stats = trained
    assert model.lora and type(model.module).__name__ == "PeftModelForCausalLM"
    trainable = [n for n, p in model.module.named_parameters() if p.requires_grad]
    # an A and a B for each of q, k, v, o, gate, up, down in each of the 2 blocks
    assert len(trainable) == 2 * 7 * 2
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    opt = adamw(model.module, TRAIN)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.module.parameters() if p.requires_grad}
    # training moved the adapters (B starts at zero) and nothing else
    assert stats["loss_last"] < stats["loss_first"] - 0.5
    after = _base(model)
    assert after.keys() == base.keys() and len(base) == 2 * 9 + 3
    assert all(torch.equal(after[k], base[k]) for k in base)
    assert any(p.abs().max() > 0 for n, p in _adapter(model).items() if ".lora_B." in n)


def test_save_load_round_trip(trained, tmp_path):
    model, base, _ = trained
    model.save(tmp_path / "ckpt")
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", ADAPTER_CONFIG, ADAPTER_WEIGHTS} <= names
    # the checkpoint's base weights are the untouched base, under transformers' own names
    saved = load_file(tmp_path / "ckpt/model.safetensors")
    assert saved.keys() == base.keys() and all(torch.equal(saved[k], base[k]) for k in base)

    for loaded in (
        HFModel.load(tmp_path / "ckpt"),  # as `reasonloop serve` loads it
        load_model(model.config, tmp_path / "ckpt"),  # as a resumed run loads it
    ):
        assert loaded.lora
        assert torch.equal(_logits(loaded), _logits(model))
        got = _adapter(loaded)
        assert all(torch.equal(got[n], p) for n, p in _adapter(model).items())
        trainable = {n for n, p in loaded.module.named_parameters() if p.requires_grad}
        assert trainable == {n for n, p in model.module.named_parameters() if p.requires_grad}
    s = Sampling(temperature=1.0, max_new_tokens=6, seed=3, stop_at_newline=False)
    assert loaded.generate(PROBE, 2, s) == model.generate(PROBE, 2, s)
    # transformers itself loads base + adapter from the same directory (peft installed)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", local_files_only=True)
    ids, mask = _batch(model, PROBE)
    with torch.no_grad():
        ref = plain.eval()(input_ids=ids, attention_mask=mask).logits * mask[..., None]
    assert (ref - _logits(model)).abs().max() < 1e-5


def test_merged_export_loads_in_plain_transformers(trained, tmp_path):
    model, _, _ = trained
    before = _adapter(model)
    model.export_merged(tmp_path / "merged")
    assert not (tmp_path / "merged" / ADAPTER_CONFIG).exists()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", local_files_only=True)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    ids, mask = _batch(model, PROBE)
    with torch.no_grad():
        got = plain.eval()(input_ids=ids, attention_mask=mask).logits * mask[..., None]
    ours = _logits(model)
    assert (got - ours).abs().max() < 1e-4
    # the adapter mattered: the base alone computes something else
    with model.module.disable_adapter(), torch.no_grad():
        assert (_logits(model) - ours).abs().max() > 1e-2
    assert model.lora and all(torch.equal(p, before[n]) for n, p in _adapter(model).items())


def test_merge_on_save_folds_the_adapter_and_resumes_exactly(tmp_path):
    model = HFModel.from_config(_cfg(lora={"r": 4, "merge_on_save": True}), seed=0)
    base = _base(model)
    train_sft(model, EXAMPLES, TRAIN, seed=0)
    trained_a = {n: p for n, p in _adapter(model).items() if ".lora_A." in n}
    ours = _logits(model)
    model.save(tmp_path / "ckpt")
    # same function, now held by the base weights; B restarts at zero, A is kept
    assert (_logits(model) - ours).abs().max() < 1e-5
    adapter = _adapter(model)
    assert all(p.abs().max() == 0 for n, p in adapter.items() if ".lora_B." in n)
    assert all(torch.equal(adapter[n], a) for n, a in trained_a.items())
    folded = _base(model)
    assert not torch.equal(
        folded["model.layers.0.self_attn.q_proj.weight"],
        base["model.layers.0.self_attn.q_proj.weight"],
    )
    # the checkpoint is exactly the model in memory, so a resumed run continues identically
    loaded = load_model(model.config, tmp_path / "ckpt")
    assert torch.equal(_logits(loaded), _logits(model))
    assert all(torch.equal(_base(loaded)[k], v) for k, v in folded.items())
    assert all(torch.equal(_adapter(loaded)[n], p) for n, p in adapter.items())
    # and its base weights alone are the trained model: no peft needed
    plain = AutoModelForCausalLM.from_config(model._lm.config)
    plain.load_state_dict(load_file(tmp_path / "ckpt/model.safetensors"))
    ids, mask = _batch(model, PROBE)
    with torch.no_grad():
        got = plain.eval()(input_ids=ids, attention_mask=mask).logits * mask[..., None]
    assert (got - ours).abs().max() < 1e-4


def test_a_directory_gets_a_seeded_adapter_and_a_lora_checkpoint_merges_without_lora(
    trained, tmp_path
):
    model, _, _ = trained
    plain = HFModel.from_config(_cfg(), seed=1)
    plain.save(tmp_path / "plain")
    cfg = ModelConfig(backend="hf", path=str(tmp_path / "plain"), lora={"r": 2})
    one, two = HFModel.from_config(cfg, seed=5), HFModel.from_config(cfg, seed=5)
    assert one.lora and torch.equal(_logits(one), _logits(plain))  # B = 0: the same function
    assert all(torch.equal(_adapter(two)[n], p) for n, p in _adapter(one).items())
    assert one.module.peft_config["default"].r == 2
    # full fine-tuning from a LoRA checkpoint: the adapter is merged into the weights
    model.save(tmp_path / "lora")
    full = HFModel.from_config(ModelConfig(backend="hf", path=str(tmp_path / "lora")), seed=0)
    assert not full.lora and all(p.requires_grad for p in full.module.parameters())
    assert (_logits(full) - _logits(model)).abs().max() < 1e-4


def test_bad_lora_settings_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.lora is an hf-backend option"):
        load_config("star", overrides={"model": {"lora": {"r": 4}}})
    with pytest.raises(ConfigError, match=r"model\.gradient_checkpointing"):
        load_config("star", overrides={"model": {"gradient_checkpointing": True}})
    with pytest.raises(ConfigError, match=r"model\.lora\.r"):
        load_config("star", overrides={"model": {"backend": "hf", "lora": {"r": 0}}})
    with pytest.raises(ValueError, match=r"model\.lora\.target_modules"):
        HFModel.from_config(_cfg(lora={"target_modules": ["no_such_proj"]}), seed=0)
    # a damaged adapter is refused, naming the file
    model = HFModel.from_config(_cfg(lora={}), seed=0)
    model.save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / ADAPTER_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=ADAPTER_WEIGHTS):
        HFModel.load(tmp_path / "ckpt")
    # and a run finds a deleted one before loading, so it redoes that round's training
    (tmp_path / "ckpt" / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(CorruptRunError, match=ADAPTER_WEIGHTS):
        check_checkpoint(tmp_path / "ckpt", model.config)
    with pytest.raises(ConfigError, match=r"model\.chat_template"):
        load_config(
            "star",
            overrides={"model": {"backend": "hf", "hf_config": LLAMA, "chat_template": True}},
        )


# ------------------------------------------------------- gradient checkpointing, bf16, chat


def _counted(forward, calls: list):
    def run(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    return run


@pytest.mark.parametrize("lora", [None, {"r": 4}], ids=["full", "lora"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(lora):
    plain = HFModel.from_config(_cfg(lora=lora), seed=0)
    ckpt = HFModel.from_config(_cfg(lora=lora, gradient_checkpointing=True), seed=0)
    for model, on in ((plain, False), (ckpt, True)):
        assert any(getattr(m, "gradient_checkpointing", False) for m in model._lm.modules()) == on
    with torch.no_grad():  # B = 0 gives A no gradient: move B so every adapter weight has one
        for m in (plain, ckpt):
            for n, p in m.module.named_parameters():
                if ".lora_B." in n:
                    p.copy_(torch.linspace(-0.1, 0.1, p.numel()).view_as(p))
    runs = []
    for model in (plain, ckpt):
        # count the runs of a module inside the first block: backward's recompute runs it again
        # (transformers keeps module hooks out of the recompute, so wrap its forward)
        mlp, calls = model._lm.model.layers[0].mlp, []
        mlp.forward = _counted(mlp.forward, calls)
        seqs = [encode_example(model.tokenizer, ex) for ex in EXAMPLES[:6]]
        ids = torch.zeros(len(seqs), max(len(s) for s, _ in seqs), dtype=torch.long)
        for i, (s, _) in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        logits = model.forward(ids[:, :-1], (ids[:, :-1] > 0).long())
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), ignore_index=0)
        loss.backward()
        del mlp.forward
        grads = {n: p.grad for n, p in model.module.named_parameters() if p.requires_grad}
        runs.append((loss.item(), grads, len(calls)))
    (loss0, grads0, calls0), (loss1, grads1, calls1) = runs
    assert (calls0, calls1) == (1, 2)  # checkpointing ran the block again in backward
    assert loss1 == pytest.approx(loss0, abs=1e-6)
    assert grads0.keys() == grads1.keys() and all(g is not None for g in grads1.values())
    for n, g in grads0.items():
        torch.testing.assert_close(grads1[n], g, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("lora", [None, {"r": 8}], ids=["full", "lora"])
def test_bfloat16_trains_on_cpu_and_reloads_exactly(lora, tmp_path):
    model = HFModel.from_config(_cfg(dtype="bfloat16", lora=lora), seed=0)
    stats = train_sft(model, EXAMPLES, TRAIN, seed=0)
    assert stats["loss_last"] < stats["loss_first"] - 0.5
    dtypes = {n: p.dtype for n, p in model.module.named_parameters()}
    for n, dtype in dtypes.items():
        # peft keeps adapters float32 over a bf16 base; the base weights stay bf16
        assert dtype == (torch.float32 if "lora_" in n else torch.bfloat16), n
    # a checkpoint reloads in the run's dtype, computing what the model that wrote it did
    model.save(tmp_path / "ckpt")
    loaded = load_model(model.config, tmp_path / "ckpt")
    assert {n: p.dtype for n, p in loaded.module.named_parameters()} == dtypes
    assert torch.equal(_logits(loaded), _logits(model))


CHAT = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def test_chat_template_shapes_generation_scoring_and_training_alike(tmp_path):
    model = HFModel.from_config(_cfg(), seed=0)
    tok = hf_tokenizer()
    tok.chat_template = CHAT
    model.save(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    cfg = ModelConfig(backend="hf", path=str(tmp_path / "m"), chat_template=True, lora={})
    chat = HFModel.from_config(cfg, seed=0)
    raw = HFModel.load(tmp_path / "m")  # as served: prompts as given
    templated = "[user] 3+1=\n[assistant] "
    assert chat.encode_prompt("3+1=") == raw.encode_prompt(templated)
    ids, p_len = encode_example(
        chat.tokenizer, SFTExample(prompt="3+1=", completion="4", task_id="t")
    )
    assert ids[:p_len] == raw.encode_prompt(templated)
    assert torch.equal(chat.logprobs(["3+1="], ["4"])[0], raw.logprobs([templated], ["4"])[0])
    s = Sampling(temperature=1.0, max_new_tokens=5, seed=1, stop_at_newline=False)
    assert chat.generate(["3+1="], 2, s) == raw.generate([templated], 2, s)
    # a model loaded for a run with chat_template keeps it; one without a template refuses it
    assert load_model(cfg, tmp_path / "m").encode_prompt("3+1=") == chat.encode_prompt("3+1=")
    model.save(tmp_path / "plain")
    hf_tokenizer().save_pretrained(tmp_path / "plain")  # the same tokenizer, no template
    with pytest.raises(ValueError, match="has no chat template"):
        load_model(cfg, tmp_path / "plain")


# ------------------------------------------------------------------------------ the loop


def _loop_cfg(preset: str, base: str, rounds: int, **over):
    return load_config(
        preset,
        overrides={
            "rounds": rounds,
            "model": {"backend": "hf", "threads": 1, "path": base, "lora": {"r": 8}},
            "seed_train": {"steps": 10, "batch_size": 16, "lr": 0.003, "warmup_steps": 2},
            "train": {"steps": 4, "batch_size": 16, "lr": 0.003, "warmup_steps": 1},
            "tasks": {
                "seed_levels": [1],
                "seed_examples": 64,
                "heldout_levels": [1],
                "heldout_per_level": 8,
            },
            "creator": {"per_round": 16, "start_level": 1, "max_level": 1},
            "reasoner": {"samples": 4, "batch_size": 64},
            **over,
        },
    )


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
    """A small Llama that knows some 1-digit addition (a full fine-tune, no LoRA): the base
    model the LoRA runs start from, as a real LoRA run starts from a pretrained model."""
    out = tmp_path_factory.mktemp("base")
    cfg = load_config(
        "rft",
        overrides={
            "rounds": 0,
            "model": {
                "backend": "hf",
                "threads": 1,
                "hf_config": {**LLAMA, "hidden_size": 48, "intermediate_size": 96},
            },
            "seed_train": {"steps": 300, "batch_size": 32, "lr": 0.003, "warmup_steps": 10},
            "tasks": {
                "seed_levels": [1],
                "seed_examples": 200,
                "heldout_levels": [1],
                "heldout_per_level": 8,
            },
        },
    )
    run(cfg, out, show_progress=False, log=lambda *_: None)
    return str(out / "checkpoints/r000")


def _check_lora_checkpoints(out, base_dir: str, rounds: int) -> list[dict[str, torch.Tensor]]:
    """Every checkpoint holds the starting model's base weights, byte for byte, and its own
    adapter; returns the adapters by round."""
    base = load_file(f"{base_dir}/model.safetensors")
    adapters = []
    for r in range(rounds + 1):
        ckpt = out / f"checkpoints/r{r:03d}"
        saved = load_file(ckpt / "model.safetensors")
        assert saved.keys() == base.keys()
        assert all(torch.equal(saved[k], base[k]) for k in base), f"round {r} moved the base"
        adapters.append(load_file(ckpt / ADAPTER_WEIGHTS))
    for r in range(1, rounds + 1):
        prev, now = adapters[r - 1], adapters[r]
        assert any(not torch.equal(prev[k], now[k]) for k in now), f"round {r} trained nothing"
    return adapters


def test_star_on_lora_trains_only_the_adapter_and_resumes(pretrained, tmp_path):
    whole = tmp_path / "whole"
    summary = run(_loop_cfg("star", pretrained, 2), whole, show_progress=False, log=lambda *_: None)
    assert summary["complete"] and all(r["train"]["steps"] > 0 for r in summary["rounds"])
    adapters = _check_lora_checkpoints(whole, pretrained, 2)
    # stopped after round 1, then resumed: round 2 starts from the LoRA checkpoint of round 1
    part = tmp_path / "part"
    run(_loop_cfg("star", pretrained, 1), part, show_progress=False, log=lambda *_: None)
    resumed = run(_loop_cfg("star", pretrained, 2), part, show_progress=False, log=lambda *_: None)
    assert resumed["complete"] and len(resumed["rounds"]) == 3
    again = _check_lora_checkpoints(part, pretrained, 2)
    assert all(torch.equal(again[2][k], v) for k, v in adapters[2].items())
    traces = [read_records(d / "rounds/r002/traces.parquet", Trace) for d in (whole, part)]
    assert traces[0] == traces[1] and traces[0]


def test_iterative_dpo_on_lora_trains_only_the_adapter(pretrained, tmp_path):
    cfg = _loop_cfg("iterative-dpo", pretrained, 1, train={"steps": 4, "batch_size": 8, "lr": 1e-3})
    summary = run(cfg, tmp_path / "dpo", show_progress=False, log=lambda *_: None)
    dpo = summary["rounds"][1]["train"]
    assert summary["complete"] and dpo["examples"] > 0 and dpo["steps"] == 4
    _check_lora_checkpoints(tmp_path / "dpo", pretrained, 1)
