"""The torchvision family: ``vit_b_16`` and kin (nn.MultiheadAttention blocks), converted to timm's layout."""
from __future__ import annotations

from pathlib import Path

from ..errors import VitscopeError
from .recipe import (BASE_ARCH, Family, LoadContext, LoadHints, StateDict, VitRecipe, check_heads, infer_grid,
                     one_or_pair)

# torchvision's own configurations: vit_b_* (768, 12 heads), vit_l_* (1024, 16), vit_h_14 (1280, 16)
HEADS_BY_DIM = {768: 12, 1024: 16, 1280: 16}
IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def detect(sd: StateDict, ctx: LoadContext) -> bool:
    return "conv_proj.weight" in sd and "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in sd


def _blocks(sd: StateDict, depth: int) -> StateDict:
    out: StateDict = {}
    for i in range(depth):
        p = f"encoder.layers.encoder_layer_{i}."
        # MLP keys: "mlp.0"/"mlp.3" (current) or "mlp.linear_1"/"mlp.linear_2" (before torchvision 0.13)
        fc1, fc2 = ("mlp.0", "mlp.3") if p + "mlp.0.weight" in sd else ("mlp.linear_1", "mlp.linear_2")
        for src, dst in (("self_attention.in_proj", "attn.qkv"), ("self_attention.out_proj", "attn.proj"),
                         ("ln_1", "norm1"), ("ln_2", "norm2"), (fc1, "mlp.fc1"), (fc2, "mlp.fc2")):
            out[f"blocks.{i}.{dst}.weight"] = sd[p + src + ("_weight" if src.endswith("in_proj") else ".weight")]
            out[f"blocks.{i}.{dst}.bias"] = sd[p + src + ("_bias" if src.endswith("in_proj") else ".bias")]
    return out


def to_recipe(sd: StateDict, hints: LoadHints, path: Path, ctx: LoadContext) -> VitRecipe:
    w = sd["conv_proj.weight"]
    dim, in_chans, ph, pw = w.shape
    depth = 1 + max(int(k.split(".")[2][len("encoder_layer_"):]) for k in sd if k.startswith("encoder.layers."))
    heads = hints.heads or HEADS_BY_DIM.get(dim)
    if not heads:
        raise VitscopeError(f"a torchvision ViT with dim {dim} is not a standard configuration: pass --heads N",
                            path)
    check_heads(dim, int(heads), path)
    if "heads.pre_logits.weight" in sd:
        raise VitscopeError("torchvision ViTs with a representation (pre_logits) layer are not supported yet",
                            path)
    out: StateDict = {
        "cls_token": sd["class_token"], "pos_embed": sd["encoder.pos_embedding"],
        "patch_embed.proj.weight": w, "patch_embed.proj.bias": sd["conv_proj.bias"],
        "norm.weight": sd["encoder.ln.weight"], "norm.bias": sd["encoder.ln.bias"],
    }
    out.update(_blocks(sd, depth))
    num_classes = 0
    if "heads.head.weight" in sd:
        out["head.weight"], out["head.bias"] = sd["heads.head.weight"], sd["heads.head.bias"]
        num_classes = out["head.weight"].shape[0]
    img = infer_grid(out["pos_embed"].shape[1] - 1, (ph, pw), hints, path)
    kwargs = dict(embed_dim=dim, depth=depth, num_heads=int(heads), patch_size=one_or_pair((ph, pw)),
                  img_size=one_or_pair(img), in_chans=in_chans,
                  mlp_ratio=out["blocks.0.mlp.fc1.weight"].shape[0] / dim, qkv_bias=True,
                  num_classes=num_classes, class_token=True, global_pool="token")
    # torchvision's ImageNet weights: resize 256 (for 224), centre crop, ImageNet mean/std, bilinear
    data_config = {"input_size": (in_chans, *img), "interpolation": "bilinear", "crop_pct": 224 / 256,
                   "mean": IMAGENET["mean"][:in_chans], "std": IMAGENET["std"][:in_chans]}
    return VitRecipe(arch=BASE_ARCH, kwargs=kwargs, state_dict=out, family="torchvision-vit",
                     norm_eps=hints.layer_norm_eps or 1e-6, data_config=data_config)


FAMILY = Family(name="torchvision-vit", layout="torchvision vit_*", detect=detect, to_recipe=to_recipe)
