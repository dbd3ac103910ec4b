"""The vitscope checkpoint: one ``.safetensors`` file whose metadata key ``vitscope`` holds JSON.

``timm.create_model(meta["arch"], **meta["kwargs"])`` followed by ``load_state_dict`` rebuilds the
model, so anyone with timm can use a vitscope checkpoint without vitscope. Writing one
(:func:`save_checkpoint`), reading its metadata (:func:`read_meta`), and the ``vitscope`` family
that opens one (:data:`FAMILY`: the metadata is the recipe).
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import VitscopeError
from .describe import MAX_SIDE, normalise_data_config
from .files import atomic_write_bytes
from .recipe import Family, LoadContext, LoadHints, StateDict, VitRecipe
from .selfcheck import model_check

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
    check = model_check(model)
    if check is not None:
        meta["check"] = check
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = save(sd, metadata={"vitscope": json.dumps(meta)})
    path = Path(path)
    atomic_write_bytes(path, data)
    return path


def read_meta(raw: Mapping[str, str], path: Path) -> dict[str, Any]:
    """The ``vitscope`` metadata of a checkpoint, checked field by field (:func:`check_meta`)."""
    try:
        meta = json.loads(raw["vitscope"])
    except (KeyError, TypeError, json.JSONDecodeError, RecursionError) as e:
        raise VitscopeError(f"vitscope metadata is not valid JSON ({_short(e)})", path) from None
    return check_meta(meta, path)


#: kwargs whose values vitscope checks (name -> (low, high)); others go to timm as they are, and
#: timm's own errors on them are caught at build time. The bounds keep a crafted file from asking
#: for absurd allocations (a 1e6-px image, 1e9 classes) before the weights could refuse it.
INT_KWARGS = {"embed_dim": (1, 1 << 16), "depth": (1, 1024), "num_heads": (1, 1024), "in_chans": (1, 64),
              "num_classes": (0, 1 << 20), "reg_tokens": (0, 1024)}
SIZE_KWARGS = {"img_size": (1, MAX_SIDE), "patch_size": (1, MAX_SIDE)}


def check_meta(meta: Any, path: Path) -> dict[str, Any]:
    """The metadata as a dict whose fields have the types vitscope relies on, or a one-line error
    naming the first field that is wrong (``format``, ``arch``, ``kwargs.NAME``, ``classes``,
    ``data_config``, ``parent``, ``train``, ``check``)."""
    def bad(field: str, what: str) -> VitscopeError:
        return VitscopeError(f"vitscope metadata: {field} {what}", path)

    if not isinstance(meta, dict):
        raise VitscopeError(f"vitscope metadata is {_kind(meta)}, expected a JSON object", path)
    if meta.get("format") != FORMAT:
        raise VitscopeError(f"unknown checkpoint format {meta.get('format')!r} (expected {FORMAT})", path)
    if not isinstance(meta.get("arch"), str) or not meta["arch"]:
        raise bad("'arch'", "lacks a timm model name" if "arch" not in meta else
                  f"is {_kind(meta['arch'])}, expected a timm model name")
    kwargs = meta.get("kwargs")
    if not isinstance(kwargs, dict):
        raise bad("'kwargs'", "is missing" if "kwargs" not in meta else f"is {_kind(kwargs)}, expected an object")
    for name, (lo, hi) in INT_KWARGS.items():
        if name in kwargs and not _int_in(kwargs[name], lo, hi):
            raise bad(f"kwargs.{name}", f"is {kwargs[name]!r}, expected an integer in {lo}..{hi}")
    for name, (lo, hi) in SIZE_KWARGS.items():
        v = kwargs.get(name)
        if v is not None and not (_int_in(v, lo, hi) or isinstance(v, list) and len(v) == 2
                                  and all(_int_in(x, lo, hi) for x in v)):
            raise bad(f"kwargs.{name}", f"is {v!r}, expected an integer or [h, w] in {lo}..{hi}")
    if "mlp_ratio" in kwargs and not (_number(kwargs["mlp_ratio"]) and 0 < kwargs["mlp_ratio"] <= 64):
        raise bad("kwargs.mlp_ratio", f"is {kwargs['mlp_ratio']!r}, expected a number in (0, 64]")
    classes = meta.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not all(isinstance(c, (str, int)) for c in classes):
            raise bad("'classes'", f"is {_kind(classes)}, expected a list of class names")
        meta["classes"] = [str(c) for c in classes]
    dc = meta.get("data_config")
    if dc is not None:
        meta["data_config"] = normalise_data_config(dc, path, field="vitscope metadata: data_config")
    if meta.get("parent") is not None and not isinstance(meta["parent"], str):
        raise bad("'parent'", f"is {_kind(meta['parent'])}, expected a sha256 hex string or null")
    for key in ("train", "check"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise bad(f"'{key}'", f"is {_kind(meta[key])}, expected an object or null")
    return meta


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_in(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _short(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def detect(sd: StateDict, ctx: LoadContext) -> bool:
    return "vitscope" in ctx.meta


def to_recipe(sd: StateDict, hints: LoadHints, path: Path, ctx: LoadContext) -> VitRecipe:
    """The metadata is the recipe: arch, kwargs, classes and preprocessing as trained."""
    import timm

    meta = read_meta(ctx.meta, path)
    if not timm.is_model(meta["arch"]):
        raise VitscopeError(f"checkpoint names an unknown timm arch {meta['arch']!r}", path)
    heads = meta["kwargs"].get("num_heads")
    if hints.heads and heads and hints.heads != heads:
        raise VitscopeError(f"{hints.heads_from} {hints.heads} disagrees with the checkpoint, whose metadata has "
                            f"num_heads {heads}; drop the flag", path)
    # JSON, as the files that carry the notes are: a reader can parse the training record back
    notes = [f"trained: {json.dumps(meta['train'], sort_keys=True, default=str)}"] if meta.get("train") else []
    return VitRecipe(arch=meta["arch"], kwargs=dict(meta["kwargs"]), state_dict=sd, family="vitscope",
                     data_config=meta.get("data_config"), classes=meta.get("classes"), notes=notes,
                     label=f"a vitscope {meta['arch']} checkpoint", check=meta.get("check"),
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
