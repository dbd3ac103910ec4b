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
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from . import hooks

if TYPE_CHECKING:
    from ..tracing import Trace


@dataclass
class AblationResult:
    logit_delta: torch.Tensor  # [L, H] target logit (ablated) - target logit (original)
    prob_delta: torch.Tensor  # [L, H]
    target: int
    mode: str


@torch.inference_mode()
def head_ablation(model: nn.Module, trace: "Trace", target: int | None = None, mode: str = "zero",
                  reference: torch.Tensor | None = None,
                  progress: Callable[[int, int], None] | None = None) -> AblationResult:
    """[L, H] change of the target logit and probability when each head is ablated.

    ``progress(done, total)`` is called after each layer (total = L); long runs are cancellable
    through :func:`vitscope.analysis.hooks.cancel_when`."""
    if mode not in ("zero", "mean"):
        raise ValueError(f"unknown ablation mode {mode!r} (zero or mean)")
    target = trace.prediction if target is None else int(target)
    L, H = trace.num_layers, trace.num_heads
    base_logits = trace.logits
    base_prob = base_logits.softmax(-1)[target]
    dl, dp = torch.zeros(L, H), torch.zeros(L, H)
    with hooks.using(model):
        device = hooks.device_of(model)
        for layer in range(L):
            x0 = trace.resid[layer].to(device)[None]
            fill = None
            if mode == "mean":
                if reference is not None:
                    ref = _reference_stream(model, reference.to(device), layer)
                    fill = hooks.head_inputs(model, layer, ref).mean(0)  # [N, H*hd]
                else:
                    fill = hooks.head_inputs(model, layer, x0)[0].mean(0, keepdim=True).expand(x0.shape[1], -1)
            with hooks.one_head_per_item(model, layer, fill):
                logits = hooks.run_from(model, x0.expand(H, -1, -1).contiguous(), layer).float().cpu()
            dl[layer] = logits[:, target] - base_logits[target]
            dp[layer] = logits.softmax(-1)[:, target] - base_prob
            if progress is not None:
                progress(layer + 1, L)
    return AblationResult(dl, dp, target, mode)


def head_ablation_estimate(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """First-order estimate of zero-ablation ("attribution patching"): for each head,
    delta ~= -(slice . d y_target / d slice), from one forward and one backward (~3 forward passes).
    An approximation: use :func:`head_ablation` for exact numbers. Returns [L, H]."""
    with hooks.using(model), hooks.head_input_grads(model) as store:
        hooks.backward_on(model, x, target)
        dims = [hooks.head_dims(model, i) for i in range(len(store))]
    rows = []
    for (H, hd), st in zip(dims, store):
        zg = (st["z"].detach() * st["g"])[0].reshape(-1, H, hd)  # [N, H, hd]
        rows.append(-zg.sum((0, 2)))
    return torch.stack(rows).float().cpu()


def _reference_stream(model: nn.Module, images: torch.Tensor, layer: int) -> torch.Tensor:
    x = hooks.embed(model, images)
    for b in model.blocks[:layer]:
        x = b(x)
    return x
