"""Context perturbations (Vilas et al. 2023, section 4.2): how much image tokens' class
identifiability depends on attending to other tokens.

In every block the attention probabilities of the image tokens' rows are changed after the softmax,
without renormalising (as the authors' ``vit_edited.py``): ``no_cls`` zeroes their weight on the
CLS token; ``self_only`` makes each image token attend only to itself. Identifiability is then read
at the last block's output (paper projection: final norm + head), over image tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .hooks import activation, attention_override, device_of, using
from .projection import ProjectionPath, class_identifiability

if TYPE_CHECKING:
    from ..spec import TokenLayout

PERTURBATIONS = ("none", "no_cls", "self_only")


def perturbed_attention(kind: str, layout: "TokenLayout"):
    """The change applied to probabilities [B, H, N, N] for one perturbation."""
    p = layout.num_prefix

    def no_cls(a: torch.Tensor) -> torch.Tensor:
        a = a.clone()
        a[:, :, p:, layout.cls_index] = 0.0
        return a

    def self_only(a: torch.Tensor) -> torch.Tensor:
        a = a.clone()
        n = a.shape[-1]
        a[:, :, p:, :] = torch.eye(n, dtype=a.dtype, device=a.device)[p:]
        return a

    return {"none": lambda a: a, "no_cls": no_cls, "self_only": self_only}[kind]


@dataclass
class ContextPerturbation:
    """One entry per perturbation in ``names`` (NaN where the model cannot have it: no CLS)."""

    names: tuple[str, ...]
    identifiability: torch.Tensor  # [P] share of image tokens ranking the target first at the last block
    identifiability_r: torch.Tensor  # [P] mean 1 - rank/C over image tokens at the last block
    logits: torch.Tensor  # [P, C] the model's output under each perturbation


@torch.no_grad()
def context_perturbation(model: nn.Module, x: torch.Tensor, layout: "TokenLayout", target: int) -> ContextPerturbation:
    path = ProjectionPath.from_model(model)
    ident, ident_r, logits = [], [], []
    for kind in PERTURBATIONS:
        if kind == "no_cls" and layout.cls_index is None:
            ident.append(float("nan"))
            ident_r.append(float("nan"))
            logits.append(torch.full((path.head.out_features,), float("nan")))
            continue
        with using(model), attention_override(model, perturbed_attention(kind, layout)), \
                activation(model.blocks[-1], keep_grad=False) as last:
            out = model(x[None].to(device_of(model)))
        r = class_identifiability(path(last["act"][0]), target)[layout.num_prefix:]
        ident.append(float((r == 1.0).float().mean()))
        ident_r.append(float(r.mean()))
        logits.append(out[0].float().cpu())
    return ContextPerturbation(PERTURBATIONS, torch.tensor(ident), torch.tensor(ident_r), torch.stack(logits))
