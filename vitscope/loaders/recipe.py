"""What every family receives and what it returns: the typed inputs and the :class:`VitRecipe`.

A *family* recognises one weight layout (timm, Hugging Face, torchvision, hand-written, vitscope
checkpoint, a timm model in its own layout) and turns a state dict in that layout into a recipe:
timm ``create_model`` arguments plus a state dict in the timm model's own key layout. All families
share one signature (see :class:`Family`); ``registry.py`` lists them in the order they are tried.

This module is the bottom layer of the package: the families and the build step import it, it
imports nothing else from ``vitscope.loaders``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import VitscopeError

StateDict = dict[str, torch.Tensor]
ImgSize = int | tuple[int, int]

BASE_ARCH = "vit_base_patch16_224"
DISTILLED_ARCH = "deit_base_distilled_patch16_224"


@dataclass
class VitRecipe:
    """How to rebuild a model with timm: ``timm.create_model(arch, **kwargs)`` then load ``state_dict``.

    Most recipes are ViTs; the ``timm-arch`` family gives recipes for other timm models (CNNs), whose
    ``label`` then names the model in error messages.
    """

    arch: str
    kwargs: dict[str, Any]
    state_dict: StateDict
    family: str  # ModelSpec.family of the opened model
    norm_eps: float | None = None  # LayerNorm eps when it differs from timm's 1e-6
    data_config: dict[str, Any] | None = None
    classes: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    label: str | None = None  # what "weights do not fit ..." names; default "a <family> ViT"
    provenance: dict[str, Any] = field(default_factory=dict)  # ModelSpec.provenance: training record, parent
    check: dict[str, Any] | None = None  # a vitscope checkpoint's self-check (selfcheck.py), verified after the build

    @property
    def what(self) -> str:
        return self.label or f"a {self.family} ViT"


@dataclass(frozen=True)
class LoadHints:
    """What the user (flags) or a config.json says about a model that its weights cannot say."""

    heads: int | None = None
    img_size: ImgSize | None = None
    layer_norm_eps: float | None = None
    allow_cnn: bool = False
    heads_from: str = "--heads"  # who said how many heads, for messages when the weights disagree
    hold: Any = None  # a torch dtype: Linear/Conv2d weights held in it, computed in float32 (loaders/held.py)

    @property
    def img_hw(self) -> tuple[int, int] | None:
        """``img_size`` as (height, width), or None."""
        return None if self.img_size is None else pair(self.img_size)

    def or_heads(self, heads: int | None, source: str = "") -> LoadHints:
        """These hints, with ``heads`` filled in when the user gave none; when the user gave another
        number than ``source`` (a timm arch, a checkpoint's metadata) says, a one-line error."""
        if self.heads and heads and self.heads != heads:
            raise VitscopeError(f"{self.heads_from} {self.heads} disagrees with {source or 'the model'}, which has "
                                f"{heads} heads; drop the flag")
        return self if self.heads or not heads else replace(self, heads=int(heads), heads_from=source)

    def with_config(self, config: Mapping[str, Any], where: Path | None = None) -> LoadHints:
        """Fill what the user did not give from a config.json (timm-style or Hugging Face keys)."""
        heads = config.get("num_heads") or config.get("num_attention_heads") or config.get("heads")
        size = config.get("img_size") or config.get("image_size")
        eps = config.get("layer_norm_eps")
        try:
            config_heads = int(heads) if heads else None
            hints = LoadHints(
                heads=self.heads or config_heads,
                img_size=self.img_size or (_img_size(size) if size else None),
                layer_norm_eps=self.layer_norm_eps or (float(eps) if eps else None),
                allow_cnn=self.allow_cnn, hold=self.hold,
                heads_from=self.heads_from if self.heads else "config.json's num_heads")
        except (TypeError, ValueError, OverflowError):
            raise VitscopeError("config.json: num_heads, img_size and layer_norm_eps must be numbers",
                                where) from None
        if self.heads and config_heads and self.heads != config_heads:
            raise VitscopeError(f"{self.heads_from} {self.heads} disagrees with config.json's num_heads "
                                f"{config_heads}; drop the flag or fix the file", where)
        return hints


def _img_size(v: Any) -> ImgSize:
    if isinstance(v, (list, tuple)):
        h, w = (int(x) for x in v)
        return (h, w)
    return int(v)


@dataclass(frozen=True)
class LoadContext:
    """Where the state dict came from: what a family may look at besides the tensors."""

    meta: Mapping[str, str] = field(default_factory=dict)  # a .safetensors file's metadata header
    extra: Mapping[str, Any] = field(default_factory=dict)  # the wrapper's other keys (epoch, arch, args)
    config: Mapping[str, Any] = field(default_factory=dict)  # config.json beside the file or in the HF dir
    arch: str | None = None  # the timm arch the user named (timm:NAME --weights FILE)

    @property
    def checkpoint_arch(self) -> str | None:
        """The arch a training checkpoint names (timm's train.py stores ``arch``)."""
        a = self.extra.get("arch")
        return a if isinstance(a, str) and a else None


@dataclass(frozen=True)
class Family:
    """One weight layout: ``detect`` recognises it, ``to_recipe`` converts it (or refuses, with a reason)."""

    name: str
    layout: str  # how "tried: ..." messages name the layout
    detect: Callable[[StateDict, LoadContext], bool]
    to_recipe: Callable[[StateDict, LoadHints, Path, LoadContext], VitRecipe]


def pair(s: ImgSize | list[int]) -> tuple[int, int]:
    return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))


def square_grid(n: int) -> int | None:
    r = math.isqrt(n)
    return r if r * r == n else None


def check_heads(dim: int, heads: int, path: Path | None) -> None:
    if heads <= 0 or dim % heads:
        raise VitscopeError(f"{heads} heads do not divide the embedding dim {dim}", path)


def infer_grid(num_pos: int, patch: tuple[int, int], hints: LoadHints, path: Path) -> tuple[int, int]:
    """Image size from the number of patch positions; asks for --img-size when not square."""
    if hints.img_hw:
        h, w = hints.img_hw
        if (h // patch[0]) * (w // patch[1]) != num_pos:
            raise VitscopeError(
                f"--img-size {h}x{w} gives {(h // patch[0]) * (w // patch[1])} patches but the position "
                f"embedding has {num_pos}", path)
        return h, w
    side = square_grid(num_pos)
    if side is None:
        raise VitscopeError(
            f"the position embedding has {num_pos} patch positions, not a square grid: "
            "pass --img-size HxW", path)
    return side * patch[0], side * patch[1]


def one_or_pair(hw: tuple[int, int]) -> ImgSize:
    """timm kwargs style: an int for a square size or patch, else (h, w)."""
    return hw[0] if hw[0] == hw[1] else hw
