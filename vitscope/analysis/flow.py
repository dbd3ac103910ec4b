"""Attention flow (Abnar & Zuidema 2020): max-flow through the layered attention graph.

Nodes are (layer, token) for layers 0..L; an edge from token j at layer l to token i at layer l+1 has
capacity A_l[i, j] of the residual-augmented, row-normalised attention (0.5*A + 0.5*I, heads fused by
mean). The flow of input token j to output token q is the maximum flow from (0, j) to (L, q).
scipy's integer max-flow is used with capacities scaled by 1e6. Cost grows as N^2 * L per flow and
N flows per query, so models over ``MAX_EDGES`` edges are refused with a clear message.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..spec import TokenLayout

MAX_TOKENS = 200
MAX_EDGES = 300_000
SCALE = 1_000_000


class FlowTooLarge(ValueError):
    pass


def check_flow_size(num_layers: int, num_tokens: int) -> None:
    edges = num_layers * num_tokens * num_tokens
    if num_tokens > MAX_TOKENS or edges > MAX_EDGES:
        raise FlowTooLarge(f"attention flow is offered for up to {MAX_TOKENS} tokens and {MAX_EDGES:,} graph edges; "
                           f"this model has {num_tokens} tokens x {num_layers} layers = {edges:,} edges "
                           "(use rollout instead)")


def attention_flow(attn: torch.Tensor, layout: TokenLayout, query: int | None = None) -> tuple[torch.Tensor, dict]:
    """Flow from every input patch to the query token (CLS, or each patch query averaged) -> [rows, cols]."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow

    L, _, N, _ = attn.shape
    check_flow_size(L, N)
    t0 = time.perf_counter()
    a = attn.float().mean(1)
    a = 0.5 * a + 0.5 * torch.eye(N)
    a = (a / a.sum(-1, keepdim=True)).numpy()
    rows, cols, caps = [], [], []
    for layer in range(L):
        i, j = np.nonzero(a[layer] > 0)
        rows.append(layer * N + j)  # from token j at this layer
        cols.append((layer + 1) * N + i)  # to token i at the next
        caps.append(np.maximum(1, np.rint(a[layer][i, j] * SCALE)).astype(np.int32))
    n_nodes = (L + 1) * N
    graph = csr_matrix((np.concatenate(caps), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(n_nodes, n_nodes))
    p = layout.num_prefix
    queries = ([query] if query is not None else
               [layout.cls_index] if layout.cls_index is not None else list(range(p, N)))
    flows = np.zeros(N - p)
    for q in queries:
        sink = L * N + q
        for j in range(p, N):
            flows[j - p] += maximum_flow(graph, j, sink).flow_value / SCALE
    flows /= len(queries)
    info = {"seconds": time.perf_counter() - t0, "edges": int(graph.nnz), "flows": len(queries) * (N - p)}
    return torch.from_numpy(flows).float().reshape(layout.grid), info
