"""The registry of families: which weight layouts vitscope recognises, in the order it tries them.

Every family is a :class:`~vitscope.loaders.recipe.Family` (``name``, ``layout``, ``detect(sd, ctx)``,
``to_recipe(sd, hints, path, ctx)``); the first whose ``detect`` says yes converts the state dict.
A family may recognise a layout only to refuse it with a reason (:data:`HIERARCHICAL`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import VitscopeError
from . import checkpoint, hf, reference, timm_arch, timm_vit, torchvision_vit
from .recipe import Family, LoadContext, LoadHints, StateDict, VitRecipe

#: The ViT layouts, as messages name them.
VIT_FAMILIES: tuple[Family, ...] = (checkpoint.FAMILY, timm_vit.FAMILY, hf.FAMILY, torchvision_vit.FAMILY,
                                    reference.FAMILY)
LAYOUTS: tuple[str, ...] = tuple(f.layout for f in VIT_FAMILIES)


def _is_hierarchical(sd: StateDict, ctx: LoadContext) -> bool:
    return any(k.startswith("layers.") and ".blocks." in k for k in sd) or any("relative_position" in k for k in sd)


def _refuse_hierarchical(sd: StateDict, hints: LoadHints, path: Path, ctx: LoadContext) -> VitRecipe:
    raise VitscopeError("looks like a Swin-style or other hierarchical model, which is not supported yet; "
                        f"vitscope opens plain ViTs ({'; '.join(LAYOUTS)})", path)


HIERARCHICAL = Family(name="hierarchical", layout="", detect=_is_hierarchical, to_recipe=_refuse_hierarchical)

#: A checkpoint file or a bare / wrapped state dict (``vitscope.load(PATH)``).
FILE_FAMILIES: tuple[Family, ...] = (checkpoint.FAMILY, HIERARCHICAL, timm_vit.FAMILY, hf.FAMILY,
                                     torchvision_vit.FAMILY, reference.FAMILY, timm_arch.FAMILY)
#: ``timm:NAME --weights FILE``: timm's ViT layout, or the named model's own layout.
TIMM_WEIGHT_FAMILIES: tuple[Family, ...] = (timm_vit.FAMILY, timm_arch.FAMILY)
#: The weights file of a Hugging Face model directory.
HF_DIRECTORY_FAMILIES: tuple[Family, ...] = (hf.FAMILY,)


def tried(families: Sequence[Family]) -> str:
    """The layouts of ``families``, for a "tried: ..." message."""
    return "; ".join(f.layout for f in families if f.layout)


def pick_family(sd: StateDict, ctx: LoadContext, families: Sequence[Family], path: Path, refusal: str) -> Family:
    """The first family that recognises the state dict; else ``refusal`` (with the first keys) as an error."""
    for family in families:
        if family.detect(sd, ctx):
            return family
    raise VitscopeError(f"{refusal}; first keys: {', '.join(list(sd)[:4])}", path)
