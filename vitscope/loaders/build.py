"""The last step of every load: build the timm model from a recipe, then describe it as a :class:`Loaded`."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import VitscopeError
from ..spec import ModelSpec
from .describe import check_supported, is_cnn, make_cnn_spec, make_spec
from .recipe import VitRecipe
from .selfcheck import verify_check


@dataclass
class Loaded:
    """An opened model: the torch module, in eval mode, and what downstream code needs to know."""

    model: nn.Module
    spec: ModelSpec

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Loaded:
        self.model.to(device)
        return self


def build_model(recipe: VitRecipe, path: Path | None, hold: torch.dtype | None = None) -> nn.Module:
    """Create the timm model on the meta device and assign the weights (fast, no random init).

    The load is strict: a missing, unexpected or misshapen tensor, or a parameter or buffer left
    empty, is a one-line :class:`VitscopeError` naming the first few. ``hold``: a half dtype the Linear and
    Conv2d weights are held in, computed in float32 (loaders/held.py).
    """
    import timm

    kw = dict(recipe.kwargs)
    if recipe.norm_eps is not None:
        kw["norm_layer"] = partial(nn.LayerNorm, eps=recipe.norm_eps)
    try:
        with torch.device("meta"):
            model = timm.create_model(recipe.arch, pretrained=False, **kw)
    except (RuntimeError, ValueError, TypeError, AssertionError, KeyError) as e:
        raise VitscopeError(f"cannot build {recipe.arch} with {recipe.kwargs}: {e}", path) from None
    state_dict, stored, held_stored = _floating_as_float32(recipe, model, path, hold)
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    except RuntimeError as e:
        msg = str(e).split("\n")
        detail = next((m.strip() for m in msg if "size mismatch" in m), msg[0])
        raise VitscopeError(f"weights do not fit {recipe.what}: {detail[:300]}", path) from None
    if missing or unexpected:
        raise VitscopeError(
            f"weights do not fit {recipe.what}: missing {_few(missing)}; unexpected {_few(unexpected)}", path)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise VitscopeError(f"weights do not fill the model: {_few(left)} left empty", path)
    del state_dict
    if hold is not None:
        from .held import hold_and_say

        hold_and_say(model, hold, held_stored, recipe.notes)
    bad = [n for n, t in model.named_parameters() if not bool(torch.isfinite(t).all())]
    if bad:  # kept openable: a diverged run's checkpoint is worth looking at, but every screen must say so
        recipe.notes.append(f"NON-FINITE WEIGHTS: NaN or Inf in {_few(bad)}; outputs may be NaN")
    elif recipe.check:
        verify_check(model, recipe.check, path, half_weights=bool(stored) or hold is not None)
    return model.eval()


def _floating_as_float32(recipe: VitRecipe, model: nn.Module, path: Path | None,
                         hold: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], set[str], set[str]]:
    """The recipe's state dict with every floating tensor in float32, the dtype vitscope computes in on
    the CPU (half-precision weights, common on the Hugging Face hub, would otherwise meet float32
    inputs and fail), and the dtypes the file stored otherwise; integer or boolean tensors where the model
    has floating ones are refused. With ``hold``, the Linear and Conv2d weights are in ``hold`` instead, and the
    third set is the dtypes the file stored those in ("unknown" where that cannot be told)."""
    from .held import HELD_MODULES, dtype_name, stored_dtype

    floating = {n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_floating_point()}
    held = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, HELD_MODULES)} if hold else set()
    out: dict[str, torch.Tensor] = {}
    stored: set[str] = set()
    held_stored: set[str] = set()
    for k, v in recipe.state_dict.items():
        if k in floating and not v.is_floating_point():
            raise VitscopeError(f"weights hold {dtype_name(v.dtype)} values where {recipe.what} has "
                                f"floating-point ones ({k}); was the file quantised or written by another tool?", path)
        if k in held and v.is_floating_point():
            # held in ``hold``; where the file's dtype is unknown the note claims only the rounding bound, which
            # holds either way
            held_stored.add(stored_dtype(v, hold))
            v = v.to(hold)
        elif v.is_floating_point() and v.dtype != torch.float32:
            stored.add(stored_dtype(v))
            v = v.float()
        out[k] = v
    stored.discard("float32")
    if stored and hold is None:
        recipe.notes.append(f"weights stored as {', '.join(sorted(stored))}; computed in float32")
    return out, stored, held_stored


def _few(names: list[str]) -> str:
    names = list(names)
    return "none" if not names else ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")


def to_loaded(model: nn.Module, *, family: str, arch: str, kwargs: dict[str, Any], source: str,
             classes: list[str] | None, data_config: dict[str, Any] | None, random_weights: bool,
             notes: list[str] | None = None, allow_cnn: bool = False) -> Loaded:
    """Wrap a built model: a ViT vitscope can trace, or (with ``allow_cnn``) a CNN; else refuse it."""
    from timm.models.vision_transformer import VisionTransformer

    info: dict[str, Any] = dict(family=family, arch=arch, kwargs=kwargs, source=source, classes=classes,
                                data_config=data_config, random_weights=random_weights, notes=notes)
    from .held import dtype_name, held_dtype

    if allow_cnn and not isinstance(model, VisionTransformer) and is_cnn(model, data_config):
        loaded = Loaded(model.eval(), make_cnn_spec(model.eval(), **info))
    else:
        check_supported(model, source)
        loaded = Loaded(model.eval(), make_spec(model, **info))
    held = held_dtype(model)
    loaded.spec.weights_held = "" if held is None else dtype_name(held)
    return loaded


def load_recipe(recipe: VitRecipe, where: Path, classes: list[str] | None, allow_cnn: bool,
                hold: torch.dtype | None = None) -> Loaded:
    """Build a recipe's model and describe it; ``where`` is the file or directory the user named."""
    model = build_model(recipe, where, hold)
    loaded = to_loaded(model, family=recipe.family, arch=recipe.arch, kwargs=recipe.kwargs, source=str(where),
                       classes=classes or recipe.classes, data_config=recipe.data_config, random_weights=False,
                       notes=recipe.notes, allow_cnn=allow_cnn)
    loaded.spec.provenance = dict(recipe.provenance)
    return loaded
