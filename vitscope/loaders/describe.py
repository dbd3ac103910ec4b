"""Describing a built model: the :class:`~vitscope.spec.ModelSpec` of a timm ViT or of a timm CNN.

Also the checks that decide which it is: :func:`check_supported` (a ViT vitscope can trace) and
:func:`is_cnn` (a convnet kept for Grad-CAM comparisons and sweeps).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import VitscopeError
from ..spec import ModelSpec, TokenLayout

IMAGENET_HEADS = (1000, 11821, 21841, 21843)


def check_supported(model: nn.Module, source: str) -> None:
    """vitscope traces timm VisionTransformers with standard pre-norm blocks (or the post-norm
    ``ResPostBlock`` of ``vit_base_patch16_rpn_224``, the paper's GAP model) and timm Attention."""
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, ResPostBlock, VisionTransformer

    supported = ("timm VisionTransformer family (ViT, DeiT incl. distilled, ViT with registers, "
                 "avg/map pooling, residual post-norm), Hugging Face ViT, torchvision vit_*, hand-written "
                 "ViTs with the reference layout")
    if not isinstance(model, VisionTransformer):
        raise VitscopeError(f"{type(model).__name__} is not supported yet; vitscope opens the {supported}",
                            source)
    for blk in model.blocks:
        if type(blk) not in (Block, ResPostBlock) or type(blk.attn) is not Attention or blk.attn.gate is not None:
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


def _fit_channels(cfg: dict[str, Any], c: int) -> dict[str, Any]:
    """mean/std with one value per input channel (a grey model keeps the first)."""
    for k in ("mean", "std"):
        v = tuple(float(x) for x in cfg[k])
        cfg[k] = v[:c] if len(v) >= c else v * c
    return cfg


def default_data_config(model: nn.Module) -> dict[str, Any]:
    """timm's data config for the model, with the input size the model was built for."""
    from timm.data import resolve_data_config

    cfg = dict(resolve_data_config({}, model=model))
    c = model.in_chans
    h, w = (int(s) for s in model.patch_embed.img_size)
    cfg["input_size"] = (c, h, w)
    return normalise_data_config(_fit_channels(cfg, c))


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


def _class_names(model: nn.Module, classes: list[str] | None, source: str, notes: list[str]) -> list[str]:
    """The head's class names: given ones (checked), ImageNet's for an ImageNet head, else numbered.

    A headless backbone (``num_classes=0``, e.g. DINOv2) has none.
    """
    n_cls = model.num_classes
    if not n_cls:
        if classes:
            notes.append(f"{len(classes)} class names ignored: the model has no classification head")
        return []
    if classes is not None and len(classes) != n_cls:
        raise VitscopeError(f"{len(classes)} class names given but the head has {n_cls} outputs", source)
    if classes is None:
        classes = (imagenet_class_names(model) if n_cls in IMAGENET_HEADS else None) \
            or [f"class {i}" for i in range(n_cls)]
    return list(classes)


def make_spec(model: nn.Module, *, family: str, arch: str, kwargs: dict[str, Any], source: str,
              classes: list[str] | None, data_config: dict[str, Any] | None, random_weights: bool,
              notes: list[str] | None = None) -> ModelSpec:
    """The spec of a timm VisionTransformer (call :func:`check_supported` first)."""
    layout = model_layout(model)
    blk0 = model.blocks[0]
    notes = list(notes or [])
    class_names = _class_names(model, classes, source, notes)
    pooling = "map" if getattr(model, "attn_pool", None) is not None else (model.global_pool or "none")
    if layout.prefix_names[:2] == ("cls", "dist"):
        pooling = "token+dist"
    return ModelSpec(
        family=family, arch=arch,
        num_layers=len(model.blocks), num_heads=blk0.attn.num_heads, embed_dim=model.embed_dim,
        patch_size=tuple(int(p) for p in model.patch_embed.patch_size),  # type: ignore[arg-type]
        img_size=tuple(int(s) for s in model.patch_embed.img_size),  # type: ignore[arg-type]
        in_chans=model.in_chans, layout=layout, pooling=pooling, classes=class_names,
        data_config=normalise_data_config(data_config) if data_config else default_data_config(model),
        random_weights=random_weights, source=source,
        num_params=sum(p.numel() for p in model.parameters()),
        layer_scale=not isinstance(getattr(blk0, "ls1", nn.Identity()), nn.Identity), kwargs=dict(kwargs), notes=notes,
    )


# ---------------------------------------------------------------------------------------------- CNNs

def model_in_chans(model: nn.Module) -> int:
    """Input channels of a timm model: its first conv (``pretrained_cfg["first_conv"]``) says."""
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    conv: Any = None
    if isinstance(first, str):
        try:
            conv = model.get_submodule(first)
        except AttributeError:
            conv = None
    if not isinstance(conv, nn.Conv2d):
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is not None:
        return int(conv.in_channels)
    return int(getattr(model, "in_chans", 3))


def timm_data_config(pretrained_cfg: dict[str, Any], in_chans: int,
                     img_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """timm's preprocessing for a model's pretrained_cfg, fitted to ``in_chans`` (and ``img_size`` if given)."""
    from timm.data import resolve_data_config

    cfg = dict(resolve_data_config(pretrained_cfg=dict(pretrained_cfg)))
    h, w = img_size or (int(cfg["input_size"][1]), int(cfg["input_size"][2]))
    cfg["input_size"] = (in_chans, h, w)
    return normalise_data_config(_fit_channels(cfg, in_chans))


def cnn_data_config(model: nn.Module) -> dict[str, Any]:
    """timm's data config for a CNN, fitted to its own input channels."""
    return timm_data_config(getattr(model, "pretrained_cfg", None) or {}, model_in_chans(model))


def _features(model: nn.Module, input_size: tuple[int, int, int]) -> torch.Tensor:
    was = model.training
    try:
        with torch.no_grad():
            model.eval()
            return model.forward_features(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    finally:
        model.train(was)


def _input_size(model: nn.Module, data_config: dict[str, Any] | None) -> tuple[int, int, int]:
    cfg = data_config or cnn_data_config(model)
    c, h, w = (int(v) for v in cfg["input_size"])
    return c, h, w


def is_cnn(model: nn.Module, data_config: dict[str, Any] | None = None) -> bool:
    """A convnet: forward_features gives an NCHW map with num_features channels (Swin-like models give
    NHWC and are not treated as CNNs). The blank probe input has the model's own input size: the
    data config's when given, else the first conv's channels at timm's default size."""
    if not hasattr(model, "forward_features") or not getattr(model, "num_features", None):
        return False
    try:
        feat = _features(model, _input_size(model, data_config))
    except Exception:  # any model that cannot run a blank input is not one we can show
        return False
    return feat.ndim == 4 and feat.shape[1] == model.num_features


def make_cnn_spec(model: nn.Module, *, family: str, arch: str, kwargs: dict[str, Any], source: str,
                  classes: list[str] | None, data_config: dict[str, Any] | None, random_weights: bool,
                  notes: list[str] | None = None) -> ModelSpec:
    """A spec for a timm CNN: its last feature map's grid stands in for the patch grid."""
    cfg = normalise_data_config(data_config) if data_config else cnn_data_config(model)
    c, h, w = (int(v) for v in cfg["input_size"])
    feat = _features(model, (c, h, w))
    notes = list(notes or [])
    return ModelSpec(
        family=family, arch=arch, num_layers=0, num_heads=0,
        embed_dim=int(feat.shape[1]), patch_size=(h // feat.shape[2], w // feat.shape[3]), img_size=(h, w),
        in_chans=c, layout=TokenLayout(prefix_names=(), grid=(int(feat.shape[2]), int(feat.shape[3]))),
        pooling="avg", classes=_class_names(model, classes, source, notes),
        data_config=cfg, random_weights=random_weights, source=source,
        num_params=sum(p.numel() for p in model.parameters()), kwargs=dict(kwargs), notes=notes, kind="cnn")
