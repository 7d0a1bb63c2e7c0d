"""Experiment trackers (`report_to`): TensorBoard, MLflow, Weights & Biases.

Each finished round's metrics.json is flattened to summary.json's own names (`heldout.pass@1`,
`heldout.by_level.7`, `seconds.train`, `train.loss_last`, `data.dropped.judged wrong`, ...) and
sent with the round number as the step, so a dashboard and summary.json never disagree on what
a metric is called. The packages are optional and imported only when named in the config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict under dotted names; text, None and lists are left out."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, f"{name}.")
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, int | float):
            out[name] = float(value)
    return out


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(root / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflow:
    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        import mlflow

        self.mlflow = mlflow
        # MLflow's file store is deprecated; its SQLite store is one file in the run directory.
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "reasonloop"))
        # One MLflow run per run directory, found again on resume by its tag.
        tag = str(root.resolve())
        found = mlflow.search_runs(
            filter_string=f"tags.reasonloop_run_dir = '{tag}'", output_format="list"
        )
        if found:
            self.run = mlflow.start_run(run_id=found[0].info.run_id)
        else:
            self.run = mlflow.start_run(run_name=root.name, tags={"reasonloop_run_dir": tag})
            params = {k: str(v)[:500] for k, v in flatten_params(config).items()}
            mlflow.log_params(params)

    def log(self, metrics: dict[str, float], step: int) -> None:
        # MLflow metric names allow letters, digits and `_-./ `; `pass@1` has an `@`.
        self.mlflow.log_metrics({mlflow_name(k): v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def mlflow_name(name: str) -> str:
    return name.replace("@", "_at_")


class WandB:
    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        import wandb

        self.wandb = wandb
        # Offline unless the user has set up W&B: nothing leaves the machine by surprise.
        online = "WANDB_MODE" in os.environ or "WANDB_API_KEY" in os.environ
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "reasonloop"),
            name=root.name,
            dir=str(root),
            config=config,
            mode=None if online else "offline",
            id=_wandb_id(root),
            resume="allow",
            reinit="finish_previous",
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


def _wandb_id(root: Path) -> str:
    import hashlib

    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


def flatten_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= flatten_params(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


TRACKERS: dict[str, type] = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


def missing(report_to: list[str]) -> list[str]:
    """The trackers named whose package is not installed (checked before a run starts)."""
    import importlib.util

    return [name for name in report_to if importlib.util.find_spec(PACKAGES[name]) is None]


def open_trackers(report_to: list[str], root: Path, config: dict[str, Any]) -> list[Tracker]:
    return [TRACKERS[name](root, config) for name in report_to]
