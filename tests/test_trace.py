"""The Trace records what the forward pass computed; checked against independent computations."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitscope

from conftest import tiny_timm


def _load(tmp_path, model, **kw):
    p = tmp_path / "m.pth"
    torch.save(model.state_dict(), p)
    return vitscope.load(p, heads=3, **kw)


def reference_attention(block, x):
    """softmax(q k^T / sqrt(d)) written out by hand from the block's weights (no fused kernel)."""
    n = block.norm1
    xn = F.layer_norm(x, n.normalized_shape, n.weight, n.bias, n.eps)
    qkv = xn @ block.attn.qkv.weight.T + block.attn.qkv.bias
    N, D = x.shape
    H = block.attn.num_heads
    q, k, _ = qkv.reshape(N, 3, H, D // H).permute(1, 2, 0, 3)
    return torch.softmax(q @ k.transpose(-1, -2) / (D // H) ** 0.5, -1)


@pytest.mark.parametrize("variant", [
    {}, {"reg_tokens": 2, "init_values": 0.5, "arch": "vit_small_patch16_224"},
    {"arch": "deit_tiny_distilled_patch16_224"},
    {"class_token": False, "global_pool": "avg", "arch": "vit_small_patch16_224"},
    {"img_size": (32, 48)},
])
def test_captured_attention_equals_unfused_computation(tmp_path, variant):
    variant = dict(variant)
    arch = variant.pop("arch", "vit_tiny_patch16_224")
    m = tiny_timm(arch, **variant)
    extra = {"img_size": (32, 48)} if variant.get("img_size") else {}
    L = _load(tmp_path, m, **extra)
    assert all(b.attn.fused_attn for b in L.model.blocks), "timm should run fused by default here"
    torch.manual_seed(0)
    x = torch.randn(*L.spec.data_config["input_size"])
    t = vitscope.trace(L, x)
    # the model runs fused again afterwards
    assert all(b.attn.fused_attn for b in L.model.blocks)
    with torch.no_grad():
        for i, blk in enumerate(L.model.blocks):
            want = reference_attention(blk, t.resid[i])
            assert (t.attn[i] - want).abs().max() <= 1e-5
    # the residual stream decomposes exactly into the recorded sublayer outputs
    assert torch.allclose(t.resid[1:], t.resid[:-1] + t.attn_out + t.mlp_out, atol=1e-5)
    # and the head applied to the final stream gives the recorded logits
    with torch.no_grad():
        logits = L.model.forward_head(L.model.norm(t.resid[-1][None]))[0]
        plain = L.model(x[None])[0]
    assert torch.allclose(logits, t.logits, atol=1e-5)
    assert torch.allclose(plain, t.logits, atol=1e-5)
    n = L.spec.layout.num_tokens
    assert t.attn.shape == (2, 3, n, n) and t.resid.shape == (3, n, 48)
    assert torch.allclose(t.attn.sum(-1), torch.ones(2, 3, n), atol=1e-5)


def test_layer_scale_outputs_are_recorded_after_scaling(tmp_path):
    m = tiny_timm("vit_small_patch16_224", init_values=0.5)
    L = _load(tmp_path, m)
    t = vitscope.trace(L, torch.randn(3, 32, 32))
    blk = L.model.blocks[0]
    with torch.no_grad():
        attn_raw = blk.attn(blk.norm1(t.resid[0][None]))[0]
    assert torch.allclose(t.attn_out[0], attn_raw * blk.ls1.gamma, atol=1e-5)
    assert not torch.allclose(t.attn_out[0], attn_raw, atol=1e-3)


def test_batch_trace_equals_single_traces(tmp_path):
    L = _load(tmp_path, tiny_timm())
    x = torch.randn(4, 3, 32, 32)
    batch = vitscope.trace_batch(L, x)
    assert len(batch) == 4
    for i in (0, 3):
        single = vitscope.trace(L, x[i])
        assert torch.allclose(batch[i].attn, single.attn, atol=1e-6)
        assert torch.allclose(batch[i].logits, single.logits, atol=1e-5)


def test_trace_of_image_file_keeps_shown_image_and_input(tmp_path, sample_png):
    L = _load(tmp_path, tiny_timm())
    t = vitscope.trace(L, sample_png)
    assert t.image.shape == (32, 32, 3) and t.image.dtype == np.uint8
    assert t.input.shape == (3, 32, 32)
    # the trace is plain data: picklable
    t2 = pickle.loads(pickle.dumps(t))
    assert torch.equal(t2.attn, t.attn)
