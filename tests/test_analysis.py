"""Attention maps, rollout and head statistics against independent (numpy, loop-based) computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitscope.analysis import attention_map, attention_rollout, head_statistics, rollout_map
from vitscope.spec import TokenLayout


def random_attention(L=3, H=4, N=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(L, H, N, N, generator=g), -1)


def numpy_rollout(attn, fusion="mean", discard=0.0, start=0):
    """Abnar & Zuidema rollout written independently with explicit loops."""
    a = attn.numpy().astype(np.float64)
    result = None
    for layer in range(start, a.shape[0]):
        f = {"mean": a[layer].mean(0), "max": a[layer].max(0), "min": a[layer].min(0)}[fusion]
        if discard:
            flat = f.flatten()
            k = int(flat.size * discard)
            order = np.argsort(flat, kind="stable")
            flat[order[:k]] = 0
            f = flat.reshape(f.shape)
        f = 0.5 * f + 0.5 * np.eye(f.shape[0])
        for i in range(f.shape[0]):
            f[i] /= f[i].sum()
        result = f if result is None else f @ result
    return result


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard", [0.0, 0.5, 0.9])
def test_rollout_matches_independent_numpy(fusion, discard):
    attn = random_attention()
    got = attention_rollout(attn, fusion, discard)
    want = numpy_rollout(attn, fusion, discard)
    assert np.abs(got - want).max() < 1e-5
    assert np.allclose(got.sum(-1), 1, atol=1e-5)  # rows, not columns, sum to one


def test_rollout_start_layer_and_rows_normalised():
    attn = random_attention(L=4)
    got = attention_rollout(attn, start_layer=2)
    assert np.abs(got - numpy_rollout(attn, start=2)).max() < 1e-5


def test_rollout_of_identity_attention_is_identity():
    n = 10
    attn = torch.eye(n).expand(3, 2, n, n)
    assert np.allclose(attention_rollout(attn), np.eye(n), atol=1e-6)


def test_rollout_differs_from_vit_explain_column_normalisation():
    """vit-explain divides by a.sum(dim=-1) broadcast over columns; we normalise rows. The two agree
    only while rows already sum to one (mean fusion, no discard); with max fusion they differ."""
    attn = random_attention(L=1, H=3, N=5)
    a = 0.5 * attn[0].amax(0) + 0.5 * torch.eye(5)
    vit_explain = a / a.sum(dim=-1)
    ours = attention_rollout(attn, "max")
    assert not np.allclose(ours, vit_explain.numpy(), atol=1e-3)
    assert np.allclose(ours.sum(-1), np.ones(5))


def test_rollout_map_reads_query_row_on_grid():
    layout = TokenLayout(("cls", "reg0"), (3, 5))
    attn = random_attention(N=17)
    R = attention_rollout(attn)
    assert np.allclose(rollout_map(R, layout), R[0, 2:].reshape(3, 5))
    assert np.allclose(rollout_map(R, layout, 7), R[7, 2:].reshape(3, 5))
    no_cls = TokenLayout((), (4, 4))
    R16 = attention_rollout(random_attention(N=16))
    assert np.allclose(rollout_map(R16, no_cls), R16.mean(0).reshape(4, 4), atol=1e-6)


def test_attention_map_heads_queries_and_prefix():
    layout = TokenLayout(("cls", "dist"), (3, 5))
    attn = random_attention(N=17)
    m = attention_map(attn, layout, layer=1, head=2, query=None)
    assert np.allclose(m.grid, attn[1, 2, 0, 2:].reshape(3, 5))
    assert np.allclose(m.prefix, attn[1, 2, 0, :2])
    mean = attention_map(attn, layout, 1, "mean", query=layout.patch_token(1, 2))
    assert np.allclose(mean.grid, attn[1, :, 2 + 7, 2:].mean(0).reshape(3, 5))
    mx = attention_map(attn, layout, 0, "max", None)
    assert np.allclose(mx.grid, attn[0, :, 0, 2:].amax(0).reshape(3, 5))
    r = attention_map(attn, layout, 1, 2, None, renormalise=True)
    assert np.isclose(r.grid.sum(), 1.0)
    assert np.allclose(r.grid, m.grid / m.grid.sum())
    assert m.query == "CLS" and mean.query == "patch (1, 2)"


def test_attention_map_without_cls_defaults_to_mean_patch_query():
    layout = TokenLayout((), (4, 4))
    attn = random_attention(N=16)
    m = attention_map(attn, layout, 0, 1)
    assert np.allclose(m.grid, attn[0, 1].mean(0).reshape(4, 4), atol=1e-6)
    assert "mean of patch queries" in m.query
    with pytest.raises(IndexError):
        attention_map(attn, layout, 0, 1, query=16)


def test_head_statistics_against_loops():
    layout = TokenLayout(("cls",), (4, 4))
    attn = random_attention(L=2, H=3, N=17).double()
    stats = head_statistics(attn.float(), layout)
    coords = [(r, c) for r in range(4) for c in range(4)]
    for layer in range(2):
        for h in range(3):
            row = attn[layer, h, 0].numpy()
            assert abs(stats["entropy"][layer, h] - -(row * np.log(row)).sum()) < 1e-4
            assert abs(stats["prefix"][layer, h] - row[0]) < 1e-6
            dists = []
            for qi, (qr, qc) in enumerate(coords):
                w = attn[layer, h, 1 + qi, 1:].numpy()
                w = w / w.sum()
                dists.append(sum(w[j] * np.hypot(qr - r, qc - c) for j, (r, c) in enumerate(coords)))
            assert abs(stats["distance"][layer, h] - np.mean(dists)) < 1e-4
    q = layout.patch_token(2, 1)
    sq = head_statistics(attn.float(), layout, q)
    w = attn[1, 2, q, 1:].numpy()
    w = w / w.sum()
    want = sum(w[j] * np.hypot(2 - r, 1 - c) for j, (r, c) in enumerate(coords))
    assert abs(sq["distance"][1, 2] - want) < 1e-4
