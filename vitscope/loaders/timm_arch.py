"""The timm-arch family: weights in the own layout of a timm model that is named, not inferred.

``timm:resnet18 --weights FILE`` (or a timm training checkpoint whose ``arch`` is a CNN) opens as
``timm.create_model(arch, num_classes=<rows of the head weight>, in_chans=<channels of the first conv>)``
with a strict load: other constructor arguments (widths, depths) are the arch's defaults, so
weights trained with others do not fit, and say so. Whether the built model may open (a CNN, with
``allow_cnn``) is decided after the build, like for every other family.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .describe import timm_data_config
from .recipe import Family, LoadContext, LoadHints, StateDict, VitRecipe

LAYOUT = "the timm model named by timm:NAME or the checkpoint's arch"


def _arch(ctx: LoadContext) -> str | None:
    import timm

    arch = ctx.arch or ctx.checkpoint_arch
    return arch if arch and timm.is_model(arch) else None


def _pretrained_cfg(arch: str) -> dict[str, Any]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    return cfg.to_dict() if cfg is not None else {}


def _cfg_keys(arch: str) -> tuple[str | None, str | None]:
    """The first conv and the classifier module names timm records for the arch."""
    cfg = _pretrained_cfg(arch)
    first, head = cfg.get("first_conv"), cfg.get("classifier")
    return (first if isinstance(first, str) else None), (head if isinstance(head, str) else None)


def detect(sd: StateDict, ctx: LoadContext) -> bool:
    arch = _arch(ctx)
    if arch is None:
        return False
    first, _ = _cfg_keys(arch)
    return first is not None and f"{first}.weight" in sd and sd[f"{first}.weight"].ndim == 4


def to_recipe(sd: StateDict, hints: LoadHints, path: Path, ctx: LoadContext) -> VitRecipe:
    arch = _arch(ctx)
    assert arch is not None
    first, head = _cfg_keys(arch)
    in_chans = int(sd[f"{first}.weight"].shape[1])
    head_w = sd.get(f"{head}.weight") if head else None
    num_classes = int(head_w.shape[0]) if head_w is not None else 0
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans}
    data_config = timm_data_config(_pretrained_cfg(arch), in_chans, hints.img_hw)
    return VitRecipe(arch=arch, kwargs=kwargs, state_dict=sd, family="timm", data_config=data_config,
                     label=f"timm's {arch} (num_classes={num_classes}, in_chans={in_chans}, other arguments "
                           "at the arch's defaults)")


FAMILY = Family(name="timm-arch", layout=LAYOUT, detect=detect, to_recipe=to_recipe)
