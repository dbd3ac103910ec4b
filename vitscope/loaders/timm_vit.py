"""Every opened ViT runs as a timm ``VisionTransformer``: building one, and reading timm's layout.

Other families (Hugging Face, torchvision, hand-written) are converted to a :class:`VitRecipe` —
timm kwargs plus a state dict in timm's key layout — so there is one ViT implementation (timm's)
and one trace path.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import VitscopeError
from ..spec import ModelSpec, TokenLayout

BASE_ARCH = "vit_base_patch16_224"
DISTILLED_ARCH = "deit_base_distilled_patch16_224"


@dataclass
class VitRecipe:
    """How to rebuild a ViT with timm: ``timm.create_model(arch, **kwargs)`` then load ``state_dict``."""

    arch: str
    kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    family: str
    norm_eps: float | None = None  # LayerNorm eps when it differs from timm's 1e-6
    data_config: dict[str, Any] | None = None
    classes: list[str] | None = None
    notes: list[str] = field(default_factory=list)


def _square_grid(n: int) -> int | None:
    r = math.isqrt(n)
    return r if r * r == n else None


def _block_count(sd: dict[str, torch.Tensor], pattern: str) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


def infer_grid(num_pos: int, patch: tuple[int, int], hints: dict[str, Any], path: Path) -> tuple[int, int]:
    """Image size from the number of patch positions; asks for --img-size when not square."""
    if hints.get("img_size"):
        s = hints["img_size"]
        h, w = (s, s) if isinstance(s, int) else tuple(s)
        if (h // patch[0]) * (w // patch[1]) != num_pos:
            raise VitscopeError(
                f"--img-size {h}x{w} gives {(h // patch[0]) * (w // patch[1])} patches but the position "
                f"embedding has {num_pos}", path)
        return h, w
    side = _square_grid(num_pos)
    if side is None:
        raise VitscopeError(
            f"the position embedding has {num_pos} patch positions, not a square grid: "
            "pass --img-size HxW", path)
    return side * patch[0], side * patch[1]


def recipe_from_timm_state_dict(sd: dict[str, torch.Tensor], hints: dict[str, Any], path: Path,
                                arch: str | None = None) -> VitRecipe:
    """Infer timm VisionTransformer kwargs from a timm-layout state dict."""
    w = sd["patch_embed.proj.weight"]
    dim, in_chans, ph, pw = w.shape
    depth = _block_count(sd, r"blocks\.(\d+)\.")
    if depth == 0:
        raise VitscopeError("no transformer blocks (blocks.N.*) in the state dict", path)
    has_cls = "cls_token" in sd
    has_dist = "dist_token" in sd
    n_reg = sd["reg_token"].shape[1] if "reg_token" in sd else 0
    n_prefix = int(has_cls) + int(has_dist) + n_reg
    heads = hints.get("heads")
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
    if "attn_pool.latent" in sd:
        kwargs["global_pool"] = "map"
    elif "fc_norm.weight" in sd or not has_cls:
        kwargs["global_pool"] = "avg"
        kwargs["fc_norm"] = "fc_norm.weight" in sd
    if "pos_embed" in sd:
        n_pos = sd["pos_embed"].shape[1]
        if n_pos - n_prefix > 0 and _square_grid(n_pos - n_prefix) is not None or hints.get("img_size"):
            num_patch_pos = n_pos - n_prefix
        else:
            num_patch_pos = n_pos
        if num_patch_pos == n_pos and n_prefix:
            kwargs["no_embed_class"] = True
        kwargs["img_size"] = infer_grid(num_patch_pos, (ph, pw), hints, path)
    else:
        kwargs["pos_embed"] = "none"
        kwargs["img_size"] = hints.get("img_size") or 224
    if kwargs["img_size"][0] == kwargs["img_size"][1]:
        kwargs["img_size"] = kwargs["img_size"][0]
    if (ph, pw)[0] == (ph, pw)[1]:
        kwargs["patch_size"] = ph
    arch = arch or (DISTILLED_ARCH if has_dist else BASE_ARCH)
    return VitRecipe(arch=arch, kwargs=kwargs, state_dict=sd, family="timm",
                     norm_eps=hints.get("layer_norm_eps"))


def check_heads(dim: int, heads: int, path: Path | None) -> None:
    if heads <= 0 or dim % heads:
        raise VitscopeError(f"{heads} heads do not divide the embedding dim {dim}", path)


def build_vit(recipe: VitRecipe, path: Path | None) -> nn.Module:
    """Create the timm model on the meta device and assign the weights (fast, no random init)."""
    import timm

    kw = dict(recipe.kwargs)
    if recipe.norm_eps is not None:
        kw["norm_layer"] = partial(nn.LayerNorm, eps=recipe.norm_eps)
    try:
        with torch.device("meta"):
            model = timm.create_model(recipe.arch, pretrained=False, **kw)
    except (RuntimeError, ValueError, TypeError, AssertionError, KeyError) as e:
        raise VitscopeError(f"cannot build {recipe.arch} with {recipe.kwargs}: {e}", path) from None
    try:
        missing, unexpected = model.load_state_dict(recipe.state_dict, strict=False, assign=True)
    except RuntimeError as e:
        msg = str(e).split("\n")
        detail = next((m.strip() for m in msg if "size mismatch" in m), msg[0])
        raise VitscopeError(f"weights do not fit a {recipe.family} ViT: {detail[:300]}", path) from None
    if missing or unexpected:
        raise VitscopeError(
            f"weights do not fit a {recipe.family} ViT: missing {_few(missing)}; unexpected {_few(unexpected)}",
            path)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise VitscopeError(f"weights do not fill the model: {_few(left)} left empty", path)
    return model.eval()


def _few(names: list[str]) -> str:
    names = list(names)
    return "none" if not names else ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")


def check_supported(model: nn.Module, source: str) -> None:
    """vitscope traces timm VisionTransformers with standard pre-norm blocks and timm Attention."""
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    supported = ("timm VisionTransformer family (ViT, DeiT incl. distilled, ViT with registers, "
                 "avg/map pooling), Hugging Face ViT, torchvision vit_*, hand-written ViTs with the "
                 "reference layout")
    if not isinstance(model, VisionTransformer):
        raise VitscopeError(f"{type(model).__name__} is not supported yet; vitscope opens the {supported}",
                            source)
    for blk in model.blocks:
        if type(blk) is not Block or type(blk.attn) is not Attention or blk.attn.gate is not None:
            raise VitscopeError(
                f"blocks of type {type(blk).__name__} / {type(getattr(blk, 'attn', None)).__name__} are not "
                f"supported yet; vitscope opens the {supported}", source)


def model_layout(model: nn.Module) -> TokenLayout:
    names: list[str] = []
    if getattr(model, "cls_token", None) is not None:
        names.append("cls")
    if getattr(model, "dist_token", None) is not None:
        names.append("dist")
    names += [f"reg{i}" for i in range(getattr(model, "num_reg_tokens", 0) or 0)]
    assert len(names) == model.num_prefix_tokens, (names, model.num_prefix_tokens)
    grid = tuple(int(g) for g in model.patch_embed.grid_size)
    return TokenLayout(prefix_names=tuple(names), grid=grid)  # type: ignore[arg-type]


def default_data_config(model: nn.Module) -> dict[str, Any]:
    """timm's data config for the model, with the input size the model was built for."""
    from timm.data import resolve_data_config

    cfg = dict(resolve_data_config({}, model=model))
    c = model.in_chans
    h, w = (int(s) for s in model.patch_embed.img_size)
    cfg["input_size"] = (c, h, w)
    for k in ("mean", "std"):
        v = tuple(float(x) for x in cfg[k])
        cfg[k] = v[:c] if len(v) >= c else v * c
    return normalise_data_config(cfg)


def normalise_data_config(cfg: dict[str, Any]) -> dict[str, Any]:
    out = {
        "input_size": [int(x) for x in cfg["input_size"]],
        "mean": [float(x) for x in cfg["mean"]],
        "std": [float(x) for x in cfg["std"]],
        "interpolation": str(cfg.get("interpolation", "bilinear")),
        "crop_pct": float(cfg.get("crop_pct", 1.0)),
    }
    if cfg.get("crop_mode"):
        out["crop_mode"] = cfg["crop_mode"]
    return out


def imagenet_class_names(model: nn.Module) -> list[str] | None:
    """ImageNet label descriptions shipped with timm, when the head has an ImageNet size."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if not subset:
            return None
        return [d.split(",")[0].strip() for d in ImageNetInfo(subset).label_descriptions()]
    except Exception:  # label files are optional data; fall back to numbered classes
        return None


def make_spec(model: nn.Module, *, family: str, arch: str, kwargs: dict[str, Any], source: str,
              classes: list[str] | None, data_config: dict[str, Any] | None, random_weights: bool,
              notes: list[str] | None = None) -> ModelSpec:
    layout = model_layout(model)
    blk0 = model.blocks[0]
    n_cls = model.num_classes
    if classes is not None and n_cls and len(classes) != n_cls:
        raise VitscopeError(f"{len(classes)} class names given but the head has {n_cls} outputs", source)
    if classes is None:
        classes = (imagenet_class_names(model) if n_cls in (1000, 11821, 21841, 21843) else None) \
            or [f"class {i}" for i in range(n_cls)]
    pooling = "map" if getattr(model, "attn_pool", None) is not None else (model.global_pool or "none")
    if layout.prefix_names[:2] == ("cls", "dist"):
        pooling = "token+dist"
    return ModelSpec(
        family=family, arch=arch,
        num_layers=len(model.blocks), num_heads=blk0.attn.num_heads, embed_dim=model.embed_dim,
        patch_size=tuple(int(p) for p in model.patch_embed.patch_size),  # type: ignore[arg-type]
        img_size=tuple(int(s) for s in model.patch_embed.img_size),  # type: ignore[arg-type]
        in_chans=model.in_chans, layout=layout, pooling=pooling, classes=list(classes),
        data_config=normalise_data_config(data_config) if data_config else default_data_config(model),
        random_weights=random_weights, source=source,
        num_params=sum(p.numel() for p in model.parameters()),
        layer_scale=not isinstance(blk0.ls1, nn.Identity), kwargs=dict(kwargs), notes=list(notes or []),
    )


def make_cnn_spec(model: nn.Module, *, arch: str, kwargs: dict[str, Any], source: str, classes: list[str] | None,
                  data_config: dict[str, Any] | None, random_weights: bool) -> ModelSpec:
    """A spec for a timm CNN: its last feature map's grid stands in for the patch grid."""
    cfg = data_config or dict(__import__("timm").data.resolve_data_config({}, model=model))
    c, h, w = (int(v) for v in cfg["input_size"])
    with torch.no_grad():
        was = model.training
        model.eval()
        feat = model.forward_features(torch.zeros(1, c, h, w, device=next(model.parameters()).device))
        model.train(was)
    n_cls = model.num_classes
    return ModelSpec(
        family="vitscope" if source.endswith(".safetensors") else "timm", arch=arch, num_layers=0, num_heads=0,
        embed_dim=int(feat.shape[1]), patch_size=(h // feat.shape[2], w // feat.shape[3]), img_size=(h, w),
        in_chans=c, layout=TokenLayout(prefix_names=(), grid=(int(feat.shape[2]), int(feat.shape[3]))),
        pooling="avg", classes=list(classes or [f"class {i}" for i in range(n_cls)]),
        data_config=normalise_data_config(cfg), random_weights=random_weights, source=source,
        num_params=sum(p.numel() for p in model.parameters()), kwargs=dict(kwargs), kind="cnn")
