"""Attention maps for a query token, and the per-head statistics behind the TUI's grid.

Conventions (also shown in the UI and written to exports):
- Query: a token index (0..N-1, prefix tokens first, then patches row-major). ``None`` means the CLS
  token, or for models without one (global average pooling) the mean over all patch queries — the
  average of the rows whose outputs are pooled into the prediction.
- A map is the query's attention row over patch tokens, reshaped to the (rows, cols) patch grid.
  Attention to prefix tokens (CLS, distillation, registers) is returned separately. With
  ``renormalise=True`` the patch part is divided by its sum, so maps are comparable even when
  register/artifact tokens take most of the mass.
- Heads: an int selects one head; "mean" / "max" fuse the heads' rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..spec import TokenLayout

HeadSel = int | str  # an index, "mean" or "max"


@dataclass
class AttentionMap:
    grid: torch.Tensor  # [rows, cols] attention of the query to each patch
    prefix: torch.Tensor  # [P] attention of the query to each prefix token
    query: str  # description of the query, e.g. "CLS" or "patch (3, 4)" or "mean of patch queries"
    head: str
    layer: int
    renormalised: bool


def query_weights(layout: TokenLayout, query: int | None) -> torch.Tensor:
    """A weight per query row: one-hot for a token, uniform over patches when there is no CLS."""
    w = torch.zeros(layout.num_tokens)
    if query is None:
        if layout.cls_index is not None:
            w[layout.cls_index] = 1.0
        else:
            w[layout.num_prefix:] = 1.0 / layout.num_patches
    else:
        if not 0 <= query < layout.num_tokens:
            raise IndexError(f"token {query} is out of range (0..{layout.num_tokens - 1})")
        w[query] = 1.0
    return w


def describe_query(layout: TokenLayout, query: int | None) -> str:
    if query is None:
        return "CLS" if layout.cls_index is not None else "mean of patch queries (no CLS token)"
    return layout.token_name(query)


def fuse_heads(attn_layer: torch.Tensor, head: HeadSel) -> torch.Tensor:
    """[H, N, N] -> [N, N] for one head or the mean / max over heads."""
    if isinstance(head, int):
        return attn_layer[head]
    if head == "mean":
        return attn_layer.mean(0)
    if head == "max":
        return attn_layer.amax(0)
    if head == "min":
        return attn_layer.amin(0)
    raise ValueError(f"unknown head selection {head!r}")


def query_row(matrix: torch.Tensor, layout: TokenLayout, query: int | None) -> torch.Tensor:
    """The (weighted) query row of an [N, N] matrix."""
    return query_weights(layout, query).to(matrix.dtype) @ matrix


def attention_map(attn: torch.Tensor, layout: TokenLayout, layer: int, head: HeadSel = "mean",
                  query: int | None = None, renormalise: bool = False) -> AttentionMap:
    """The query's attention over the patch grid at one layer (``attn`` is the Trace's [L, H, N, N])."""
    row = query_row(fuse_heads(attn[layer], head), layout, query)
    p = layout.num_prefix
    patches = row[p:]
    if renormalise:
        patches = patches / patches.sum().clamp_min(1e-12)
    return AttentionMap(grid=patches.reshape(layout.grid), prefix=row[:p], query=describe_query(layout, query),
                        head=str(head), layer=layer, renormalised=renormalise)


def patch_distances(layout: TokenLayout) -> torch.Tensor:
    """[P, P] Euclidean distance between patch centres, in patches."""
    rows, cols = layout.grid
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    pos = torch.stack([r.flatten(), c.flatten()], 1).float()
    return torch.cdist(pos, pos)


def head_statistics(attn: torch.Tensor, layout: TokenLayout, query: int | None = None) -> dict[str, torch.Tensor]:
    """Per layer x head statistics of the query row, each [L, H].

    - ``entropy``: Shannon entropy (nats) of the query's attention row over all tokens.
    - ``distance``: mean attention distance in patches. For a patch query, the expected distance from
      that patch to the patches it attends (patch mass renormalised). For the CLS (or no-CLS default)
      query, which has no position, the ViT paper's definition: the mean over all patch queries.
    - ``prefix``: attention mass the query puts on prefix tokens (CLS, distillation, registers).
    """
    w = query_weights(layout, query)  # [N]
    p = layout.num_prefix
    rows = torch.einsum("n,lhnm->lhm", w, attn)  # [L, H, N]
    entropy = -(rows * rows.clamp_min(1e-30).log()).sum(-1)
    prefix = rows[..., :p].sum(-1)
    dist = patch_distances(layout)  # [P, P]
    pp = attn[..., p:, p:]  # patch queries to patch keys [L, H, P, P]
    pp = pp / pp.sum(-1, keepdim=True).clamp_min(1e-12)
    per_query = (pp * dist).sum(-1)  # [L, H, P]
    if query is not None and query >= p:
        distance = per_query[..., query - p]
    else:
        distance = per_query.mean(-1)
    return {"entropy": entropy, "distance": distance, "prefix": prefix}
