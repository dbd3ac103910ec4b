"""Opening models: ``load(ref)`` turns any supported MODEL reference into a :class:`Loaded`.

A MODEL reference is a vitscope checkpoint, a bare or wrapped state dict (timm, Hugging Face,
torchvision or hand-written layout), a Hugging Face model directory, or ``timm:NAME`` (with
``--weights FILE`` in timm's layout, or timm's own weights). Every ViT is rebuilt as a timm
VisionTransformer and described by a :class:`~vitscope.spec.ModelSpec`; with ``allow_cnn`` timm
CNNs open too (``spec.kind == "cnn"``).

How a MODEL argument flows, top-down (no module calls back up):

- ``load`` (here): flags -> :class:`LoadHints`; picks the opener for the kind of reference.
- ``sources``: ``open_file`` / ``open_hf_directory`` / ``open_timm_name`` read the weights
  (``files``) and what surrounds them into a :class:`LoadContext`, then walk the registry.
- ``registry``: the families in the order they are tried; the first whose ``detect`` matches
  writes a :class:`VitRecipe` (``checkpoint``, ``timm_vit``, ``hf``, ``torchvision_vit``,
  ``reference``, ``timm_arch``).
- ``build``: the recipe's timm model on the meta device, weights assigned strictly, then
  described (``describe``: a ViT's spec, or a CNN's) as a :class:`Loaded`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import VitscopeError
from .build import Loaded
from .checkpoint import FORMAT, file_hash, read_meta, save_checkpoint, state_dict_hash
from .describe import normalise_data_config
from .files import read_class_names
from .recipe import Family, LoadContext, LoadHints, VitRecipe, check_heads
from .registry import FILE_FAMILIES, LAYOUTS
from .sources import open_file, open_hf_directory, open_timm_name


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for ``--device``: auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise VitscopeError(f"unknown device {device!r} (use auto, cpu, cuda or mps)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VitscopeError(f"--device {device}: CUDA is not available on this machine")
    if device == "mps" and not _mps_available():
        raise VitscopeError("--device mps: MPS is not available on this machine")
    return torch.device(device)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def load(ref: str | Path, *, weights: str | Path | None = None, pretrained: bool = False,
         heads: int | None = None, img_size: int | tuple[int, int] | None = None,
         classes: str | Path | list[str] | None = None, trust_checkpoint: bool = False,
         device: str = "cpu", allow_cnn: bool = False, weight_dtype: str = "float32") -> Loaded:
    """Open a MODEL reference (see module docstring) as a timm ViT in eval mode.

    ``weight_dtype`` bfloat16 or float16 holds the Linear and Conv2d weights in half precision (half the
    memory), computed in float32 (loaders/held.py).

    With ``allow_cnn`` a vitscope checkpoint or ``timm:NAME`` of a CNN opens too (``spec.kind == "cnn"``):
    sweeps, finetuning and Grad-CAM comparisons use those.
    """
    from .held import HOLD_DTYPES

    if weight_dtype not in HOLD_DTYPES:
        raise VitscopeError(f"unknown weight dtype {weight_dtype!r} (use {', '.join(HOLD_DTYPES)})")
    hints = LoadHints(heads=heads, img_size=img_size, allow_cnn=allow_cnn, hold=HOLD_DTYPES[weight_dtype])
    class_names = _class_names(classes)
    ref = str(ref)
    if ref.startswith("timm:"):
        wpath = None if weights is None else Path(weights).expanduser()
        loaded = open_timm_name(ref[5:], wpath, pretrained, hints, class_names, trust_checkpoint)
    elif weights is not None:
        raise VitscopeError("--weights goes with timm:NAME; a file or directory MODEL carries its own weights")
    elif (path := Path(ref).expanduser()).is_dir():
        loaded = open_hf_directory(path, hints, class_names, trust_checkpoint)
    else:
        loaded = open_file(path, hints, class_names, trust_checkpoint)
    return loaded.to(resolve_device(device))


def _class_names(classes: str | Path | list[str] | None) -> list[str] | None:
    if classes is None or isinstance(classes, list):
        return classes
    return read_class_names(Path(classes))


__all__ = ["Loaded", "load", "resolve_device", "save_checkpoint", "FORMAT", "check_heads",
           "normalise_data_config", "read_meta", "file_hash", "state_dict_hash", "LoadHints", "LoadContext",
           "VitRecipe", "Family", "FILE_FAMILIES", "LAYOUTS"]
