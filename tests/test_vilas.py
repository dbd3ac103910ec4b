"""Vilas, Schaumloeffel & Roig 2023 (class-embedding space) as the authors compute it: the read points
of their code (hooks on ``attn.proj`` / ``mlp.fc2``, the post-norm block's norms for the GAP model),
written here by hand with our own hooks and loops, against vitscope's analyses."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitscope
from vitscope.analysis.projection import project_trace

from conftest import MNIST_DIR, ROOT, TIMM_TINY, run_cli, tiny_timm


def _checkpoint(tmp_path: Path, model, arch: str) -> Path:
    from vitscope.loaders import save_checkpoint
    from vitscope.loaders.timm_vit import default_data_config

    p = tmp_path / f"{arch}.safetensors"
    dc = default_data_config(model)
    dc["crop_pct"] = 1.0
    return save_checkpoint(p, model, arch=arch, kwargs=dict(TIMM_TINY), classes=[f"c{i}" for i in range(10)],
                           data_config=dc)


def _authors_capture(model, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """What the authors' feature extractor reads: each block's output (``blocks.N.add_1``) and the
    outputs of ``attn.proj`` and ``mlp.fc2``; plus the stream entering block 0."""
    got: dict[str, list[torch.Tensor]] = {"hs": [], "attn": [], "mlp": [], "embed": []}
    hs = []
    for blk in model.blocks:
        hs.append(blk.register_forward_hook(lambda _m, _i, o: got["hs"].append(o.detach()[0])))
        hs.append(blk.attn.proj.register_forward_hook(lambda _m, _i, o: got["attn"].append(o.detach()[0])))
        hs.append(blk.mlp.fc2.register_forward_hook(lambda _m, _i, o: got["mlp"].append(o.detach()[0])))
    hs.append(model.blocks[0].register_forward_pre_hook(lambda _m, i: got["embed"].append(i[0].detach()[0])))
    try:
        with torch.no_grad():
            model(x[None])
    finally:
        for h in hs:
            h.remove()
    return got


def _head(model, h: torch.Tensor) -> torch.Tensor:
    """The authors' projection: cls_proj(ln(h)), ln = model.norm, or fc_norm for the GAP model."""
    norm = model.fc_norm if isinstance(model.norm, torch.nn.Identity) else model.norm
    with torch.no_grad():
        return F.layer_norm(h, norm.normalized_shape, norm.weight, norm.bias, norm.eps) @ model.head.weight.T \
            + model.head.bias


def _authors_rank(logits: torch.Tensor, label: int) -> torch.Tensor:
    """``(argsort(preds, descending) == label).nonzero()`` position, per token, as in extractor.py."""
    order = torch.argsort(logits, dim=-1, descending=True)
    return (order == label).nonzero()[:, -1]


# -- read points: LayerScale ----------------------------------------------------------------------
@pytest.fixture
def deit3(tmp_path):
    m = tiny_timm("deit3_small_patch16_224")  # LayerScale (init_values), randomised: gamma far from 1
    L = vitscope.load(_checkpoint(tmp_path, m, "deit3_small_patch16_224"))
    torch.manual_seed(3)
    x = torch.randn(3, 32, 32)
    return L, vitscope.trace(L, x), x


def test_paper_convention_reads_attn_proj_and_fc2_before_layerscale(deit3):
    L, t, x = deit3
    m = L.model
    assert L.spec.layer_scale
    got = _authors_capture(m, x)
    target = 3
    P = project_trace(t, m, target, "paper")
    S = project_trace(t, m, target, "stream")
    assert "before LayerScale" in P.read_point and "after LayerScale" in S.read_point
    for b, blk in enumerate(m.blocks):
        attn, mlp = _head(m, got["attn"][b]), _head(m, got["mlp"][b])
        assert torch.allclose(P.attn_target_logit[b], attn[:, target], atol=1e-4)
        assert torch.allclose(P.mlp_target_logit[b], mlp[:, target], atol=1e-4)
        # the other convention: the same vectors scaled by LayerScale, as they enter the stream
        attn_added = _head(m, got["attn"][b] * blk.ls1.gamma.detach())
        mlp_added = _head(m, got["mlp"][b] * blk.ls2.gamma.detach())
        assert torch.allclose(S.attn_target_logit[b], attn_added[:, target], atol=1e-4)
        assert torch.allclose(S.mlp_target_logit[b], mlp_added[:, target], atol=1e-4)
        # the authors' update rate: the sublayer's target logit above the previous block output's
        prev = _head(m, got["hs"][b - 1] if b else got["embed"][0])
        img = slice(1, None)
        want = float((attn[img, target] > prev[img, target]).float().mean())
        assert abs(float(P.attn_update_rate[b]) - want) < 1e-6
        want = float((mlp[img, target] > prev[img, target]).float().mean())
        assert abs(float(P.mlp_update_rate[b]) - want) < 1e-6
    # the two read points really differ on this model, and block outputs do not depend on them
    assert (P.attn_target_logit - S.attn_target_logit).abs().max() > 0.1
    assert torch.equal(P.target_logit, S.target_logit)


def test_models_without_layerscale_keep_one_read_point(tmp_path):
    m = tiny_timm()
    L = vitscope.load(_checkpoint(tmp_path, m, "vit_tiny_patch16_224"))
    t = vitscope.trace(L, torch.randn(3, 32, 32))
    assert t.attn_proj is None and t.mlp_fc2 is None  # nothing extra kept: equal to attn_out / mlp_out
    got = _authors_capture(L.model, t.input)
    assert torch.allclose(t.attn_out[1], got["attn"][1], atol=1e-4)  # unfused vs fused attention
    P, S = project_trace(t, L.model, 0, "paper"), project_trace(t, L.model, 0, "stream")
    assert torch.equal(P.attn_target_logit, S.attn_target_logit)
    assert "no LayerScale" in P.read_point


def test_block_change_rate_and_residual_match_by_loops(deit3):
    L, t, x = deit3
    m = L.model
    got = _authors_capture(m, x)
    target = 5
    P = project_trace(t, m, target, "paper")
    for b in range(t.num_layers):
        cur = _head(m, got["hs"][b])
        prev = _head(m, got["hs"][b - 1] if b else got["embed"][0])
        attn, mlp = _head(m, got["attn"][b]), _head(m, got["mlp"][b])
        ups = [int(cur[n, target] > prev[n, target]) for n in range(1, t.num_tokens)]
        assert abs(float(P.block_change_rate[b]) - sum(ups) / len(ups)) < 1e-6
        counts = [0, 0, 0, 0]
        for n in range(t.num_tokens):
            top = int(cur[n].argmax())
            hits = [top == int(v[n].argmax()) for v in (prev, attn, mlp)]
            for i, h in enumerate(hits):
                counts[i] += h
            counts[3] += not any(hits)
        assert np.allclose(P.residual_match[b].numpy(), np.array(counts) / t.num_tokens, atol=1e-6)
        ranks = _authors_rank(cur, target)
        assert torch.allclose(P.r[b], 1 - ranks.float() / 10, atol=1e-6)


# -- the GAP model (ResPostBlock) -----------------------------------------------------------------
def test_gap_post_norm_model_opens_and_projects_as_the_authors_do(tmp_path):
    m = tiny_timm("vit_base_patch16_rpn_224")  # class_token=False, global_pool='avg', fc_norm, ResPostBlock
    from timm.models.vision_transformer import ResPostBlock

    assert type(m.blocks[0]) is ResPostBlock
    L = vitscope.load(_checkpoint(tmp_path, m, "vit_base_patch16_rpn_224"))
    assert L.spec.pooling == "avg" and L.spec.layout.num_prefix == 0
    torch.manual_seed(4)
    x = torch.randn(3, 32, 32)
    t = vitscope.trace(L, x)
    with torch.no_grad():
        want_logits = m(x[None])[0]
    assert torch.allclose(t.logits, want_logits, atol=1e-5)
    got = _authors_capture(m, x)
    target = 2
    P = project_trace(t, L.model, target, "paper")
    S = project_trace(t, L.model, target, "stream")
    for b, blk in enumerate(m.blocks):
        with torch.no_grad():  # extractor.py: "if 'gap' in model_name: add normalization"
            attn = _head(m, blk.norm1(got["attn"][b]))
            mlp = _head(m, blk.norm2(got["mlp"][b]))
        assert torch.allclose(P.attn_target_logit[b], attn[:, target], atol=1e-4)
        assert torch.allclose(P.mlp_target_logit[b], mlp[:, target], atol=1e-4)
        cur = _head(m, got["hs"][b])
        assert torch.allclose(P.target_logit[b], cur[:, target], atol=1e-4)
        # every token is an image token: identifiability over all of them
        ranks = _authors_rank(cur, target)
        assert abs(float(P.identifiability_r[b]) - float((1 - ranks.float() / 10).mean())) < 1e-6
        assert abs(float(P.identifiability[b]) - float((ranks == 0).float().mean())) < 1e-6
    # the post-norm block adds exactly what the authors project: both read points agree
    assert torch.allclose(P.attn_target_logit, S.attn_target_logit)
    assert "norm1(attn.proj)" in P.read_point
    # the model's own output is the fc_norm + head projection of the mean token
    with torch.no_grad():
        assert torch.allclose(m.head(m.fc_norm(t.resid[-1].mean(0))), t.logits, atol=1e-5)


def test_distilled_model_projects_through_the_cls_head(tmp_path):
    m = tiny_timm("deit_tiny_distilled_patch16_224")
    L = vitscope.load(_checkpoint(tmp_path, m, "deit_tiny_distilled_patch16_224"))
    assert L.spec.layout.prefix_names == ("cls", "dist")
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(6))
    t = vitscope.trace(L, x)
    got = _authors_capture(m, x)
    target = 1
    P = project_trace(t, L.model, target)
    for b in range(t.num_layers):
        cur = _head(m, got["hs"][b])
        assert torch.allclose(P.target_logit[b], cur[:, target], atol=1e-4)
        ranks = _authors_rank(cur[2:], target)  # image tokens: after CLS and the distillation token
        assert abs(float(P.identifiability_r[b]) - float((1 - ranks.float() / 10).mean())) < 1e-6
    # the CLS token's last projection is the CLS classifier's output (the model averages two heads)
    with torch.no_grad():
        feats = m.forward_features(x[None])
        assert torch.allclose(P.target_logit[-1, 0], m.head(feats[0, 0])[target], atol=1e-4)


def test_gap_model_exports_from_the_cli(tmp_path, sample_png):
    ck = _checkpoint(tmp_path, tiny_timm("vit_base_patch16_rpn_224"), "vit_base_patch16_rpn_224")
    out = tmp_path / "out"
    r = run_cli("export", str(ck), str(sample_png), "--out", str(out))
    assert r.returncode == 0, r.stderr
    z = np.load(out / "trace.npz")
    assert str(z["proj_convention"]) == "paper" and "norm1(attn.proj)" in str(z["proj_read_point"])
    assert str(z["target_source"]) == "prediction" and int(z["target"]) == int(z["logits"].argmax())
    assert z["block_change_rate"].shape == (2,) and z["residual_match"].shape == (2, 4)
    assert list(z["residual_match_sources"]) == ["previous", "attn", "mlp", "none"]
    assert "attn_proj" not in z  # no LayerScale: attn_out is the read point


# -- the target: the label when a dataset says it ---------------------------------------------------
def test_projection_target_is_the_dataset_label_in_the_browser():
    from vitscope.data.datasets import DatasetImage, get_dataset
    from vitscope.views import Session, ViewState

    L = vitscope.load(ROOT / "samples" / "digits-vit.safetensors")
    ds = get_dataset("mnist", "test", MNIST_DIR)
    se = None
    for pos in range(len(ds)):  # a misclassified digit: label and prediction differ
        se = Session.open(L, DatasetImage(ds, pos))
        if se.prediction != se.label:
            break
    assert se is not None and se.prediction != se.label
    s = ViewState(pane="projection")
    assert se.projection_target(s) == (se.label, "label")
    assert se.projection_target(s.with_(target=4)) == (4, "chosen")
    out = se.output(s)
    assert "the dataset label" in out.table.caption and se.class_name(se.label) in out.table.caption
    P = se.projections(se.label, "paper", "label")
    assert P.target == se.label and P.target_source == "label"
    want = project_trace(se.trace, L.model, se.label)
    assert torch.equal(P.r, want.r)
