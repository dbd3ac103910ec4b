"""Opening each kind of MODEL reference: read -> unwrap -> walk the registry -> build.

``open_file`` (a checkpoint or state dict file), ``open_hf_directory`` (a Hugging Face model
directory) and ``open_timm_name`` (``timm:NAME``, with or without ``--weights``) each read the
weights and what surrounds them into a :class:`~vitscope.loaders.recipe.LoadContext`, let the first
family that recognises the layout write a recipe, and build it (:func:`~vitscope.loaders.build.load_recipe`).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import VitscopeError
from . import hf
from .build import Loaded, load_recipe, to_loaded
from .files import config_beside, config_class_names, read_checkpoint, unwrap_state_dict
from .recipe import LoadContext, LoadHints, StateDict
from .registry import FILE_FAMILIES, HF_DIRECTORY_FAMILIES, TIMM_WEIGHT_FAMILIES, pick_family, tried


def _read_weights(path: Path, trust: bool, *, config: Mapping[str, Any] | None = None,
                  arch: str | None = None, hold: Any = None) -> tuple[StateDict, LoadContext]:
    """A weights file's state dict, and its context: metadata, wrapper keys, plus what the caller knows."""
    obj, meta = read_checkpoint(path, trust, hold)
    sd, extra = unwrap_state_dict(obj, path)
    return sd, LoadContext(meta=meta, extra=extra, config=config or {}, arch=arch)


def held(model: nn.Module, hints: LoadHints, notes: list[str]) -> nn.Module:
    """``model`` with its Linear/Conv2d weights held as ``hints.hold`` says (loaders/held.py), said in ``notes``."""
    if hints.hold is not None:
        from .held import hold_and_say

        hold_and_say(model, hints.hold, set(), notes)
    return model


def _pickled_vit(obj: Any) -> nn.Module | None:
    """A whole pickled timm VisionTransformer (``torch.save(model)``), which opens as it is."""
    if not isinstance(obj, nn.Module):
        return None
    from timm.models.vision_transformer import VisionTransformer

    return obj if isinstance(obj, VisionTransformer) else None


def open_file(path: Path, hints: LoadHints, classes: list[str] | None, trust: bool) -> Loaded:
    """A checkpoint or state dict file, with the config.json beside it if there is one."""
    obj, meta = read_checkpoint(path, trust, hints.hold)
    if (module := _pickled_vit(obj)) is not None:
        notes: list[str] = []
        return to_loaded(held(module.float().cpu(), hints, notes), family="timm", arch=type(module).__name__,
                         kwargs={}, source=str(path), classes=classes, data_config=None, random_weights=False,
                         notes=notes)
    sd, extra = unwrap_state_dict(obj, path)
    ctx = LoadContext(meta=meta, extra=extra, config=config_beside(path))
    family = pick_family(sd, ctx, FILE_FAMILIES, path,
                         f"unrecognised state dict layout (tried: {tried(FILE_FAMILIES)})")
    recipe = family.to_recipe(sd, hints.with_config(ctx.config, path), path, ctx)
    names = classes or recipe.classes or config_class_names(ctx.config, path.parent / "config.json")
    return load_recipe(recipe, path, names, hints.allow_cnn, hints.hold)


def open_hf_directory(path: Path, hints: LoadHints, classes: list[str] | None, trust: bool) -> Loaded:
    """A Hugging Face model directory (config.json, preprocessor_config.json, weights)."""
    config, weights = hf.read_directory(path)
    sd, ctx = _read_weights(weights, trust, config=config, hold=hints.hold)
    family = pick_family(sd, ctx, HF_DIRECTORY_FAMILIES, weights, "weights are not a Hugging Face ViT")
    recipe = family.to_recipe(sd, hints.with_config(config, path), weights, ctx)
    return load_recipe(recipe, path, classes, hints.allow_cnn, hints.hold)


def _timm_arch(name: str) -> str:
    import timm

    arch = name.split(".")[0]
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:5]
        raise VitscopeError(f"unknown timm model {name!r}" + (f" (close: {', '.join(close)})" if close else ""))
    return arch


def open_timm_name(name: str, weights: Path | None, pretrained: bool, hints: LoadHints,
                   classes: list[str] | None, trust: bool) -> Loaded:
    """``timm:NAME``: with ``--weights FILE`` in timm's ViT layout or the model's own; else timm's
    pretrained weights (``--pretrained``) or random ones (said loudly)."""
    arch = _timm_arch(name)
    if weights is None:
        return _create_timm(name, arch, pretrained, hints, classes)
    sd, ctx = _read_weights(weights, trust, arch=arch, hold=hints.hold)
    family = pick_family(sd, ctx, TIMM_WEIGHT_FAMILIES, weights,
                         f"--weights is not a state dict for timm:{arch} (tried: {tried(TIMM_WEIGHT_FAMILIES)})")
    recipe = family.to_recipe(sd, hints, weights, ctx)
    return load_recipe(recipe, weights, classes, hints.allow_cnn, hints.hold)


def _create_timm(name: str, arch: str, pretrained: bool, hints: LoadHints, classes: list[str] | None) -> Loaded:
    import timm

    source = f"timm:{name}"
    kwargs: dict[str, Any] = {"img_size": hints.img_size} if hints.img_size else {}
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (RuntimeError, OSError, ValueError, TypeError) as e:
        if pretrained and not isinstance(e, TypeError):
            raise VitscopeError(f"cannot get pretrained weights for {name} ({str(e).splitlines()[0][:200]}); "
                                "check the network or the Hugging Face cache, or pass --weights FILE",
                                source) from None
        raise VitscopeError(f"cannot create {name}: {e}", source) from None
    notes = [] if pretrained else ["RANDOM WEIGHTS: no --weights or --pretrained given; maps mean nothing"]
    return to_loaded(held(model, hints, notes), family="timm", arch=arch, kwargs=kwargs, source=source, classes=classes,
                    data_config=None, random_weights=not pretrained, notes=notes, allow_cnn=hints.allow_cnn)
