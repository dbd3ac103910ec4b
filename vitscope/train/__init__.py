"""Training: presets, a Trainer that yields events, finetuning, DDP through torchrun."""
from .presets import PRESETS, build_model
from .trainer import Event, TrainConfig, Trainer

__all__ = ["PRESETS", "build_model", "Event", "TrainConfig", "Trainer"]
