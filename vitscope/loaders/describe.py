"""Describing a built model: the :class:`~vitscope.spec.ModelSpec` of a timm ViT or of a timm CNN.

Also the checks that decide which it is: :func:`check_supported` (a ViT vitscope can trace) and
:func:`is_cnn` (a convnet kept for Grad-CAM comparisons and sweeps).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
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


#: The largest input side (px) vitscope accepts from a file: ViTs in use go up to ~1,000 px, and a
#: crafted ``input_size`` of 1e6 px must fail in one line, not in the kernel's OOM killer.
MAX_SIDE = 4096
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
CROP_MODES = ("center", "squash", "border")


def normalise_data_config(cfg: Any, where: Any = None, field: str = "data_config",
                          in_chans: int | None = None) -> dict[str, Any]:
    """A data config (timm's form) with checked types and bounds, or a one-line error naming the field.

    ``input_size`` is [C, H, W] with sides up to :data:`MAX_SIDE` (and C = ``in_chans`` when given);
    ``mean`` / ``std`` have 1 or C finite values (one value is used for every channel), std > 0;
    ``interpolation`` is a PIL filter name; ``crop_pct`` in (0, 2].
    """
    def bad(what: str) -> VitscopeError:
        return VitscopeError(f"{field}.{what}", where)

    if not isinstance(cfg, Mapping):
        raise VitscopeError(f"{field} is a {type(cfg).__name__}, expected an object", where)
    size = cfg.get("input_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 3 and all(_integral(x) for x in size)):
        raise bad(f"input_size is {size!r}, expected [channels, height, width] integers")
    c, h, w = (int(x) for x in size)
    if not (1 <= c <= 64 and 1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise bad(f"input_size {[c, h, w]} is out of range (channels 1..64, sides 1..{MAX_SIDE} px)")
    if in_chans is not None and c != in_chans:
        raise bad(f"input_size has {c} channels but the model takes {in_chans}")
    stats = {}
    for key in ("mean", "std"):
        v = cfg.get(key)
        v = [v] if _finite(v) else v
        if not (isinstance(v, (list, tuple)) and len(v) in (1, c) and all(_finite(x) for x in v)):
            raise bad(f"{key} is {v!r}, expected 1 or {c} finite numbers (one per channel)")
        stats[key] = [float(x) for x in v] * (c if len(v) == 1 else 1)
    if any(x <= 0 for x in stats["std"]):
        raise bad(f"std is {stats['std']}: every value must be > 0 (inputs are divided by it)")
    interp = cfg.get("interpolation", "bilinear")
    if interp not in INTERPOLATIONS:
        raise bad(f"interpolation is {interp!r}, expected one of {', '.join(INTERPOLATIONS)}")
    crop = cfg.get("crop_pct", 1.0)
    if not (_finite(crop) and 0 < crop <= 2):
        raise bad(f"crop_pct is {crop!r}, expected a number in (0, 2]")
    out = {"input_size": [c, h, w], "mean": stats["mean"], "std": stats["std"], "interpolation": str(interp),
           "crop_pct": float(crop)}
    if cfg.get("crop_mode"):
        if cfg["crop_mode"] not in CROP_MODES:
            raise bad(f"crop_mode is {cfg['crop_mode']!r}, expected one of {', '.join(CROP_MODES)}")
        out["crop_mode"] = cfg["crop_mode"]
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _integral(x: Any) -> bool:
    return _finite(x) and float(x) == int(x)


def check_input_size(model: nn.Module, cfg: dict[str, Any], source: str) -> None:
    """A ViT with a fixed input size takes only that size: a data config asking for another is refused."""
    fixed = not getattr(model, "dynamic_img_size", False) and getattr(model.patch_embed, "strict_img_size", True)
    want = tuple(int(s) for s in model.patch_embed.img_size)
    if fixed and tuple(cfg["input_size"][1:]) != want:
        raise VitscopeError(f"data_config.input_size {cfg['input_size']} does not match the model's input "
                            f"{want[0]}x{want[1]} px", source)


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
    dc = (normalise_data_config(data_config, source, in_chans=model.in_chans) if data_config
          else default_data_config(model))
    check_input_size(model, dc, source)
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
        data_config=dc,
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
    cfg = (normalise_data_config(data_config, source, in_chans=model_in_chans(model)) if data_config
           else cnn_data_config(model))
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
