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

import torch

from ..errors import VitscopeError
from .recipe import (BASE_ARCH, Family, LoadContext, LoadHints, StateDict, VitRecipe, check_heads, infer_grid,
                     one_or_pair)

LAYOUT = "hand-written reference (patch_embed.projection + blocks.N.attn.qkv)"

POS_NAMES = ("positional_embedding", "pos_embedding", "pos_embed", "position_embedding", "position_embeddings")
CLS_NAMES = ("cls_token", "class_token")


def _find_projection(sd: StateDict) -> str | None:
    for k, v in sd.items():
        if k.endswith("projection.weight") and v.ndim == 4 and not k.startswith("blocks."):
            return k[: -len("projection.weight")]  # the patch-embedding module's prefix, e.g. "patch_embed."
    return None


def detect(sd: StateDict, ctx: LoadContext) -> bool:
    return _find_projection(sd) is not None and "blocks.0.attn.qkv.weight" in sd


def _find(sd: StateDict, names: tuple[str, ...], prefix: str) -> str | None:
    for n in names:
        for k in (n, prefix + n):
            if k in sd:
                return k
    return None


def _mlp_linears(sd: StateDict, i: int) -> list[str]:
    """Prefixes of the two Linear layers of block i's MLP, in forward order."""
    pre = f"blocks.{i}.mlp."
    names = [k[len(pre):-len(".weight")] for k, v in sd.items()
             if k.startswith(pre) and k.endswith(".weight") and v.ndim == 2]

    def order(n: str) -> tuple[int | str, ...]:
        return tuple(int(t) if t.isdigit() else t for t in re.split(r"[._]", n))

    return [pre + n for n in sorted(names, key=order)]


def _tokens(sd: StateDict, pe: str, path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The position embedding and the class token (None without one), batch dimension first."""
    pos_key = _find(sd, POS_NAMES, pe)
    cls_key = _find(sd, CLS_NAMES, pe)
    if pos_key is None:
        raise VitscopeError(f"hand-written layout without a position embedding (looked for {', '.join(POS_NAMES)})",
                            path)
    pos = sd[pos_key]
    cls = sd[cls_key] if cls_key else None
    return (pos[None] if pos.ndim == 2 else pos), (cls[None] if cls is not None and cls.ndim == 2 else cls)


def _copy_if_present(sd: StateDict, out: StateDict, names: tuple[str, ...]) -> None:
    for name in names:
        for t in ("weight", "bias"):
            if f"{name}.{t}" in sd:
                out[f"{name}.{t}"] = sd[f"{name}.{t}"]


def _block(sd: StateDict, i: int, path: Path) -> StateDict:
    p = f"blocks.{i}."
    out: StateDict = {}
    _copy_if_present(sd, out, tuple(p + n for n in ("attn.qkv", "attn.proj", "norm1", "norm2")))
    linears = _mlp_linears(sd, i)
    if len(linears) != 2:
        raise VitscopeError(f"block {i}'s MLP has {len(linears)} linear layers, expected 2", path)
    for src, dst in zip(linears, ("mlp.fc1", "mlp.fc2")):
        out[p + dst + ".weight"] = sd[src + ".weight"]
        if src + ".bias" in sd:
            out[p + dst + ".bias"] = sd[src + ".bias"]
    return out


def to_recipe(sd: StateDict, hints: LoadHints, path: Path, ctx: LoadContext) -> VitRecipe:
    pe = _find_projection(sd)
    assert pe is not None
    w = sd[pe + "projection.weight"]
    dim, in_chans, ph, pw = w.shape
    pos, cls = _tokens(sd, pe, path)
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    if not hints.heads:
        raise VitscopeError(
            f"the number of attention heads is not stored in hand-written weights (dim {dim}): pass --heads N "
            "or put a config.json with num_heads beside the file", path)
    check_heads(dim, hints.heads, path)
    out: StateDict = {"pos_embed": pos, "patch_embed.proj.weight": w,
                      "patch_embed.proj.bias": sd.get(pe + "projection.bias", torch.zeros(dim))}
    if cls is not None:
        out["cls_token"] = cls
    for i in range(depth):
        out.update(_block(sd, i, path))
    _copy_if_present(sd, out, ("norm", "head"))
    img = infer_grid(pos.shape[1] - (1 if cls is not None else 0), (ph, pw), hints, path)
    kwargs = dict(embed_dim=dim, depth=depth, num_heads=hints.heads, patch_size=one_or_pair((ph, pw)),
                  img_size=one_or_pair(img), in_chans=in_chans,
                  mlp_ratio=out["blocks.0.mlp.fc1.weight"].shape[0] / dim,
                  qkv_bias="blocks.0.attn.qkv.bias" in sd,
                  num_classes=out["head.weight"].shape[0] if "head.weight" in out else 0,
                  class_token=cls is not None, global_pool="token" if cls is not None else "avg",
                  fc_norm=False)
    notes = ["hand-written layout: LayerNorm eps 1e-5 (PyTorch default) and exact GELU assumed"]
    return VitRecipe(arch=BASE_ARCH, kwargs=kwargs, state_dict=out, family="reference",
                     norm_eps=hints.layer_norm_eps or 1e-5, notes=notes)


FAMILY = Family(name="reference", layout=LAYOUT, detect=detect, to_recipe=to_recipe)
