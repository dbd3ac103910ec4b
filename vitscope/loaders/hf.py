"""Hugging Face ``ViTForImageClassification`` / ``ViTModel`` weights, converted to timm's layout."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..errors import VitscopeError
from .timm_vit import BASE_ARCH, VitRecipe, check_heads, infer_grid

MARK = "embeddings.patch_embeddings.projection.weight"


# transformers >= 5 names the modules differently in memory (files on disk keep the old names)
_V5_NAMES = ((r"(^|\.)layers\.(\d+)\.", r"\1encoder.layer.\2."), (r"\.attention\.q_proj\.", ".attention.attention.query."),
             (r"\.attention\.k_proj\.", ".attention.attention.key."),
             (r"\.attention\.v_proj\.", ".attention.attention.value."),
             (r"\.attention\.o_proj\.", ".attention.output.dense."), (r"\.mlp\.fc1\.", ".intermediate.dense."),
             (r"\.mlp\.fc2\.", ".output.dense."))


def legacy_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map transformers-5 in-memory key names to the classic ViT names used on disk."""
    if not any(".attention.q_proj." in k for k in sd):
        return sd
    out = {}
    for k, v in sd.items():
        for pat, rep in _V5_NAMES:
            k = re.sub(pat, rep, k)
        out[k] = v
    return out


def detect(sd: dict[str, torch.Tensor]) -> bool:
    return any(k.endswith(MARK) for k in sd) and any(
        ".attention.attention.query." in k or ".attention.q_proj." in k for k in sd)


def to_recipe(sd: dict[str, torch.Tensor], hints: dict[str, Any], path: Path,
              config: dict[str, Any] | None = None) -> VitRecipe:
    config = config or {}
    sd = legacy_names(sd)
    base = next(k for k in sd if k.endswith(MARK))[: -len(MARK)]  # "vit." or ""
    g = lambda k: sd[base + k]  # noqa: E731
    w = g(MARK)
    dim, in_chans, ph, pw = w.shape
    depth = 1 + max(int(k[len(base) + len("encoder.layer."):].split(".")[0])
                    for k in sd if k.startswith(base + "encoder.layer."))
    heads = hints.get("heads") or config.get("num_attention_heads")
    if not heads:
        raise VitscopeError("Hugging Face ViT weights without config.json: pass --heads N", path)
    check_heads(dim, int(heads), path)
    act = config.get("hidden_act", "gelu")
    if act not in ("gelu", "gelu_python"):
        raise VitscopeError(f"hidden_act {act!r} is not supported yet (only exact GELU)", path)
    out: dict[str, torch.Tensor] = {
        "cls_token": g("embeddings.cls_token"),
        "pos_embed": g("embeddings.position_embeddings"),
        "patch_embed.proj.weight": w,
        "patch_embed.proj.bias": g("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": g("layernorm.weight"),
        "norm.bias": g("layernorm.bias"),
    }
    has_bias = base + "encoder.layer.0.attention.attention.query.bias" in sd
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
    num_classes = 0
    if "classifier.weight" in sd:
        out["head.weight"], out["head.bias"] = sd["classifier.weight"], sd["classifier.bias"]
        num_classes = out["head.weight"].shape[0]
    if config.get("image_size") and not hints.get("img_size"):
        hints = dict(hints, img_size=config["image_size"])
    img = infer_grid(out["pos_embed"].shape[1] - 1, (ph, pw), hints, path)
    kwargs = dict(embed_dim=dim, depth=depth, num_heads=int(heads), patch_size=ph if ph == pw else (ph, pw),
                  img_size=img[0] if img[0] == img[1] else img, in_chans=in_chans,
                  mlp_ratio=out["blocks.0.mlp.fc1.weight"].shape[0] / dim, qkv_bias=has_bias,
                  num_classes=num_classes, class_token=True, global_pool="token")
    classes = None
    if isinstance(config.get("id2label"), dict) and len(config["id2label"]) == num_classes:
        classes = [str(config["id2label"][k]) for k in sorted(config["id2label"], key=int)]
    mean, std = config.get("image_mean"), config.get("image_std")
    data_config = {
        "input_size": (in_chans, *img),
        "mean": mean or [0.5] * in_chans, "std": std or [0.5] * in_chans,
        "interpolation": "bilinear", "crop_pct": 1.0,
    }
    notes = [] if mean else ["preprocessing: no preprocessor_config.json, using HF ViT's default mean/std 0.5"]
    return VitRecipe(arch=BASE_ARCH, kwargs=kwargs, state_dict=out, family="hf-vit",
                     norm_eps=float(hints.get("layer_norm_eps") or config.get("layer_norm_eps", 1e-12)),
                     data_config=data_config, classes=classes, notes=notes)
