"""Per-block and per-head explainability maps for a class (Vilas et al. 2023, section 6).

For block b, the attention update of the query token (CLS by default), read at the paper's point
(``attn.proj``'s output; ``norm1``'s in a post-norm block), is projected onto the classes (final
norm + head) and scored with the cross-entropy loss of the class. The map of head h is minus the
gradient of that loss with respect to the query's attention weights to every patch: positive where
attending more would raise the class. Block b's loss is differentiated with respect to block b's own
attention only. The paper's summary picture is the sum over blocks and heads.

``loss="paper"`` is the cross-entropy of the projected logits; ``loss="code"`` reproduces the
authors' ``gradients.py``, which applies a softmax before ``CrossEntropyLoss`` (a second softmax).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import attention_probabilities, input_gradients, paper_attention_updates, using
from .projection import ProjectionPath

if TYPE_CHECKING:
    from ..spec import TokenLayout

LOSSES = ("paper", "code")


def _loss(logits: torch.Tensor, target: int, loss: str) -> torch.Tensor:
    if loss == "code":
        logits = logits.softmax(-1)
    elif loss != "paper":
        raise ValueError(f"unknown loss {loss!r} (use {', '.join(LOSSES)})")
    return F.cross_entropy(logits[None], torch.tensor([target], device=logits.device))


def class_attention_maps(model: nn.Module, x: torch.Tensor, target: int, layout: "TokenLayout",
                         token: int | None = None, loss: str = "paper") -> torch.Tensor:
    """[L, H, rows, cols]: minus d(loss of ``target`` on the projected attention update of ``token``)
    / d(``token``'s attention weights to the patches), per block and head. ``token`` None is CLS."""
    q = layout.cls_index if token is None else token
    if q is None:
        raise ValueError("class maps need a query token: this model has no CLS token")
    path = ProjectionPath.from_model(model)
    p = layout.num_prefix
    maps = []
    with using(model), input_gradients(model, x) as xb, attention_probabilities(model) as attn, \
            paper_attention_updates(model) as updates:
        model(xb)
        for rec, upd in zip(attn, updates):
            h = upd["update"][0, q]
            for n in path.norms:
                h = n(h)
            grad = torch.autograd.grad(_loss(path.head(h), target, loss), rec["attn"], retain_graph=True)[0]
            maps.append(-grad[0, :, q, p:].detach().float().cpu())  # [H, patches]
    return torch.stack(maps).reshape(len(maps), maps[0].shape[0], *layout.grid)
