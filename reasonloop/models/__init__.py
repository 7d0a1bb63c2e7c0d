"""Language models behind one small protocol (`base.LanguageModel`)."""

from __future__ import annotations

from pathlib import Path

from reasonloop.config import ModelConfig
from reasonloop.models.base import LanguageModel


def build_model(cfg: ModelConfig, seed: int) -> LanguageModel:
    """A fresh model for `cfg` (tiny: random init; hf: a local directory or a config dict)."""
    if cfg.backend == "tiny":
        from reasonloop.models.tiny import TinyModel

        return TinyModel.create(cfg, seed)
    from reasonloop.models.hf import HFModel

    return HFModel.from_config(cfg, seed)


def load_model(cfg: ModelConfig, path: str | Path) -> LanguageModel:
    """Weights saved by `model.save(path)` on the backend `cfg` names (safetensors only)."""
    if cfg.backend == "tiny":
        from reasonloop.models.tiny import TinyModel

        return TinyModel.load(path)
    from reasonloop.models.hf import HFModel

    return HFModel.load(path)
