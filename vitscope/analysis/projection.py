"""Class-embedding projections (Vilas, Schaumloeffel & Roig 2023, arXiv 2310.18969).

Every hidden vector (block outputs, and the attention / MLP updates) is projected onto the classes
with the model's own final norm and classifier: logits = head(norm(h)). Three conventions, always
labelled (they differ in where the updates are read and in how the path is applied):

- ``"paper"`` (default): the updates are read where the authors' code reads them, at the outputs of
  ``attn.proj`` and ``mlp.fc2`` — *before* LayerScale (for a post-norm ``ResPostBlock``, GAP model,
  through the block's ``norm1``/``norm2``, which is what that block adds); the final norm is
  recomputed on each vector (its weight and bias), then the head with its bias: exactly the model's
  own output path.
- ``"stream"``: the same path, with the updates read as they are added to the stream (after
  LayerScale). Identical to ``paper`` for models without LayerScale.
- ``"lens"``: the logit-lens style of TransformerLens-like tools, on the updates as added to the
  stream: each vector is standardised and scaled by the final norm's weight only (no norm bias),
  then multiplied by the head's weight (no head bias).

Block outputs are the same under every read point. Rates (all over image tokens, comparing the
target's logit; "logit" here is the projected class score, not a probability, as in the authors'
code): the attention (MLP) update rate is the share whose update scores the target higher than the
previous block's output does (the authors' "class similarity change rate"), the block change rate
the share whose block output scores it higher than the previous block's output does. The residual
match is the share of all tokens whose block output's top-1 class is the previous block output's,
the attention update's, the MLP update's top-1, or none of them (the authors' code compares the
attention update twice and never the MLP update in "none": we follow the paper).

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

CONVENTIONS = ("paper", "stream", "lens")
RESIDUAL_SOURCES = ("previous", "attn", "mlp", "none")


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
        if convention in ("paper", "stream"):
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
    read_point: str  # where the attention / MLP updates were read, in words
    target_source: str  # "label" (the dataset's), "prediction" or "chosen"
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
    block_change_rate: torch.Tensor | None = None  # [L] block output vs the previous block's output
    residual_match: torch.Tensor | None = None  # [L, 4] see RESIDUAL_SOURCES
    read_point_short: str = ""  # the read point in a title's few words ("" when it is the stream's update)


def class_identifiability(logits: torch.Tensor, target: int) -> torch.Tensor:
    """r = 1 - rank/C with rank 0-based (the top class gives 1), for logits [..., C]."""
    C = logits.shape[-1]
    rank = (logits > logits[..., target:target + 1]).sum(-1)
    return 1.0 - rank.float() / C


def sublayer_updates(trace: "Trace", convention: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention and MLP updates [L, N, D] at the convention's read point."""
    attn_proj, mlp_fc2 = getattr(trace, "attn_proj", None), getattr(trace, "mlp_fc2", None)
    if convention == "paper" and attn_proj is not None and mlp_fc2 is not None:
        return attn_proj, mlp_fc2
    return trace.attn_out, trace.mlp_out


def read_point(model: nn.Module, convention: str, short: bool = False) -> str:
    from .hooks import paper_read_point, read_point_short, stream_read_point

    blk = model.blocks[0]
    if short:
        return read_point_short(blk, convention)
    return paper_read_point(blk) if convention == "paper" else stream_read_point(blk)


def _residual_match(block: torch.Tensor, prev: torch.Tensor, attn: torch.Tensor, mlp: torch.Tensor) -> torch.Tensor:
    top = block.argmax(-1)
    same = [top == x.argmax(-1) for x in (prev, attn, mlp)]
    none = ~(same[0] | same[1] | same[2])
    return torch.stack([*same, none], -1).float().mean(1)  # [L, 4]


def project_trace(trace: "Trace", model: nn.Module, target: int | None = None, convention: str = "paper",
                  k: int = 5, target_source: str | None = None) -> Projections:
    """Project every token of every layer of a Trace onto the classes (see module docstring).

    ``target`` None means the prediction; ``target_source`` says where a given target came from
    ("label" when it is the dataset's label, the paper's choice; default "chosen")."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r} (use {', '.join(CONVENTIONS)})")
    path = ProjectionPath.from_model(model)
    source = "prediction" if target is None else (target_source or "chosen")
    target = trace.prediction if target is None else int(target)
    attn_h, mlp_h = sublayer_updates(trace, convention)
    with using(model):
        block = path(trace.resid[1:], convention)  # [L, N, C]
        attn = path(attn_h, convention)
        mlp = path(mlp_h, convention)
        prev = path(trace.resid[:-1], convention)  # the previous block's output (the stream entering)
    p = trace.layout.num_prefix
    kk = min(k, block.shape[-1])
    top = block.softmax(-1).topk(kk, -1)
    top_attn, top_mlp = attn.softmax(-1).topk(kk, -1), mlp.softmax(-1).topk(kk, -1)
    r = class_identifiability(block, target)
    img = slice(p, None)

    def rate(x: torch.Tensor) -> torch.Tensor:
        return (x[:, img, target] > prev[:, img, target]).float().mean(-1)

    return Projections(
        rank=(block > block[..., target:target + 1]).sum(-1).to(torch.int32),
        attn_topk_idx=top_attn.indices.to(torch.int32), attn_topk_prob=top_attn.values,
        mlp_topk_idx=top_mlp.indices.to(torch.int32), mlp_topk_prob=top_mlp.values,
        convention=convention, target=target, read_point=read_point(model, convention), target_source=source,
        read_point_short=read_point(model, convention, short=True),
        topk_idx=top.indices.to(torch.int32), topk_prob=top.values,
        target_logit=block[..., target], attn_target_logit=attn[..., target], mlp_target_logit=mlp[..., target],
        identifiability=(r[:, img] == 1.0).float().mean(-1), identifiability_r=r[:, img].mean(-1), r=r,
        attn_update_rate=rate(attn), mlp_update_rate=rate(mlp), block_change_rate=rate(block),
        residual_match=_residual_match(block, prev, attn, mlp),
    )
