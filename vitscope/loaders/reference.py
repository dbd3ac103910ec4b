"""The hand-written reference layout many people train from tutorials, converted to timm's layout.

Recognised: a Conv2d ``projection`` inside a patch-embedding module; ``cls_token`` and
``positional_embedding`` (or ``pos_embedding`` / ``pos_embed``) at top level or inside that module;
``blocks.N.attn.qkv``, ``blocks.N.attn.proj``, ``blocks.N.norm1/2``, ``blocks.N.mlp.*`` (a
Sequential or fc1/fc2), ``norm`` and ``head``. Such code uses ``nn.LayerNorm``'s default eps (1e-5)
and exact GELU; a config.json beside the file can say otherwise (``layer_norm_eps``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..errors import VitscopeError
from .timm_vit import BASE_ARCH, VitRecipe, check_heads, infer_grid

POS_NAMES = ("positional_embedding", "pos_embedding", "pos_embed", "position_embedding", "position_embeddings")
CLS_NAMES = ("cls_token", "class_token")


def _find_projection(sd: dict[str, torch.Tensor]) -> str | None:
    for k, v in sd.items():
        if k.endswith("projection.weight") and v.ndim == 4 and not k.startswith("blocks."):
            return k[: -len("projection.weight")]  # the patch-embedding module's prefix, e.g. "patch_embed."
    return None


def detect(sd: dict[str, torch.Tensor]) -> bool:
    return _find_projection(sd) is not None and "blocks.0.attn.qkv.weight" in sd


def _find(sd: dict[str, torch.Tensor], names: tuple[str, ...], prefix: str) -> str | None:
    for n in names:
        for k in (n, prefix + n):
            if k in sd:
                return k
    return None


def _mlp_linears(sd: dict[str, torch.Tensor], i: int) -> list[str]:
    """Prefixes of the two Linear layers of block i's MLP, in forward order."""
    pre = f"blocks.{i}.mlp."
    names = [k[len(pre):-len(".weight")] for k, v in sd.items()
             if k.startswith(pre) and k.endswith(".weight") and v.ndim == 2]

    def order(n: str) -> tuple:
        return tuple(int(t) if t.isdigit() else t for t in re.split(r"[._]", n))

    return [pre + n for n in sorted(names, key=order)]


def to_recipe(sd: dict[str, torch.Tensor], hints: dict[str, Any], path: Path) -> VitRecipe:
    pe = _find_projection(sd)
    assert pe is not None
    w = sd[pe + "projection.weight"]
    dim, in_chans, ph, pw = w.shape
    pos_key = _find(sd, POS_NAMES, pe)
    cls_key = _find(sd, CLS_NAMES, pe)
    if pos_key is None:
        raise VitscopeError(f"hand-written layout without a position embedding (looked for {', '.join(POS_NAMES)})",
                            path)
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    heads = hints.get("heads")
    if not heads:
        raise VitscopeError(
            f"the number of attention heads is not stored in hand-written weights (dim {dim}): pass --heads N "
            "or put a config.json with num_heads beside the file", path)
    check_heads(dim, int(heads), path)
    pos = sd[pos_key]
    if pos.ndim == 2:
        pos = pos[None]
    cls = sd[cls_key] if cls_key else None
    if cls is not None and cls.ndim == 2:
        cls = cls[None]
    out: dict[str, torch.Tensor] = {"pos_embed": pos, "patch_embed.proj.weight": w}
    if pe + "projection.bias" in sd:
        out["patch_embed.proj.bias"] = sd[pe + "projection.bias"]
    else:
        out["patch_embed.proj.bias"] = torch.zeros(dim)
    if cls is not None:
        out["cls_token"] = cls
    for i in range(depth):
        p = f"blocks.{i}."
        for name in ("attn.qkv", "attn.proj", "norm1", "norm2"):
            for t in ("weight", "bias"):
                if p + f"{name}.{t}" in sd:
                    out[p + f"{name}.{t}"] = sd[p + f"{name}.{t}"]
        linears = _mlp_linears(sd, i)
        if len(linears) != 2:
            raise VitscopeError(f"block {i}'s MLP has {len(linears)} linear layers, expected 2", path)
        for src, dst in zip(linears, ("mlp.fc1", "mlp.fc2")):
            out[p + dst + ".weight"] = sd[src + ".weight"]
            if src + ".bias" in sd:
                out[p + dst + ".bias"] = sd[src + ".bias"]
    for t in ("weight", "bias"):
        if f"norm.{t}" in sd:
            out[f"norm.{t}"] = sd[f"norm.{t}"]
        if f"head.{t}" in sd:
            out[f"head.{t}"] = sd[f"head.{t}"]
    n_prefix = 1 if cls is not None else 0
    n_patch_pos = pos.shape[1] - n_prefix
    img = infer_grid(n_patch_pos, (ph, pw), hints, path)
    kwargs = dict(embed_dim=dim, depth=depth, num_heads=int(heads), patch_size=ph if ph == pw else (ph, pw),
                  img_size=img[0] if img[0] == img[1] else img, in_chans=in_chans,
                  mlp_ratio=out["blocks.0.mlp.fc1.weight"].shape[0] / dim,
                  qkv_bias="blocks.0.attn.qkv.bias" in sd,
                  num_classes=out["head.weight"].shape[0] if "head.weight" in out else 0,
                  class_token=cls is not None, global_pool="token" if cls is not None else "avg",
                  fc_norm=False)
    notes = ["hand-written layout: LayerNorm eps 1e-5 (PyTorch default) and exact GELU assumed"]
    return VitRecipe(arch=BASE_ARCH, kwargs=kwargs, state_dict=out, family="reference",
                     norm_eps=float(hints.get("layer_norm_eps") or 1e-5), notes=notes)
