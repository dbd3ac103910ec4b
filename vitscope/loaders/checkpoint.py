"""The vitscope checkpoint: one ``.safetensors`` file whose metadata key ``vitscope`` holds JSON.

``timm.create_model(meta["arch"], **meta["kwargs"])`` followed by ``load_state_dict`` rebuilds the
model, so anyone with timm can use a vitscope checkpoint without vitscope. Writing one
(:func:`save_checkpoint`), reading its metadata (:func:`read_meta`), and the ``vitscope`` family
that opens one (:data:`FAMILY`: the metadata is the recipe).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import VitscopeError
from .files import atomic_write_bytes
from .recipe import Family, LoadContext, LoadHints, StateDict, VitRecipe

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


def read_meta(raw: Mapping[str, str], path: Path) -> dict[str, Any]:
    """The ``vitscope`` metadata of a checkpoint, checked: format, arch and kwargs."""
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


def detect(sd: StateDict, ctx: LoadContext) -> bool:
    return "vitscope" in ctx.meta


def to_recipe(sd: StateDict, hints: LoadHints, path: Path, ctx: LoadContext) -> VitRecipe:
    """The metadata is the recipe: arch, kwargs, classes and preprocessing as trained."""
    import timm

    meta = read_meta(ctx.meta, path)
    if not timm.is_model(meta["arch"]):
        raise VitscopeError(f"checkpoint names an unknown timm arch {meta['arch']!r}", path)
    notes = [f"trained: {meta['train']}"] if meta.get("train") else []
    return VitRecipe(arch=meta["arch"], kwargs=dict(meta["kwargs"]), state_dict=sd, family="vitscope",
                     data_config=meta.get("data_config"), classes=meta.get("classes"), notes=notes,
                     label=f"a vitscope {meta['arch']} checkpoint",
                     provenance={"train": meta.get("train") or {}, "parent": meta.get("parent")})


FAMILY = Family(name="vitscope", layout="vitscope checkpoint", detect=detect, to_recipe=to_recipe)


def file_hash(path: str | Path) -> str:
    """sha256 of a file, the identity used for ``parent`` and sweep caches."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_hash(sd: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names and bytes (sweep caches key on it)."""
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
