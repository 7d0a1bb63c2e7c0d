"""Language models behind one small protocol (`base.LanguageModel`)."""

from __future__ import annotations

from pathlib import Path

from reasonloop.config import ModelConfig
from reasonloop.models.base import LanguageModel


def build_model(cfg: ModelConfig, seed: int) -> LanguageModel:
    """A fresh model for `cfg` (tiny: random init; hf: a local directory or a config dict;
    openai: a client of `cfg.base_url`, generation only)."""
    if cfg.backend == "openai":
        from reasonloop.models.openai import OpenAIModel

        return OpenAIModel.from_config(cfg)
    if cfg.backend == "tiny":
        from reasonloop.models.tiny import TinyModel

        return TinyModel.create(cfg, seed)
    from reasonloop.models.hf import HFModel

    return HFModel.from_config(cfg, seed)


def load_model(cfg: ModelConfig, path: str | Path) -> LanguageModel:
    """Weights saved by `model.save(path)` on the backend `cfg` names (safetensors only); the
    openai backend has no weights here: it returns the client `cfg` describes."""
    if cfg.backend == "openai":
        from reasonloop.models.openai import OpenAIModel

        return OpenAIModel.from_config(cfg)
    if cfg.backend == "tiny":
        from reasonloop.models.tiny import TinyModel

        return TinyModel.load(path)
    from reasonloop.models.hf import HFModel

    # The run's dtype, device, LoRA and other options apply to its checkpoints as to its start.
    return HFModel.load(path, dtype=cfg.dtype, device=cfg.device, config=cfg)
