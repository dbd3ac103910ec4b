"""Head importance by ablation: remove one head's contribution and measure the target logit.

A head's contribution is its slice of the attention output before the output projection
(``attn.proj``'s input). Zero-ablation sets the slice to zero (the projection's bias is not part of
any head and stays); mean-ablation replaces it by its mean over a reference batch (per token
position), or over this image's tokens when no reference batch is given. Ablations are batched:
block l's ablations all start from the recorded stream entering block l, so layers before l are not
recomputed, and the H heads of a layer run as one batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class AblationResult:
    logit_delta: torch.Tensor  # [L, H] target logit (ablated) - target logit (original)
    prob_delta: torch.Tensor  # [L, H]
    target: int
    mode: str


def _head_slices(model: nn.Module, layer: int, x: torch.Tensor) -> torch.Tensor:
    """The per-head slices [B, N, H*hd] entering attn.proj at ``layer`` for stream x entering it."""
    store = {}
    blk = model.blocks[layer]
    h = blk.attn.proj.register_forward_pre_hook(lambda _m, inp: store.__setitem__("x", inp[0].detach()))
    try:
        blk(x)
    finally:
        h.remove()
    return store["x"]


def _finish(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.norm(x))


@torch.inference_mode()
def head_ablation(model: nn.Module, trace, target: int | None = None, mode: str = "zero",
                  reference: torch.Tensor | None = None) -> AblationResult:
    """[L, H] change of the target logit and probability when each head is ablated."""
    target = trace.prediction if target is None else int(target)
    device = next(model.parameters()).device
    L, H = trace.num_layers, trace.num_heads
    base_logits = trace.logits
    base_prob = base_logits.softmax(-1)[target]
    dl, dp = torch.zeros(L, H), torch.zeros(L, H)
    for layer in range(L):
        blk = model.blocks[layer]
        hd = blk.attn.head_dim
        x0 = trace.resid[layer].to(device)[None]
        if mode == "mean":
            if reference is not None:
                with torch.inference_mode():
                    ref = _reference_stream(model, reference.to(device), layer)
                fill = _head_slices(model, layer, ref).mean(0)  # [N, H*hd]
            else:
                fill = _head_slices(model, layer, x0)[0].mean(0, keepdim=True).expand(x0.shape[1], -1)
        elif mode == "zero":
            fill = None
        else:
            raise ValueError(f"unknown ablation mode {mode!r} (zero or mean)")

        def ablate(_m, inp, fill=fill, hd=hd):
            z = inp[0].clone()
            for b in range(H):
                sl = slice(b * hd, (b + 1) * hd)
                z[b, :, sl] = 0.0 if fill is None else fill[:, sl]
            return (z,)

        handle = blk.attn.proj.register_forward_pre_hook(ablate)
        try:
            x = x0.expand(H, -1, -1).contiguous()
            for b in model.blocks[layer:]:
                x = b(x)
            logits = _finish(model, x).float().cpu()
        finally:
            handle.remove()
        dl[layer] = logits[:, target] - base_logits[target]
        dp[layer] = logits.softmax(-1)[:, target] - base_prob
    return AblationResult(dl, dp, target, mode)


def head_ablation_estimate(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """First-order estimate of zero-ablation ("attribution patching"): for each head,
    delta ~= -(slice . d y_target / d slice), from one forward and one backward (~3 forward passes).
    An approximation: use :func:`head_ablation` for exact numbers. Returns [L, H]."""
    device = next(model.parameters()).device
    store: list[dict] = [dict() for _ in model.blocks]
    handles = []

    def grab(i):
        def pre(_m, inp):
            z = inp[0]
            store[i]["z"] = z
            z.register_hook(lambda g: store[i].__setitem__("g", g))
        return pre

    for i, blk in enumerate(model.blocks):
        handles.append(blk.attn.proj.register_forward_pre_hook(grab(i)))
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(x[None].to(device))
            model.zero_grad(set_to_none=True)
            out[0, target].backward()
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    rows = []
    for blk, st in zip(model.blocks, store):
        H, hd = blk.attn.num_heads, blk.attn.head_dim
        zg = (st["z"].detach() * st["g"])[0].reshape(-1, H, hd)  # [N, H, hd]
        rows.append(-zg.sum((0, 2)))
    return torch.stack(rows).float().cpu()


def _reference_stream(model: nn.Module, images: torch.Tensor, layer: int) -> torch.Tensor:
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.norm_pre(model.patch_drop(x))
    for b in model.blocks[:layer]:
        x = b(x)
    return x
