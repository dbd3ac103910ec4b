"""Training: presets, a Trainer that yields events, finetuning, DDP through torchrun; the run directory's
files (runfiles) and a monitor that follows a run from another process (monitor, torch-free)."""
from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "build_model", "Event", "TrainConfig", "Trainer"]


def __getattr__(name: str) -> Any:  # lazy: the training screen imports the monitor without torch
    if name in ("PRESETS", "build_model"):
        from . import presets

        return getattr(presets, name)
    if name in ("Event", "TrainConfig", "Trainer"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
