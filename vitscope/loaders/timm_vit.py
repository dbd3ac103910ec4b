"""The timm ``VisionTransformer`` family: weights in timm's own key layout (``patch_embed.proj``, ``blocks.N``).

Every opened ViT runs as a timm ``VisionTransformer``; the other families convert their layouts to
this one, so there is one ViT implementation (timm's) and one trace path. The kwargs are read off
the tensors; the number of heads comes from the user, a config.json, qk-norm weights, or the timm
arch that ``timm:NAME`` or a timm training checkpoint names.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..errors import VitscopeError
from .describe import default_data_config, make_spec, normalise_data_config  # noqa: F401  (importable from here)
from .recipe import (BASE_ARCH, DISTILLED_ARCH, Family, LoadContext, LoadHints, StateDict, VitRecipe,  # noqa: F401
                     check_heads, infer_grid, one_or_pair, pair, square_grid)

MARK = "patch_embed.proj.weight"
GUESSED = ("preprocessing guessed: timm ViT defaults (mean/std 0.5, crop 0.9, bicubic); put "
           "mean/std/crop_pct in a config.json beside the file if the model used others")


def detect(sd: StateDict, ctx: LoadContext) -> bool:
    return MARK in sd


@lru_cache(maxsize=64)
def timm_vit_dims(arch: str) -> tuple[int, int, int] | None:
    """(heads, embed dim, depth) of a timm ViT arch, or None when timm does not know it as a ViT."""
    import timm

    if not timm.is_model(arch):
        return None
    try:
        with torch.device("meta"):
            m = timm.create_model(arch, pretrained=False)
        return int(m.blocks[0].attn.num_heads), int(m.embed_dim), len(m.blocks)
    except Exception:  # an arch timm knows but that is not a ViT: check_supported says so later
        return None


def timm_heads(arch: str) -> int | None:
    """The number of heads of a timm ViT arch, or None when timm does not know it as a ViT."""
    dims = timm_vit_dims(arch)
    return dims[0] if dims else None


def _arch(ctx: LoadContext) -> tuple[str | None, int | None]:
    """The timm arch to build and its heads: the one the user named, else a training checkpoint's
    when timm knows it as a ViT, else none (the base ViT arch, with the kwargs read off the weights)."""
    if ctx.arch:
        return ctx.arch, timm_heads(ctx.arch)
    named = ctx.checkpoint_arch
    heads = timm_heads(named) if named else None
    return (named, heads) if heads is not None else (None, None)


def check_arch_fits(arch: str, sd: StateDict, path: Path) -> None:
    """Weights named as a timm arch must have its width, since the arch's number of heads is what
    they get: a dim-64 state dict given as ``timm:vit_large_patch16_224`` would otherwise build as 16
    heads of 4 channels, without a word. (Depth and the rest are read off the weights.)"""
    dims = timm_vit_dims(arch)
    if dims is None:
        return
    heads, dim, _ = dims
    w_dim = int(sd[MARK].shape[0])
    if w_dim != dim:
        raise VitscopeError(
            f"the weights have dim {w_dim} but timm's {arch} has dim {dim} ({heads} heads); name the arch "
            "they were trained as, or open the file on its own (with --heads N)", path)


def _block_count(sd: StateDict, pattern: str) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


def _pos_kwargs(sd: StateDict, n_prefix: int, patch: tuple[int, int], hints: LoadHints,
                path: Path) -> dict[str, Any]:
    """img_size, and whether the prefix tokens have position embeddings, from ``pos_embed``'s length."""
    if "pos_embed" not in sd:
        return {"pos_embed": "none", "img_size": hints.img_hw or (224, 224)}
    n_pos = sd["pos_embed"].shape[1]
    prefixed = n_pos - n_prefix > 0 and square_grid(n_pos - n_prefix) is not None or hints.img_size
    num_patch_pos = n_pos - n_prefix if prefixed else n_pos
    out: dict[str, Any] = {"img_size": infer_grid(num_patch_pos, patch, hints, path)}
    if num_patch_pos == n_pos and n_prefix:
        out["no_embed_class"] = True
    return out


def _pool_kwargs(sd: StateDict, has_cls: bool) -> dict[str, Any]:
    if "attn_pool.latent" in sd:
        return {"global_pool": "map"}
    if "fc_norm.weight" in sd or not has_cls:
        return {"global_pool": "avg", "fc_norm": "fc_norm.weight" in sd}
    return {}


def recipe_from_timm_state_dict(sd: StateDict, hints: LoadHints, path: Path, arch: str | None = None) -> VitRecipe:
    """Infer timm VisionTransformer kwargs from a timm-layout state dict."""
    w = sd[MARK]
    dim, in_chans, ph, pw = w.shape
    depth = _block_count(sd, r"blocks\.(\d+)\.")
    if depth == 0:
        raise VitscopeError("no transformer blocks (blocks.N.*) in the state dict", path)
    has_cls, has_dist = "cls_token" in sd, "dist_token" in sd
    n_reg = sd["reg_token"].shape[1] if "reg_token" in sd else 0
    heads = hints.heads
    if "blocks.0.attn.q_norm.weight" in sd:  # qk-norm weights have the head dim: heads are known
        heads = heads or dim // sd["blocks.0.attn.q_norm.weight"].shape[0]
    if not heads:
        raise VitscopeError(
            f"the number of attention heads is not stored in the weights (dim {dim}): pass --heads N "
            "or put a config.json with num_heads beside the file", path)
    check_heads(dim, heads, path)
    kwargs: dict[str, Any] = dict(
        embed_dim=dim, depth=depth, num_heads=heads, patch_size=(ph, pw), in_chans=in_chans,
        mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        qk_norm="blocks.0.attn.q_norm.weight" in sd,
        class_token=has_cls, reg_tokens=n_reg,
        num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0,
        pre_norm="norm_pre.weight" in sd,
        final_norm="norm.weight" in sd or "fc_norm.weight" in sd,
    )
    if "blocks.0.ls1.gamma" in sd:
        kwargs["init_values"] = 1e-5  # any value: the weights overwrite it
    kwargs.update(_pool_kwargs(sd, has_cls))
    kwargs.update(_pos_kwargs(sd, int(has_cls) + int(has_dist) + n_reg, (ph, pw), hints, path))
    kwargs["img_size"] = one_or_pair(kwargs["img_size"])
    kwargs["patch_size"] = one_or_pair((ph, pw))
    arch = arch or (DISTILLED_ARCH if has_dist else BASE_ARCH)
    return VitRecipe(arch=arch, kwargs=kwargs, state_dict=sd, family="timm", norm_eps=hints.layer_norm_eps)


def from_original_dinov2(sd: StateDict) -> StateDict:
    """Facebook's DINOv2 checkpoints (``dinov2_vits14_pretrain.pth``) in timm's layout, as timm converts
    them: no ``mask_token`` (used only in training); registers become ``reg_token`` with the CLS
    position folded into ``cls_token`` (timm's no_embed_class layout)."""
    if "mask_token" not in sd and "register_tokens" not in sd:
        return sd
    out = {k: v for k, v in sd.items() if k != "mask_token"}
    if "register_tokens" in out:
        pos = out["pos_embed"]
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    return out


def to_recipe(sd: StateDict, hints: LoadHints, path: Path, ctx: LoadContext) -> VitRecipe:
    arch, arch_heads = _arch(ctx)
    if arch is not None:
        check_arch_fits(arch, sd, path)
    recipe = recipe_from_timm_state_dict(from_original_dinov2(sd), hints.or_heads(arch_heads, f"timm's {arch}"),
                                         path, arch=arch)
    config = ctx.config
    if config.get("mean") and config.get("std"):
        recipe.data_config = {"input_size": (recipe.kwargs["in_chans"], *pair(recipe.kwargs["img_size"])),
                              "mean": config["mean"], "std": config["std"],
                              "interpolation": config.get("interpolation", "bicubic"),
                              "crop_pct": config.get("crop_pct", 1.0)}
    elif arch is None:
        recipe.notes.append(GUESSED)
    return recipe


FAMILY = Family(name="timm", layout="timm VisionTransformer", detect=detect, to_recipe=to_recipe)
