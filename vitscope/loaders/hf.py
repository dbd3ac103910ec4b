"""The Hugging Face family: ``ViTForImageClassification`` / ``ViTModel`` weights, converted to timm's layout.

They open as a bare state dict (heads from --heads or a config.json beside it) or as a model
directory (:func:`read_directory`: config.json, preprocessor_config.json, the weights file).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import VitscopeError
from .files import ordered_names, read_json
from .recipe import (BASE_ARCH, Family, LoadContext, LoadHints, StateDict, VitRecipe, check_heads, infer_grid,
                     one_or_pair)

MARK = "embeddings.patch_embeddings.projection.weight"


# transformers >= 5 names the modules differently in memory (files on disk keep the old names)
_V5_NAMES = ((r"(^|\.)layers\.(\d+)\.", r"\1encoder.layer.\2."),
             (r"\.attention\.q_proj\.", ".attention.attention.query."),
             (r"\.attention\.k_proj\.", ".attention.attention.key."),
             (r"\.attention\.v_proj\.", ".attention.attention.value."),
             (r"\.attention\.o_proj\.", ".attention.output.dense."), (r"\.mlp\.fc1\.", ".intermediate.dense."),
             (r"\.mlp\.fc2\.", ".output.dense."))


def legacy_names(sd: StateDict) -> StateDict:
    """Map transformers-5 in-memory key names to the classic ViT names used on disk."""
    if not any(".attention.q_proj." in k for k in sd):
        return sd
    out = {}
    for k, v in sd.items():
        for pat, rep in _V5_NAMES:
            k = re.sub(pat, rep, k)
        out[k] = v
    return out


def detect(sd: StateDict, ctx: LoadContext) -> bool:
    return any(k.endswith(MARK) for k in sd) and any(
        ".attention.attention.query." in k or ".attention.q_proj." in k for k in sd)


def _blocks(g: Callable[[str], torch.Tensor], depth: int, has_bias: bool) -> StateDict:
    out: StateDict = {}
    for i in range(depth):
        p = f"encoder.layer.{i}."
        a = p + "attention.attention."
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([g(a + n + ".weight") for n in ("query", "key", "value")])
        if has_bias:
            out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([g(a + n + ".bias") for n in ("query", "key", "value")])
        for src, dst in (("attention.output.dense", "attn.proj"), ("layernorm_before", "norm1"),
                         ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"),
                         ("output.dense", "mlp.fc2")):
            for t in ("weight", "bias"):
                out[f"blocks.{i}.{dst}.{t}"] = g(f"{p}{src}.{t}")
    return out


def _heads(hints: LoadHints, path: Path, dim: int) -> int:
    if not hints.heads:
        raise VitscopeError("Hugging Face ViT weights without config.json: pass --heads N", path)
    check_heads(dim, hints.heads, path)
    return hints.heads


def _data_config(config: Mapping[str, Any], in_chans: int, img: tuple[int, int]) -> tuple[dict[str, Any], list[str]]:
    mean, std = config.get("image_mean"), config.get("image_std")
    data_config = {
        "input_size": (in_chans, *img),
        "mean": mean or [0.5] * in_chans, "std": std or [0.5] * in_chans,
        "interpolation": "bilinear", "crop_pct": 1.0,
    }
    notes = [] if mean else ["preprocessing: no preprocessor_config.json, using HF ViT's default mean/std 0.5"]
    return data_config, notes


def to_recipe(sd: StateDict, hints: LoadHints, path: Path, ctx: LoadContext) -> VitRecipe:
    config = ctx.config
    hints = hints.with_config(config, path)  # num_attention_heads, image_size, layer_norm_eps
    sd = legacy_names(sd)
    base = next(k for k in sd if k.endswith(MARK))[: -len(MARK)]  # "vit." or ""

    def g(k: str) -> torch.Tensor:
        return sd[base + k]

    w = g(MARK)
    dim, in_chans, ph, pw = w.shape
    depth = 1 + max(int(k[len(base) + len("encoder.layer."):].split(".")[0])
                    for k in sd if k.startswith(base + "encoder.layer."))
    heads = _heads(hints, path, dim)
    act = config.get("hidden_act", "gelu")
    if act not in ("gelu", "gelu_python"):
        raise VitscopeError(f"hidden_act {act!r} is not supported yet (only exact GELU)", path)
    out: StateDict = {
        "cls_token": g("embeddings.cls_token"),
        "pos_embed": g("embeddings.position_embeddings"),
        "patch_embed.proj.weight": w,
        "patch_embed.proj.bias": g("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": g("layernorm.weight"),
        "norm.bias": g("layernorm.bias"),
    }
    has_bias = base + "encoder.layer.0.attention.attention.query.bias" in sd
    out.update(_blocks(g, depth, has_bias))
    num_classes = 0
    if "classifier.weight" in sd:
        out["head.weight"], out["head.bias"] = sd["classifier.weight"], sd["classifier.bias"]
        num_classes = out["head.weight"].shape[0]
    img = infer_grid(out["pos_embed"].shape[1] - 1, (ph, pw), hints, path)
    kwargs = dict(embed_dim=dim, depth=depth, num_heads=heads, patch_size=one_or_pair((ph, pw)),
                  img_size=one_or_pair(img), in_chans=in_chans,
                  mlp_ratio=out["blocks.0.mlp.fc1.weight"].shape[0] / dim, qkv_bias=has_bias,
                  num_classes=num_classes, class_token=True, global_pool="token")
    classes = None
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and len(id2label) == num_classes:
        classes = ordered_names(id2label, path)
    data_config, notes = _data_config(config, in_chans, img)
    return VitRecipe(arch=BASE_ARCH, kwargs=kwargs, state_dict=out, family="hf-vit",
                     norm_eps=hints.layer_norm_eps or 1e-12, data_config=data_config, classes=classes,
                     notes=notes)


FAMILY = Family(name="hf-vit", layout="Hugging Face ViT", detect=detect, to_recipe=to_recipe)


def read_directory(path: Path) -> tuple[dict[str, Any], Path]:
    """A Hugging Face model directory: its config (with the preprocessor's mean/std) and weights file."""
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise VitscopeError("is a directory without config.json; expected a Hugging Face model directory "
                            "or a checkpoint file", path)
    cfg = read_json(cfg_path)
    if cfg.get("model_type") not in ("vit", None):
        raise VitscopeError(f"Hugging Face model_type {cfg.get('model_type')!r} is not supported yet "
                            "(supported: vit)", path)
    weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
    if weights is None:
        raise VitscopeError("no model.safetensors or pytorch_model.bin in the directory", path)
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        p = read_json(pre)
        cfg = dict(cfg, image_mean=p.get("image_mean"), image_std=p.get("image_std"))
    return cfg, weights
