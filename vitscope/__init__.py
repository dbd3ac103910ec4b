"""vitscope: see how a Vision Transformer decides.

The public API is imported lazily so that ``import vitscope`` stays cheap (the TUI paints before
torch is imported).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load": "vitscope.loaders",
    "Loaded": "vitscope.loaders",
    "save_checkpoint": "vitscope.loaders",
    "trace": "vitscope.tracing",
    "trace_batch": "vitscope.tracing",
    "Trace": "vitscope.tracing",
    "ModelSpec": "vitscope.spec",
    "TokenLayout": "vitscope.spec",
    "VitscopeError": "vitscope.errors",
    "attention_map": "vitscope.analysis",
    "attention_rollout": "vitscope.analysis",
    "rollout_map": "vitscope.analysis",
    "head_statistics": "vitscope.analysis",
    "load_image": "vitscope.data.images",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'vitscope' has no attribute {name!r}")


__all__ = sorted(_API)
