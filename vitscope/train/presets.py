"""vitscope's model presets: timm configurations (no second ViT implementation).

Every preset is a timm model name plus kwargs, so ``timm.create_model(arch, **kwargs)`` rebuilds a
trained checkpoint without vitscope. Input size, channels and classes come from the dataset.
"""
from __future__ import annotations

from typing import Any

from ..errors import VitscopeError

PRESETS: dict[str, tuple[str, dict[str, Any], str]] = {
    "vit-4x4": ("vit_tiny_patch16_224", dict(patch_size=7, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0),
                "4 layers x 4 heads, patch 7, dim 64 (the classic small MNIST ViT)"),
    "vit-4x4-p4": ("vit_tiny_patch16_224", dict(patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0),
                   "4 layers x 4 heads, patch 4, dim 64"),
    "vit-6x4-p4": ("vit_tiny_patch16_224", dict(patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0),
                   "6 layers x 4 heads, patch 4, dim 128 (slow on CPU: ~270 img/s)"),
    "vit-ti": ("vit_tiny_patch16_224", dict(patch_size=4), "ViT-Ti: 12 layers x 3 heads, dim 192, patch 4"),
    "cnn-small": ("resnet10t", dict(channels=(32, 64, 128, 256), stem_width=16, output_stride=8),
                  "timm resnet10t, narrow, output stride 8 (a 4x4 Grad-CAM grid on 28x28)"),
}
TRAIN_ONLY_KWARGS = ("drop_path_rate", "drop_rate")


def resolve_model(name: str, channels: int, size: tuple[int, int], num_classes: int,
                  extra: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(timm arch, kwargs that rebuild it) for a preset or ``timm:NAME``."""
    import timm

    if name in PRESETS:
        arch, kw, _ = PRESETS[name]
        kw = dict(kw)
    elif name.startswith("timm:"):
        arch, kw = name[5:], {}
        if not timm.is_model(arch):
            raise VitscopeError(f"unknown timm model {arch!r}")
    else:
        raise VitscopeError(f"unknown model {name!r}: use a preset ({', '.join(PRESETS)}) or timm:NAME")
    kw.update(in_chans=channels, num_classes=num_classes)
    if _is_vit(arch):
        kw["img_size"] = size[0] if size[0] == size[1] else list(size)
    kw.update(extra or {})
    return arch, kw


def _is_vit(arch: str) -> bool:
    return arch.startswith(("vit_", "deit_", "deit3_"))


def build_model(arch: str, kwargs: dict[str, Any], drop_path: float = 0.0):
    import timm

    train_kw = dict(kwargs)
    if drop_path:
        train_kw["drop_path_rate"] = drop_path
    try:
        return timm.create_model(arch, pretrained=False, **train_kw)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise VitscopeError(f"cannot build {arch} with {kwargs}: {e}") from None
