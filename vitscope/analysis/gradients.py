"""Gradient methods: Grad-CAM (ViT and CNN), gradient-weighted relevance (Chefer et al. 2021) and
gradient rollout. Each runs its own forward/backward on the model (the Trace has no gradients).

Grad-CAM (Selvaraju et al.): weights = spatial mean of d y_c / d A over the target layer's activation
map, cam = ReLU(sum_c w_c A_c), min-max scaled. ViT default layer: the last block's ``norm1``,
prefix tokens dropped and the patch tokens reshaped row-major to the grid (as pytorch-grad-cam's
reshape_transform). CNN default layer: the last feature stage.

Chefer, Gur & Wolf (ICCV 2021, "Generic attention-model explainability"): R = I; for each block,
R += mean_h((dy_c/dA ⊙ A)^+) · R (clipped per head before the mean). The query row over patches is
the map. Gradient rollout: per layer A' = ReLU(mean_h(dy_c/dA ⊙ A)), rows renormalised, then the
rollout recursion 0.5*A' + 0.5*I, rows renormalised, multiplied from the first layer.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..spec import TokenLayout
from . import hooks
from .attention import query_row


def _normalise(m: torch.Tensor) -> torch.Tensor:
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)


def gradcam(model: nn.Module, x: torch.Tensor, target: int, layout: TokenLayout | None = None,
            layer: nn.Module | None = None, scale: bool = True) -> torch.Tensor:
    """Grad-CAM map on the target layer's grid ([rows, cols]); ``x`` is one normalised [C, H, W] input."""
    layer = layer or hooks.default_gradcam_layer(model)
    with hooks.using(model), hooks.activation(layer) as store:
        hooks.backward_on(model, x, target)
    act, grad = store["act"].detach()[0], store["grad"].detach()[0]
    if act.ndim == 2:  # ViT tokens [N, D] -> [D, rows, cols]
        assert layout is not None, "a ViT's Grad-CAM needs the token layout"
        rows, cols = layout.grid
        act = act[layout.num_prefix:].T.reshape(-1, rows, cols)
        grad = grad[layout.num_prefix:].T.reshape(-1, rows, cols)
    weights = grad.mean((1, 2))
    cam = torch.relu((weights[:, None, None] * act).sum(0)).float().cpu()
    return _normalise(cam) if scale else cam


def attention_gradients(model: nn.Module, x: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention [L, H, N, N] and d y_target / d attention, from one forward/backward."""
    with hooks.using(model), hooks.attention_probabilities(model, keep_grad=True) as recs:
        hooks.backward_on(model, x, target)
    attn = torch.stack([r["attn"].detach()[0] for r in recs]).float().cpu()
    grad = torch.stack([r["grad"].detach()[0] for r in recs]).float().cpu()
    return attn, grad


def chefer_relevance(attn: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Relevance matrix [N, N]: R = I; R += mean_h((grad ⊙ A)^+) @ R per block."""
    n = attn.shape[-1]
    R = torch.eye(n)
    for a, g in zip(attn, grad):
        cam = (g * a).clamp(min=0).mean(0)
        R = R + cam @ R
    return R


def gradient_rollout(attn: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Rollout [N, N] of the gradient-weighted attention ReLU(mean_h(grad ⊙ A))."""
    n = attn.shape[-1]
    eye = torch.eye(n)
    result = None
    for a, g in zip(attn, grad):
        w = (g * a).mean(0).clamp(min=0)
        s = w.sum(-1, keepdim=True)
        w = torch.where(s > 0, w / s.clamp_min(1e-30), torch.zeros_like(w))
        w = 0.5 * w + 0.5 * eye
        w = w / w.sum(-1, keepdim=True)
        result = w if result is None else w @ result
    return result


def relevance_map(R: torch.Tensor, layout: TokenLayout, query: int | None = None) -> np.ndarray:
    """The query's row of a relevance matrix over patch tokens, as the [rows, cols] grid (numpy)."""
    return query_row(R, layout, query)[layout.num_prefix:].reshape(layout.grid)
