"""The vitscope checkpoint: one ``.safetensors`` file whose metadata key ``vitscope`` holds JSON.

``timm.create_model(meta["arch"], **meta["kwargs"])`` followed by ``load_state_dict`` rebuilds the
model, so anyone with timm can use a vitscope checkpoint without vitscope.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import VitscopeError
from .files import atomic_write_bytes

FORMAT = "vitscope/1"


def save_checkpoint(path: str | Path, model: nn.Module, *, arch: str, kwargs: dict[str, Any],
                    classes: list[str], data_config: dict[str, Any], parent: str | None = None,
                    train: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the model's weights and how to rebuild it, atomically."""
    from safetensors.torch import save

    meta = {"format": FORMAT, "arch": arch, "kwargs": kwargs, "classes": list(classes),
            "data_config": data_config, "parent": parent, "train": train or {}}
    if extra:
        meta.update(extra)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = save(sd, metadata={"vitscope": json.dumps(meta)})
    path = Path(path)
    atomic_write_bytes(path, data)
    return path


def read_meta(raw: dict[str, str], path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(raw["vitscope"])
    except (KeyError, json.JSONDecodeError) as e:
        raise VitscopeError(f"vitscope metadata is not valid JSON ({e})", path) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise VitscopeError(f"unknown checkpoint format {meta.get('format')!r} (expected {FORMAT})", path)
    for key in ("arch", "kwargs"):
        if key not in meta:
            raise VitscopeError(f"vitscope metadata lacks {key!r}", path)
    return meta


def file_hash(path: str | Path) -> str:
    """sha256 of a file, the identity used for ``parent`` and sweep caches."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_hash(sd: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
