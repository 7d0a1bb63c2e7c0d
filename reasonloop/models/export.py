"""Export a tiny model as a `transformers.LlamaForCausalLM` directory (safetensors + config.json).

The tiny network is Llama with q/k/v and gate/up fused, so the export only splits those matrices
and renames. NoPE (`rope_theta = inf`) has no Llama switch: `transformers` computes
1 / inf**0 = 1 for the first rotary frequency, so it would still rotate one pair of dimensions.
Linear RoPE scaling by 1e30 divides every frequency by 1e30 instead, which makes every angle
below 1e-25 radians: cos is exactly 1.0 and sin below float32 resolution, i.e. no rotation.
Only `transformers` is needed to load the result, not to write it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from reasonloop.models.tiny import RMS_EPS, WEIGHTS_FILE, _atomic_write_dir, ffn_size
from reasonloop.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, hf_tokenizer

if TYPE_CHECKING:
    from reasonloop.models.tiny import TinyModel

NOPE_SCALING = 1e30


def hf_config(model: TinyModel) -> dict:
    """The `config.json` of the exported LlamaForCausalLM."""
    cfg = model.config
    if math.isinf(cfg.rope_theta):
        rope = {"rope_type": "linear", "rope_theta": 10000.0, "factor": NOPE_SCALING}
    else:
        rope = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": cfg.dim,
        "intermediate_size": ffn_size(cfg),
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.dim // cfg.n_heads,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": RMS_EPS,
        "rope_theta": rope["rope_theta"],
        "rope_parameters": rope,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "torch_dtype": "float32",
        "dtype": "float32",
    }


def hf_state_dict(model: TinyModel) -> dict[str, torch.Tensor]:
    """The tiny weights under Llama's names, fused matrices split."""
    m = model.module
    dim, ffn = model.config.dim, ffn_size(model.config)
    out = {
        "model.embed_tokens.weight": m.embed.weight,
        "model.norm.weight": m.norm,
        "lm_head.weight": m.lm_head.weight,
    }
    for i, layer in enumerate(m.layers):
        p = f"model.layers.{i}."
        q, k, v = layer.wqkv.weight.split(dim)
        gate, up = layer.w_gate_up.weight.split(ffn)
        out |= {
            p + "input_layernorm.weight": layer.attn_norm,
            p + "self_attn.q_proj.weight": q,
            p + "self_attn.k_proj.weight": k,
            p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": layer.wo.weight,
            p + "post_attention_layernorm.weight": layer.ffn_norm,
            p + "mlp.gate_proj.weight": gate,
            p + "mlp.up_proj.weight": up,
            p + "mlp.down_proj.weight": layer.w_down.weight,
        }
    # safetensors wants each tensor to own contiguous memory (the splits are views)
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in out.items()}


def load_hf_state_dict(model: TinyModel, state: dict[str, torch.Tensor]) -> None:
    """Copy Llama-named weights (an exported model after training elsewhere, e.g. by TRL) back
    into `model`, fusing q/k/v and gate/up again: the inverse of `hf_state_dict`. Raises
    ValueError naming the missing or mis-shaped tensors."""
    n = model.config.n_layers
    fused = {"norm": "model.norm.weight", "embed.weight": "model.embed_tokens.weight"}
    fused["lm_head.weight"] = "lm_head.weight"
    names = {
        "attn_norm": "input_layernorm.weight",
        "ffn_norm": "post_attention_layernorm.weight",
        "wo.weight": "self_attn.o_proj.weight",
        "w_down.weight": "mlp.down_proj.weight",
    }
    wanted = set(fused.values()) | {
        f"model.layers.{i}.{x}"
        for i in range(n)
        for x in [*names.values(), "self_attn.q_proj.weight", "self_attn.k_proj.weight"]
        + ["self_attn.v_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight"]
    }
    missing = sorted(wanted - set(state))
    if missing:
        raise ValueError(f"Llama state dict lacks {missing[:5]} (tiny model of {n} layers)")
    out = {k: state[v] for k, v in fused.items()}
    for i in range(n):
        p = f"model.layers.{i}."
        out |= {f"layers.{i}.{k}": state[p + v] for k, v in names.items()}
        qkv = [state[p + f"self_attn.{x}_proj.weight"] for x in "qkv"]
        out[f"layers.{i}.wqkv.weight"] = torch.cat(qkv)
        gate_up = [state[p + f"mlp.{x}_proj.weight"] for x in ("gate", "up")]
        out[f"layers.{i}.w_gate_up.weight"] = torch.cat(gate_up)
    own = model.module.state_dict()
    bad = [k for k, v in own.items() if k not in out or out[k].shape != v.shape]
    if bad:
        raise ValueError(f"Llama weights do not fit this tiny model: {bad[:5]} differ in shape")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(out[k].to(v.device, v.dtype))


def export_hf(model: TinyModel, path: str | Path) -> None:
    """Write `path`/model.safetensors and `path`/config.json (atomically) for
    `transformers.LlamaForCausalLM.from_pretrained(path)`, plus the character tokenizer's
    files for `AutoTokenizer.from_pretrained(path)` when `transformers` is installed."""
    if model.config.abacus:
        raise ValueError(
            f"cannot export to {path}: model.abacus is {model.config.abacus}, and Llama has no "
            "digit-position embedding; only models with abacus: 0 export"
        )
    state = hf_state_dict(model)
    config = hf_config(model)
    try:
        tokenizer = hf_tokenizer()
    except ImportError:
        tokenizer = None

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(
            json.dumps(
                {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}, indent=2
            )
            + "\n"
        )
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))

    _atomic_write_dir(path, write)
