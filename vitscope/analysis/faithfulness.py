"""Faithfulness of a map: deletion and insertion curves (Petsiuk et al. 2018, RISE).

Patches are taken in the order of the map's score (highest first). Deletion replaces them, step by
step, with the baseline (zero in normalised input space: the dataset mean colour); insertion starts
from a blurred image and puts the original patches back. At each step the probability of the class
(the prediction on the original image unless a target is given) is recorded; the AUC is the
trapezoid rule over the fraction of patches in [0, 1]. Lower deletion AUC and higher insertion AUC
mean a more faithful map. All perturbed images of a curve run as batches. A seeded random map is
the baseline.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import hooks

MAX_STEPS = 50


@dataclass
class Curve:
    fractions: np.ndarray
    probs: np.ndarray
    auc: float


def _blur(x: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    h = x.shape[-1]
    k = max(3, (h // 8) | 1)
    return gaussian_blur(x, [k, k], [k / 2.0, k / 2.0])


def _patch_masks(order: np.ndarray, grid: tuple[int, int], size: tuple[int, int], steps: list[int]) -> torch.Tensor:
    """[S, 1, H, W] masks: 1 where the first ``steps[s]`` patches (in ``order``) are taken."""
    rows, cols = grid
    H, W = size
    ri = (torch.arange(H) * rows) // H
    ci = (torch.arange(W) * cols) // W
    patch_id = (ri[:, None] * cols + ci[None, :])  # [H, W]
    rank = torch.empty(rows * cols, dtype=torch.long)
    rank[torch.as_tensor(order)] = torch.arange(rows * cols)
    pr = rank[patch_id]  # the step at which each pixel's patch is taken
    return torch.stack([(pr < k).float() for k in steps])[:, None]


@torch.inference_mode()
def deletion_insertion(model: nn.Module, x: torch.Tensor, saliency: np.ndarray | torch.Tensor,
                       target: int | None = None, batch_size: int = 64) -> tuple[Curve, Curve]:
    """Deletion and insertion curves of one map ([rows, cols]) for one normalised input [C, H, W]."""
    device = next(model.parameters()).device
    sal = np.asarray(saliency, dtype=np.float64)
    grid = sal.shape
    n = sal.size
    order = np.argsort(-sal.flatten(), kind="stable")
    steps = sorted(set(np.linspace(0, n, min(n, MAX_STEPS) + 1).round().astype(int).tolist()))
    masks = _patch_masks(order, grid, x.shape[-2:], steps)
    x = x.float()
    blurred = _blur(x[None])[0]
    curves = []
    with hooks.using(model):
        if target is None:
            target = int(model(x[None].to(device)).argmax())
        batches = []
        for start, end in ((x, torch.zeros_like(x)), (blurred, x)):
            imgs = start[None] * (1 - masks) + end[None] * masks  # taken patches come from ``end``
            batches.append([model(imgs[s:s + batch_size].to(device)).float().softmax(-1)[:, target].cpu()
                            for s in range(0, len(imgs), batch_size)])
    for probs in batches:
        p = torch.cat(probs).numpy()
        fr = np.asarray(steps, dtype=np.float64) / n
        curves.append(Curve(fr, p, float(np.trapezoid(p, fr) if hasattr(np, "trapezoid") else np.trapz(p, fr))))
    return curves[0], curves[1]


def random_map(grid: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(grid)
