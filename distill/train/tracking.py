"""Experiment trackers: W&B, or a do-nothing stand-in so training code never branches."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log(self, metrics: dict, step: int | None = None) -> None: ...
    def summary(self, metrics: dict) -> None: ...
    def log_image(self, key: str, path: Path) -> None: ...
    def log_artifact(self, path: Path, name: str, type: str) -> None: ...
    def finish(self, exit_code: int = 0) -> None: ...


class NullTracker:
    """W&B turned off: every call is accepted and does nothing."""

    def log(self, metrics: dict, step: int | None = None) -> None:
        pass

    def summary(self, metrics: dict) -> None:
        pass

    def log_image(self, key: str, path: Path) -> None:
        pass

    def log_artifact(self, path: Path, name: str, type: str) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbTracker:
    """Wraps a live ``wandb`` run (online, offline, or under ``wandb agent``)."""

    def __init__(self, run: Any):
        import wandb

        self._wandb = wandb
        self.run = run
        # Metrics are logged with the trainer's update counter as their x-axis.
        run.define_metric("train/global_step")
        run.define_metric("train/*", step_metric="train/global_step")
        run.define_metric("eval/*", step_metric="train/global_step")

    def log(self, metrics: dict, step: int | None = None) -> None:
        if step is not None:
            metrics = {**metrics, "train/global_step": step}
        self.run.log(metrics)

    def summary(self, metrics: dict) -> None:
        for k, v in metrics.items():
            self.run.summary[k] = v

    def log_image(self, key: str, path: Path) -> None:
        if Path(path).exists():
            self.run.log({key: self._wandb.Image(str(path))})

    def log_artifact(self, path: Path, name: str, type: str) -> None:
        art = self._wandb.Artifact(f"{name}-{self.run.id}", type=type)
        path = Path(path)
        if path.is_dir():
            # The adapter and its small companions; merged models and GGUFs stay local (large).
            for p in sorted(path.iterdir()):
                if p.is_file():
                    art.add_file(str(p))
        else:
            art.add_file(str(path))
        self.run.log_artifact(art)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)
