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
    assert list(z["perturb_names"]) == ["none", "no_cls", "self_only"] and np.isnan(z["perturb_identifiability"][1])
    assert "class_maps" not in z  # no CLS and no --token: no query for the class maps
    assert z["kv_agreement_mlp"].shape == (2,) and z["class_value_agreement_attn_random"].shape == (2, 10)


def test_export_carries_every_paper_array_with_its_convention(tmp_path, sample_png):
    from vitscope.analysis.class_maps import class_attention_maps
    from vitscope.analysis.perturb import context_perturbation
    from vitscope.export import ExportSettings, export
    from vitscope.views import Session

    L = vitscope.load(_checkpoint(tmp_path, tiny_timm("deit3_small_patch16_224"), "deit3_small_patch16_224"))
    se = Session.open(L, sample_png)
    export(se, tmp_path / "out", ExportSettings(target=3))
    z = np.load(tmp_path / "out" / "trace.npz")
    t = se.trace
    assert str(z["target_source"]) == "chosen" and int(z["target"]) == 3
    assert "before LayerScale" in str(z["proj_read_point"])
    assert np.array_equal(z["attn_proj"], t.attn_proj.numpy()) and z["mlp_fc2"].shape == z["mlp_out"].shape
    P = project_trace(t, L.model, 3)
    assert np.allclose(z["proj_attn_target_logit"], P.attn_target_logit.numpy())
    maps = class_attention_maps(L.model, t.input, 3, t.layout).numpy()
    assert np.allclose(z["class_maps"], maps, atol=1e-6) and np.allclose(z["class_map_sum"], maps.sum((0, 1)), atol=1e-5)
    pert = context_perturbation(L.model, t.input, t.layout, 3)
    assert np.allclose(z["perturb_identifiability_r"], pert.identifiability_r.numpy())
    # the pane's short title names the read point too (its long caption is cut at 80 columns)
    from vitscope.views import ViewState

    s = ViewState(pane="projection", target=3)
    se.projections(3, "paper", "chosen")
    assert se.output(s).title.endswith("(paper convention; updates before LayerScale)")
    plain = Session.open(vitscope.load(_checkpoint(tmp_path, tiny_timm(), "vit_tiny_patch16_224")), sample_png)
    plain.projections(3, "paper", "chosen")
    assert plain.output(s).title.endswith("(paper convention)")  # no LayerScale: the stream's update
    for kind in ("attn", "mlp"):
        assert z[f"kv_agreement_{kind}"].shape == z[f"memory_composition_{kind}"].shape == (2,)


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


# -- key-value memories ----------------------------------------------------------------------------
def test_key_value_memories_against_the_authors_loops(deit3):
    import copy

    from vitscope.analysis.memories import class_value_agreement, memories, random_init_copy

    L, t, x = deit3
    m = L.model
    target = 6
    P = project_trace(t, m, target)
    M = memories(t, m, target, {"attn": P.attn_topk_idx[..., 0], "mlp": P.mlp_topk_idx[..., 0]},
                 random_model=random_init_copy(L.spec.arch, L.spec.kwargs))
    # the coefficients, read by our own hooks: attn.proj's input, mlp.fc1's output
    coeff = {"attn": [], "mlp": []}
    hs = [h for blk in m.blocks for h in (
        blk.attn.proj.register_forward_pre_hook(lambda _m, i: coeff["attn"].append(i[0][0].detach())),
        blk.mlp.fc1.register_forward_hook(lambda _m, _i, o: coeff["mlp"].append(o[0].detach())))]
    with torch.no_grad():
        m(x[None])
    for h in hs:
        h.remove()
    for kind, w_of in (("attn", lambda b: b.attn.proj.weight), ("mlp", lambda b: b.mlp.fc2.weight)):
        for b, blk in enumerate(m.blocks):
            with torch.no_grad():
                val_proj = m.head.weight @ w_of(blk)  # memories.py: compute_key_value_agreement
            key_topk = val_proj.topk(5, dim=1)[1]
            hs_key_topk = coeff[kind][b].topk(5, dim=-1)[1]
            agree = [bool(torch.isin(hs_key_topk[n], key_topk[target]).any()) for n in range(t.num_tokens)]
            assert abs(float(M.kv_agreement[kind][b]) - np.mean(agree)) < 1e-6
            every = [np.mean([bool(torch.isin(hs_key_topk[n], key_topk[c]).any()) for n in range(t.num_tokens)])
                     for c in range(10)]
            assert abs(float(M.kv_agreement_chance[kind][b]) - np.mean(every)) < 1e-6
            # compute_composition: the top class of each of the token's top-5 memories vs the update's top class
            mem_class = val_proj.topk(1, dim=0)[1][0]
            top = (P.attn_topk_idx if kind == "attn" else P.mlp_topk_idx)[b, :, 0]
            comp = [bool(torch.isin(mem_class[hs_key_topk[n]], top[n].long()).any()) for n in range(t.num_tokens)]
            assert abs(float(M.composition[kind][b]) - np.mean(comp)) < 1e-6
        # compute_class_value_agr: normalise in place (on a copy here), top-1 per class
        mc = copy.deepcopy(m)
        want = []
        with torch.no_grad():
            mc.head.weight /= mc.head.weight.norm(dim=-1, keepdim=True)
            for blk in mc.blocks:
                w = w_of(blk)
                w /= w.norm(dim=0, keepdim=True)
                want.append((mc.head.weight @ w).topk(1, dim=1)[0].squeeze(1))
        assert torch.allclose(M.class_value[kind], torch.stack(want), atol=1e-5)
        assert M.class_value_random[kind].shape == (2, 10)
        assert not torch.allclose(M.class_value_random[kind], M.class_value[kind])
    assert torch.equal(class_value_agreement(m, "mlp"), M.class_value["mlp"])


# -- per-block, per-head class maps ---------------------------------------------------------------
def _hand_qkv(blk, x_in: torch.Tensor):
    """q, k, v [H, N, hd] of a timm pre-norm block for the stream entering it, written out."""
    H = blk.attn.num_heads
    h = F.layer_norm(x_in, blk.norm1.normalized_shape, blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
    qkv = h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias
    N, D = x_in.shape
    q, k, v = qkv.reshape(N, 3, H, D // H).permute(1, 2, 0, 3)
    return q, k, v


@pytest.mark.parametrize("loss", ["paper", "code"])
def test_class_maps_against_the_chain_rule(deit3, loss):
    from vitscope.analysis.class_maps import class_attention_maps

    L, t, x = deit3
    m = L.model
    target = 7
    maps = class_attention_maps(m, x, target, t.layout, loss=loss)
    H, hd = m.blocks[0].attn.num_heads, m.blocks[0].attn.head_dim
    assert maps.shape == (2, H, 4, 4)
    for b, blk in enumerate(m.blocks):
        with torch.no_grad():
            q, k, v = _hand_qkv(blk, t.resid[b])
            a = ((q @ k.transpose(-1, -2)) * hd ** -0.5).softmax(-1)  # [H, N, N]
            o = (a[:, 0, :, None] * v).sum(1).reshape(-1)  # the CLS row's head outputs, concatenated
        y = (blk.attn.proj.weight @ o + blk.attn.proj.bias).detach().requires_grad_(True)  # attn.proj output
        logits = (F.layer_norm(y, m.norm.normalized_shape, m.norm.weight, m.norm.bias, m.norm.eps)
                  @ m.head.weight.T + m.head.bias)
        if loss == "code":
            logits = logits.softmax(-1)
        ce = -logits.log_softmax(-1)[target]
        g = torch.autograd.grad(ce, y)[0].detach()  # d loss / d attn.proj output
        for h in range(H):
            with torch.no_grad():
                # d o_h / d A[h, 0, j] = v_j^h, then through attn.proj's columns of head h
                cols = blk.attn.proj.weight[:, h * hd:(h + 1) * hd]
                want = -(g @ (cols @ v[h].T))[1:]  # over the patch keys
            assert torch.allclose(maps[b, h].reshape(-1), want, atol=1e-5), (b, h)


def test_class_maps_need_a_query_without_cls(tmp_path):
    from vitscope.analysis.class_maps import class_attention_maps

    m = tiny_timm("vit_base_patch16_rpn_224")
    L = vitscope.load(_checkpoint(tmp_path, m, "vit_base_patch16_rpn_224"))
    x = torch.randn(3, 32, 32)
    with pytest.raises(ValueError, match="no CLS"):
        class_attention_maps(L.model, x, 0, L.spec.layout)
    assert class_attention_maps(L.model, x, 0, L.spec.layout, token=5).shape == (2, 3, 4, 4)


# -- context perturbations -------------------------------------------------------------------------
def _hand_forward(model, x: torch.Tensor, change) -> torch.Tensor:
    """A pre-norm LayerScale ViT forward written out, with ``change`` applied to each block's
    attention probabilities [H, N, N]; returns the last block's output [N, D]."""
    with torch.no_grad():
        tok = model.patch_embed.proj(x[None]).flatten(2).transpose(1, 2)[0] + model.pos_embed[0]
        tok = torch.cat([model.cls_token[0], tok])  # deit3: no position embedding on CLS
        for blk in model.blocks:
            q, k, v = _hand_qkv(blk, tok)
            hd = q.shape[-1]
            a = change(((q @ k.transpose(-1, -2)) * hd ** -0.5).softmax(-1))
            o = (a @ v).transpose(0, 1).reshape(tok.shape[0], -1)
            tok = tok + blk.ls1.gamma * (o @ blk.attn.proj.weight.T + blk.attn.proj.bias)
            tok = tok + blk.ls2.gamma * blk.mlp(F.layer_norm(tok, blk.norm2.normalized_shape, blk.norm2.weight,
                                                             blk.norm2.bias, blk.norm2.eps))
    return tok


def test_context_perturbations_against_a_hand_written_forward(deit3):
    from vitscope.analysis.perturb import context_perturbation

    L, t, x = deit3
    m = L.model
    target = int(t.logits.argmax())
    got = context_perturbation(m, x, t.layout, target)
    assert got.names == ("none", "no_cls", "self_only")

    def no_cls(a):
        a = a.clone()
        for n in range(1, a.shape[-1]):
            a[:, n, 0] = 0
        return a

    def self_only(a):
        a = a.clone()
        for n in range(1, a.shape[-1]):
            a[:, n, :] = 0
            a[:, n, n] = 1
        return a

    for i, change in enumerate((lambda a: a, no_cls, self_only)):
        last = _hand_forward(m, x, change)
        ranks = _authors_rank(_head(m, last)[1:], target)
        assert abs(float(got.identifiability_r[i]) - float((1 - ranks.float() / 10).mean())) < 1e-6
        assert abs(float(got.identifiability[i]) - float((ranks == 0).float().mean())) < 1e-6
        with torch.no_grad():
            assert torch.allclose(got.logits[i], m.head(m.norm(last)[0]), atol=1e-4)
    assert torch.allclose(got.logits[0], t.logits, atol=1e-4)
    assert not torch.allclose(got.logits[2], got.logits[0], atol=1e-3)  # the perturbation does something


def test_class_maps_pane_shows_every_block_and_head(tmp_path, sample_png):
    from vitscope.analysis.class_maps import class_attention_maps
    from vitscope.views import Session, ViewState

    L = vitscope.load(_checkpoint(tmp_path, tiny_timm("deit3_small_patch16_224"), "deit3_small_patch16_224"))
    se = Session.open(L, sample_png)
    s = ViewState(pane="class_maps", target=2)
    assert not se.ready(s)
    se.class_maps(2, 0)  # the slow part, as a worker computes it: the pane is then ready
    assert se.ready(s)
    out = se.output(s)
    maps = class_attention_maps(L.model, se.input, 2, se.layout).numpy()
    assert len(out.tiles) == 2 and len(out.tiles[0]) == 4  # 2 blocks x (3 heads + sum)
    assert np.allclose(out.tiles[1][2], maps[1, 2]) and np.allclose(out.tiles[0][3], maps[0].sum(0), atol=1e-6)
    assert "c2 (chosen)" in out.title


# -- dataset-level curves --------------------------------------------------------------------------
@pytest.mark.parametrize("convention", ["paper", "stream"])
def test_projection_curves_are_the_mean_of_per_image_projections(deit3, convention):
    from vitscope.analysis.curves import projection_curves

    L, _, _ = deit3
    g = torch.Generator().manual_seed(9)
    xs, ys = torch.randn(5, 3, 32, 32, generator=g), torch.randint(0, 10, (5,), generator=g)
    got = projection_curves(L.model, [(xs[:3], ys[:3]), (xs[3:], ys[3:])], 1, 0, convention)  # two batches
    per = [project_trace(vitscope.trace(L, x), L.model, int(y), convention) for x, y in zip(xs, ys)]
    mean = lambda f: torch.stack([f(P) for P in per]).mean(0).numpy()  # noqa: E731
    assert got["n"] == 5 and got["convention"] == convention
    assert np.allclose(got["image_identifiability"], mean(lambda P: P.identifiability), atol=1e-6)
    assert np.allclose(got["image_identifiability_r"], mean(lambda P: P.identifiability_r), atol=1e-6)
    assert np.allclose(got["cls_identifiability"], mean(lambda P: (P.rank[:, 0] == 0).float()), atol=1e-6)
    assert np.allclose(got["cls_identifiability_r"], mean(lambda P: P.r[:, 0]), atol=1e-6)
    for k in ("attn_update_rate", "mlp_update_rate", "block_change_rate", "residual_match"):
        assert np.allclose(got[k], mean(lambda P: getattr(P, k)), atol=1e-6), k


def test_sweep_projections_from_the_cli():
    r = run_cli("sweep", str(ROOT / "samples" / "digits-vit.safetensors"), "--dataset", "mnist", "--data-dir",
                str(MNIST_DIR), "--limit", "40", "--projections", "--random-limit", "30", "--json", "--no-cache")
    assert r.returncode == 0, r.stderr
    import json

    p = json.loads(r.stdout)["projections"]
    assert p["target"] == "label" and p["convention"] == "paper" and p["model"]["n"] == 40
    assert p["random_init"]["n"] == 30  # the baseline's images: the first 30
    for k in ("model", "random_init"):
        assert len(p[k]["cls_identifiability"]) == 4 and len(p[k]["residual_match"]) == 4
    # the trained model's CLS token identifies the label by the last block; a random one is near chance
    assert p["model"]["cls_identifiability"][-1] > 0.8 > 0.3 > p["random_init"]["cls_identifiability"][-1]
