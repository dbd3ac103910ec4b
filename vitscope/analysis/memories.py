"""Key-value memories in class-embedding space (Vilas et al. 2023, section 5; after Geva et al.).

A sublayer's output is a sum of value vectors weighted by coefficients: the columns of ``attn.proj``
weighted by its input (each head's attention-weighted values), the columns of ``mlp.fc2`` weighted
by the hidden activations. Projected on the class embedding (the head's weight, no final norm: as the
authors' ``memories.py``), each value vector is a column of class scores ``val_proj = head.W @ W``
[C, M]. From these:

- class-value agreement: per class, the highest cosine between its class embedding and a value
  vector (head rows and value columns normalised), against the same on a randomly initialised copy
  of the model (the authors' baseline; they also mutate the model's weights in place to normalise,
  which we do not);
- key-value agreement: per token, whether one of its top-k most activated memories (largest
  coefficients; for the MLP the ``fc1`` output, as the authors read it — GELU is increasing on the
  positive side, so the top-k are the same after it whenever k coefficients are positive) is one of
  the target class's top-k memories (largest scores in its row of ``val_proj``); the chance level is
  the same averaged over every class (the authors draw one random class per image);
- compositionality: per token, whether the sublayer output's top class is the top class of one of
  its top-k memories.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .hooks import device_of, memory_coefficients, using

if TYPE_CHECKING:
    from ..tracing import Trace

KINDS = ("attn", "mlp")


def value_weights(block: nn.Module, kind: str) -> torch.Tensor:
    """The value vectors of a sublayer as columns, [D, M]: ``attn.proj`` or ``mlp.fc2`` weights."""
    return (block.attn.proj if kind == "attn" else block.mlp.fc2).weight.detach()


@torch.no_grad()
def value_projections(model: nn.Module, kind: str) -> torch.Tensor:
    """[L, C, M]: every value vector of every block scored against every class embedding."""
    head = model.head.weight.detach()
    return torch.stack([head @ value_weights(blk, kind) for blk in model.blocks]).float().cpu()


@torch.no_grad()
def class_value_agreement(model: nn.Module, kind: str) -> torch.Tensor:
    """[L, C]: per block and class, the highest cosine between the class embedding and a value vector."""
    head = model.head.weight.detach()
    head = head / head.norm(dim=-1, keepdim=True)
    out = []
    for blk in model.blocks:
        w = value_weights(blk, kind)
        out.append((head @ (w / w.norm(dim=0, keepdim=True))).max(dim=1).values)
    return torch.stack(out).float().cpu()


def random_init_copy(arch: str, kwargs: dict[str, Any], seed: int = 0) -> nn.Module:
    """A randomly initialised model of the same architecture (timm's own initialisation), seeded."""
    import timm

    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, **kwargs).eval()


@torch.no_grad()
def coefficients(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``attn`` [L, N, D] and ``mlp`` [L, N, M]: each block's memory coefficients for one input [C, H, W]."""
    with using(model), memory_coefficients(model) as store:
        model(x[None].to(device_of(model)))
    return {kind: torch.stack([s[kind][0] for s in store]).float().cpu() for kind in KINDS}


def top_memories(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries along the last axis."""
    return values.topk(min(k, values.shape[-1]), dim=-1).indices


def agreement_by_class(coeff: torch.Tensor, val_proj: torch.Tensor, k: int = 5) -> torch.Tensor:
    """[C, N] bool, one block: token n's top-k memories include one of class c's top-k memories."""
    C, M = val_proj.shape
    class_mask = torch.zeros(C, M, dtype=torch.bool)
    class_mask.scatter_(1, top_memories(val_proj, k), True)
    return class_mask[:, top_memories(coeff, k)].any(-1)  # [C, N, k] -> [C, N]


def composition(coeff: torch.Tensor, val_proj: torch.Tensor, sublayer_top: torch.Tensor, k: int = 5) -> torch.Tensor:
    """[N] bool, one block: the sublayer output's top class is the top class of one of the token's
    top-k memories."""
    memory_class = val_proj.argmax(0)  # [M]
    return (memory_class[top_memories(coeff, k)] == sublayer_top[:, None]).any(-1)


@dataclass
class Memories:
    """Per sublayer kind ("attn", "mlp"): [L] rates over all tokens and [L, C] agreements."""

    target: int
    kv_agreement: dict[str, torch.Tensor]  # [L] share of tokens agreeing with the target's memories
    kv_agreement_chance: dict[str, torch.Tensor]  # [L] the same averaged over every class
    composition: dict[str, torch.Tensor]  # [L] share of tokens whose update's top class is a memory's
    class_value: dict[str, torch.Tensor]  # [L, C]
    class_value_random: dict[str, torch.Tensor] | None = None  # [L, C] on a random-init copy


def memories(trace: "Trace", model: nn.Module, target: int, sublayer_top: dict[str, torch.Tensor],
             k: int = 5, random_model: nn.Module | None = None) -> Memories:
    """Key-value memory analyses of one image. ``sublayer_top[kind]`` [L, N]: the top class of each
    token's projected attention / MLP update (``Projections.attn_topk_idx[..., 0]``)."""
    coeff = coefficients(model, trace.input)
    kv, chance, comp, cv, cv_random = {}, {}, {}, {}, {}
    for kind in KINDS:
        vp = value_projections(model, kind)
        by_class = [agreement_by_class(coeff[kind][b], vp[b], k).float() for b in range(vp.shape[0])]
        kv[kind] = torch.stack([a[target].mean() for a in by_class])
        chance[kind] = torch.stack([a.mean() for a in by_class])
        comp[kind] = torch.stack([composition(coeff[kind][b], vp[b], sublayer_top[kind][b].long(), k).float().mean()
                                  for b in range(vp.shape[0])])
        cv[kind] = class_value_agreement(model, kind)
        if random_model is not None:
            cv_random[kind] = class_value_agreement(random_model, kind)
    return Memories(target=target, kv_agreement=kv, kv_agreement_chance=chance, composition=comp, class_value=cv,
                    class_value_random=cv_random or None)
