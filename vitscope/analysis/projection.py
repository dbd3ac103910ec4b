"""Class-embedding projections (Vilas, Schaumloeffel & Roig 2023, arXiv 2310.18969).

Every hidden vector (block outputs, and the attention / MLP updates as they enter the residual
stream, after LayerScale) is projected onto the classes with the model's own final norm and
classifier: logits = head(norm(h)). Two conventions, always labelled:

- ``"paper"`` (default): the final norm is recomputed on each vector (its weight and bias), then the
  head with its bias: exactly the model's own output path.
- ``"lens"``: the logit-lens style of TransformerLens-like tools: each vector is standardised and
  scaled by the final norm's weight only (no norm bias), then multiplied by the head's weight (no
  head bias).

The path is the model's pooling path applied per token: for CLS-token models ``norm`` then
``head``; for global-average-pool models (no CLS, ``fc_norm``) ``fc_norm`` then ``head`` — so the
projection of the mean patch vector of the last layer is the model's logits. Distilled models are
projected with the CLS classifier (``head``); attention-pool (``map``) models skip the pool.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import using

if TYPE_CHECKING:
    from ..tracing import Trace

CONVENTIONS = ("paper", "lens")


@dataclass
class ProjectionPath:
    """The final norm(s) and classifier, extracted once from a timm ViT."""

    norms: list[nn.Module]
    head: nn.Linear

    @classmethod
    def from_model(cls, model: nn.Module) -> "ProjectionPath":
        head = getattr(model, "head", None)
        if head is None and hasattr(model, "get_classifier"):
            head = model.get_classifier()
        if not isinstance(head, nn.Linear):
            raise ValueError("class projections need a linear classifier head; this model's head is "
                             f"{type(head).__name__} (a backbone without classes)")
        norms = [m for m in (getattr(model, "norm", None), getattr(model, "fc_norm", None))
                 if m is not None and not isinstance(m, nn.Identity)]
        return cls(norms=norms, head=head)

    @torch.no_grad()
    def __call__(self, h: torch.Tensor, convention: str = "paper") -> torch.Tensor:
        """[..., D] -> [..., C] class logits."""
        h = h.to(self.head.weight.dtype).to(self.head.weight.device)
        if convention == "paper":
            for n in self.norms:
                h = n(h)
            return self.head(h).float().cpu()
        if convention == "lens":
            for n in self.norms:
                h = F.layer_norm(h, n.normalized_shape, n.weight, None, n.eps)
            return (h @ self.head.weight.T).float().cpu()
        raise ValueError(f"unknown convention {convention!r} (use {', '.join(CONVENTIONS)})")


@dataclass
class Projections:
    """Everything the projection pane and the export need, for one image and one target class."""

    convention: str
    target: int
    topk_idx: torch.Tensor  # [L, N, k] block outputs' top classes
    topk_prob: torch.Tensor  # [L, N, k]
    target_logit: torch.Tensor  # [L, N] block output
    attn_target_logit: torch.Tensor  # [L, N] attention update
    mlp_target_logit: torch.Tensor  # [L, N] MLP update
    identifiability: torch.Tensor  # [L] share of image tokens whose block output ranks the target first
    identifiability_r: torch.Tensor  # [L] mean of 1 - rank/C over image tokens
    r: torch.Tensor  # [L, N] 1 - rank/C per token
    attn_update_rate: torch.Tensor  # [L]
    mlp_update_rate: torch.Tensor  # [L]
    rank: torch.Tensor | None = None  # [L, N] 0-based rank of the target for the block output
    attn_topk_idx: torch.Tensor | None = None  # [L, N, k] the attention update's top classes
    attn_topk_prob: torch.Tensor | None = None
    mlp_topk_idx: torch.Tensor | None = None  # [L, N, k] the MLP update's top classes
    mlp_topk_prob: torch.Tensor | None = None


def class_identifiability(logits: torch.Tensor, target: int) -> torch.Tensor:
    """r = 1 - rank/C with rank 0-based (the top class gives 1), for logits [..., C]."""
    C = logits.shape[-1]
    rank = (logits > logits[..., target:target + 1]).sum(-1)
    return 1.0 - rank.float() / C


def project_trace(trace: "Trace", model: nn.Module, target: int | None = None, convention: str = "paper",
                  k: int = 5) -> Projections:
    """Project every token of every layer of a Trace onto the classes (see module docstring)."""
    path = ProjectionPath.from_model(model)
    target = trace.prediction if target is None else int(target)
    with using(model):
        block = path(trace.resid[1:], convention)  # [L, N, C]
        attn = path(trace.attn_out, convention)
        mlp = path(trace.mlp_out, convention)
        prev = path(trace.resid[:-1], convention)  # the previous block's output (the stream entering)
    p = trace.layout.num_prefix
    kk = min(k, block.shape[-1])
    top = block.softmax(-1).topk(kk, -1)
    top_attn, top_mlp = attn.softmax(-1).topk(kk, -1), mlp.softmax(-1).topk(kk, -1)
    r = class_identifiability(block, target)
    img = slice(p, None)
    return Projections(
        rank=(block > block[..., target:target + 1]).sum(-1).to(torch.int32),
        attn_topk_idx=top_attn.indices.to(torch.int32), attn_topk_prob=top_attn.values,
        mlp_topk_idx=top_mlp.indices.to(torch.int32), mlp_topk_prob=top_mlp.values,
        convention=convention, target=target, topk_idx=top.indices.to(torch.int32), topk_prob=top.values,
        target_logit=block[..., target], attn_target_logit=attn[..., target], mlp_target_logit=mlp[..., target],
        identifiability=(r[:, img] == 1.0).float().mean(-1), identifiability_r=r[:, img].mean(-1), r=r,
        attn_update_rate=(attn[:, img, target] > prev[:, img, target]).float().mean(-1),
        mlp_update_rate=(mlp[:, img, target] > prev[:, img, target]).float().mean(-1),
    )
