"""Weights held in half precision, computed in float32 (``--weight-dtype bfloat16|float16``).

A ViT-L/14 holds 1.2 GB of float32 weights, almost all of them in its Linear and Conv2d layers. Held in
bfloat16 or float16 they take half that; each layer makes its float32 weight when it runs (one matrix at a
time: 16 MB at most for ViT-L) and computes in float32 as always. Activations, traces and every analysis
stay float32, so the only change against float32 weights is the weights' rounding: relative error at most
2^-8 per weight for bfloat16 (8 significant bits), 2^-11 for float16 (11). A file that stores its weights in
that precision (common on the Hugging Face hub) is computed exactly as with float32 weights: the rounding
happened when it was saved.

This uses :func:`torch.nn.utils.parametrize.register_parametrization`, PyTorch's way of computing a
parameter from a stored one on every access: ``module.weight`` reads as the float32 weight (hooks,
gradients and the analyses that read ``head.weight`` see float32), while the module holds the half one.
Norms, biases, LayerScale gammas and the position embedding (a few MB) stay float32.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

HOLD_DTYPES: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
HELD_MODULES = (nn.Linear, nn.Conv2d)


class AsFloat32(nn.Module):
    """The parametrization: the held weight, as float32 when read; a float32 weight assigned is held rounded."""

    def __init__(self, held: torch.dtype):
        super().__init__()
        self.held = held

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        out = w.float()
        made = getattr(_local, "made", None)
        if made is not None:  # inside remade_in_backward: remember which held weight this float32 one is
            made[out.untyped_storage().data_ptr()] = (weakref.ref(out), w)
        return out

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return w.to(self.held)


def dtype_name(dtype: torch.dtype) -> str:
    """"bfloat16" for torch.bfloat16: how notes, the spec and the CLI name a dtype."""
    return str(dtype).replace("torch.", "")


def is_held_weight(name: str, t: torch.Tensor) -> bool:
    """Whether a state dict entry is (almost surely) a Linear or Conv2d weight: what a half-precision hold
    converts while reading a file, before the model exists (:func:`hold_weights` decides on the model)."""
    return name.endswith("weight") and t.is_floating_point() and t.ndim >= 2


def held_copy(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``, remembering the dtype it was read in (:func:`stored_dtype`) for the note."""
    out = t.to(dtype)
    out.vitscope_stored_dtype = t.dtype
    return out


def stored_dtype(t: torch.Tensor, hold: torch.dtype | None = None) -> str:
    """The name of the dtype a weight was read in: its own, unless :func:`held_copy` converted it while reading.
    "unknown" for a tensor already in ``hold`` that does not say (a family rebuilt it after reading: a Hugging
    Face q, k, v concatenated), whose file may have stored it in any precision."""
    dtype = getattr(t, "vitscope_stored_dtype", None)
    if dtype is None:
        if hold is not None and t.dtype == hold:
            return "unknown"
        dtype = t.dtype
    return dtype_name(dtype)


def hold_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Hold every Linear and Conv2d weight of ``model`` in ``dtype``, read as float32. Returns the number of
    weights held. A weight that already arrived in ``dtype`` (converted while reading) is not copied."""
    held = 0
    for module in model.modules():
        if not isinstance(module, HELD_MODULES) or parametrize.is_parametrized(module, "weight"):
            continue
        w = module.weight
        if w is None or w.is_meta or not w.is_floating_point():
            continue
        if w.dtype != dtype:
            module.weight = nn.Parameter(w.detach().to(dtype), requires_grad=w.requires_grad)
            del w  # the float32 copy goes now: one layer's weight at a time, never all of them twice
        parametrize.register_parametrization(module, "weight", AsFloat32(dtype), unsafe=True)
        held += 1
    return held


def hold_and_say(model: nn.Module, dtype: torch.dtype, stored: set[str], notes: list[str]) -> None:
    """:func:`hold_weights`, and the note that says so (``stored``: the dtypes the file stored those weights in)."""
    if hold_weights(model, dtype):
        notes.append(held_note(dtype, stored))


def held_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype ``model``'s weights are held in, or None when they are held as they compute."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, AsFloat32):
                    return p.held
    return None


def held_note(dtype: torch.dtype, stored: set[str]) -> str:
    """The note of a model whose weights are held in ``dtype``; ``stored``: the dtypes the file stored them in."""
    name = dtype_name(dtype)
    exact = stored == {name}
    return (f"weights held in memory as {name} (--weight-dtype), computed in float32"
            + (": exactly as stored in the file" if exact
               else f": each weight rounded, relative error at most {UNIT_ROUNDOFF[dtype]:.2g}"))


_local = threading.local()


class _Held:
    """What a backward pass keeps instead of a float32 weight made from a held one: the held one, and how the
    saved tensor viewed the float32 copy (a Linear saves ``weight.t()``, a view)."""
    __slots__ = ("w", "size", "stride", "offset")

    def __init__(self, w: torch.Tensor, saved: torch.Tensor):
        self.w, self.size, self.stride, self.offset = w, saved.size(), saved.stride(), saved.storage_offset()

    def remake(self) -> torch.Tensor:
        return self.w.detach().float().as_strided(self.size, self.stride, self.offset)


@contextlib.contextmanager
def remade_in_backward() -> Iterator[None]:
    """Within this, a forward pass for a backward keeps each held weight as held and makes its float32 copy
    again when the backward needs it, one layer at a time. Without it, autograd saves every layer's float32
    weight until the backward ends: all of them at once, as if they were not held (ViT-L: +1.2 GB).
    Uses :func:`torch.autograd.graph.saved_tensors_hooks`; other saved tensors are kept as they are."""
    made: dict[int, tuple[weakref.ref, torch.Tensor]] = {}  # storage address of a float32 copy -> (it, held)

    def pack(t: torch.Tensor):
        if t.dtype != torch.float32 or not made:
            return t
        entry = made.get(t.untyped_storage().data_ptr())
        made_copy = entry[0]() if entry is not None else None  # alive: its storage is the one t views
        if made_copy is None or made_copy.untyped_storage().data_ptr() != t.untyped_storage().data_ptr():
            return t
        return _Held(entry[1], t)

    def unpack(p):
        return p.remake() if isinstance(p, _Held) else p

    before = getattr(_local, "made", None)
    _local.made = made
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        _local.made = before
