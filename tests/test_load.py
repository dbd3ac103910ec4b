"""Every family vitscope opens gives the original framework's logits (<= 1e-4 on random inputs)."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import save_file

import vitscope
from vitscope.errors import VitscopeError

from conftest import TIMM_TINY, ReferenceViT, randomise, tiny_hf, tiny_timm, tiny_torchvision


def _save_pth(tmp_path, obj, name="model.pth"):
    p = tmp_path / name
    torch.save(obj, p)
    return p


def case_timm_plain(tmp_path):
    m = tiny_timm()
    return m, _save_pth(tmp_path, m.state_dict()), dict(heads=3), 3, (32, 32)


def case_timm_safetensors(tmp_path):
    m = tiny_timm()
    p = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, p)
    return m, p, dict(heads=3), 3, (32, 32)


def case_timm_training_checkpoint(tmp_path):
    # timm's train.py checkpoint: arch + argparse args + state_dict (+ ema); the arch gives the heads
    m = tiny_timm("vit_tiny_patch16_224", embed_dim=192, num_heads=3)
    ckpt = {"epoch": 3, "arch": "vit_tiny_patch16_224", "state_dict": m.state_dict(),
            "args": argparse.Namespace(model="vit_tiny_patch16_224", img_size=32, lr=0.1),
            "state_dict_ema": {k: v * 0 for k, v in m.state_dict().items()}, "version": 2}
    return m, _save_pth(tmp_path, ckpt, "checkpoint-3.pth.tar"), {}, 3, (32, 32)


def case_timm_ddp_compiled(tmp_path):
    m = tiny_timm()
    sd = {f"module._orig_mod.{k}": v for k, v in m.state_dict().items()}
    return m, _save_pth(tmp_path, {"model_state_dict": sd, "optimizer": {}}), dict(heads=3), 3, (32, 32)


def case_timm_registers_layerscale(tmp_path):
    m = tiny_timm("vit_small_patch16_224", reg_tokens=4, init_values=0.1, no_embed_class=True)
    return m, _save_pth(tmp_path, m.state_dict()), dict(heads=3), 3, (32, 32)


def case_timm_avgpool_no_cls(tmp_path):
    m = tiny_timm("vit_small_patch16_224", class_token=False, global_pool="avg", fc_norm=True)
    return m, _save_pth(tmp_path, m.state_dict()), dict(heads=3), 3, (32, 32)


def case_timm_distilled(tmp_path):
    m = tiny_timm("deit_tiny_distilled_patch16_224")
    return m, _save_pth(tmp_path, m.state_dict()), dict(heads=3), 3, (32, 32)


def case_timm_nonsquare_qknorm(tmp_path):
    m = tiny_timm(img_size=(32, 48), qk_norm=True)  # qk-norm weights reveal the head dim
    return m, _save_pth(tmp_path, m.state_dict()), dict(img_size=(32, 48)), 3, (32, 48)


def case_timm_grey(tmp_path):
    m = tiny_timm(in_chans=1, img_size=28, patch_size=7)
    (tmp_path / "config.json").write_text(json.dumps({"num_heads": 3, "classes": [str(i) for i in range(10)]}))
    return m, _save_pth(tmp_path, m.state_dict()), {}, 1, (28, 28)


def case_hf_directory(tmp_path):
    m = tiny_hf()
    m.save_pretrained(tmp_path / "hf")
    return m, tmp_path / "hf", {}, 3, (32, 32)


def case_hf_bare_state_dict(tmp_path):
    m = tiny_hf()
    return m, _save_pth(tmp_path, m.state_dict(), "pytorch_model.bin"), dict(heads=3), 3, (32, 32)


def case_torchvision(tmp_path):
    m = tiny_torchvision()
    return m, _save_pth(tmp_path, m.state_dict()), dict(heads=3), 3, (32, 32)


def case_reference(tmp_path):
    torch.manual_seed(0)
    m = randomise(ReferenceViT())
    return m, _save_pth(tmp_path, m.state_dict()), dict(heads=4), 1, (28, 28)


def case_vitscope(tmp_path):
    from vitscope.loaders import save_checkpoint
    from vitscope.loaders.timm_vit import default_data_config

    m = tiny_timm()
    p = tmp_path / "m.safetensors"
    save_checkpoint(p, m, arch="vit_tiny_patch16_224", kwargs=TIMM_TINY, classes=list("abcdefghij"),
                    data_config=default_data_config(m))
    return m, p, {}, 3, (32, 32)


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


def _logits(model, x):
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_family_logits_match_original(case, tmp_path):
    original, path, kw, chans, (h, w) = case(tmp_path)
    loaded = vitscope.load(path, **kw)
    torch.manual_seed(1)
    x = torch.randn(3, chans, h, w)
    with torch.no_grad():
        want = _logits(original.eval(), x)
        got = loaded.model(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4
    s = loaded.spec
    assert s.layout.num_tokens == loaded.model.patch_embed.num_patches + loaded.model.num_prefix_tokens
    assert s.img_size == (h, w) and s.in_chans == chans
    assert not s.random_weights
    # the trace's logits are the model's
    t = vitscope.trace(loaded, x[0])
    assert (t.logits - want[0]).abs().max() <= 1e-4


def test_layouts_are_described(tmp_path):
    m = tiny_timm("vit_small_patch16_224", reg_tokens=4, init_values=0.1)
    L = vitscope.load(_save_pth(tmp_path, m.state_dict()), heads=3)
    assert L.spec.layout.prefix_names == ("cls", "reg0", "reg1", "reg2", "reg3")
    assert L.spec.layer_scale
    d = vitscope.load(case_timm_distilled(tmp_path)[1], heads=3)
    assert d.spec.layout.prefix_names == ("cls", "dist") and d.spec.pooling == "token+dist"
    a = vitscope.load(case_timm_avgpool_no_cls(tmp_path)[1], heads=3)
    assert a.spec.layout.prefix_names == () and a.spec.pooling == "avg"
    n = vitscope.load(case_timm_nonsquare_qknorm(tmp_path)[1], img_size=(32, 48))
    assert n.spec.layout.grid == (4, 6) and n.spec.num_heads == 3


def test_class_names_from_sources(tmp_path):
    hf_dir = tmp_path / "hf"
    tiny_hf().save_pretrained(hf_dir)
    assert vitscope.load(hf_dir).spec.classes[:2] == ["thing0", "thing1"]
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"n{i}" for i in range(10)))
    assert vitscope.load(hf_dir, classes=names).spec.classes[3] == "n3"
    L = vitscope.load("timm:vit_tiny_patch16_224")
    assert L.spec.random_weights and L.spec.classes[0] == "tench"
    assert any("RANDOM" in n for n in L.spec.notes)


def test_vitscope_checkpoint_rebuilds_with_plain_timm(timm_ckpt):
    """DESIGN.md: timm.create_model(arch, **kwargs) + load_state_dict rebuilds our checkpoints."""
    import timm
    from safetensors import safe_open

    with safe_open(str(timm_ckpt), "pt") as f:
        meta = json.loads(f.metadata()["vitscope"])
        sd = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["format"] == "vitscope/1"
    assert set(meta) >= {"arch", "kwargs", "classes", "data_config", "parent", "train"}
    m = timm.create_model(meta["arch"], **meta["kwargs"])
    m.load_state_dict(sd)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m.eval()(x), vitscope.load(timm_ckpt).model(x), atol=1e-6)


def test_pickled_module_needs_trust(tmp_path):
    m = tiny_timm()
    p = _save_pth(tmp_path, m, "whole.pt")  # a whole pickled nn.Module
    with pytest.raises(VitscopeError, match="--trust-checkpoint"):
        vitscope.load(p)
    L = vitscope.load(p, trust_checkpoint=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(L.model(x), m(x), atol=1e-6)


def test_meta_device_load_leaves_no_meta_tensors(timm_ckpt):
    L = vitscope.load(timm_ckpt)
    assert not any(t.is_meta for t in list(L.model.parameters()) + list(L.model.buffers()))


# ------------------------------------------------------------------------------------------------ CNNs

def _grey_cnn_checkpoint(tmp_path):
    """A 1-channel 28x28 timm resnet10t as a vitscope checkpoint, like samples/fashion-cnn.safetensors."""
    import timm

    from vitscope.loaders import save_checkpoint

    kw = dict(in_chans=1, num_classes=10, channels=[8, 16, 32, 64], stem_width=8, output_stride=8)
    torch.manual_seed(0)
    m = timm.create_model("resnet10t", **kw).eval()
    p = tmp_path / "grey-cnn.safetensors"
    save_checkpoint(p, m, arch="resnet10t", kwargs=kw, classes=[str(i) for i in range(10)],
                    data_config={"input_size": [1, 28, 28], "mean": [0.3], "std": [0.35],
                                 "interpolation": "bilinear", "crop_pct": 1.0})
    return m, p


def test_grey_cnn_checkpoint_opens_as_cnn(tmp_path):
    """CNN detection runs the model on its own input (1 channel, 28x28), not a 3-channel blank."""
    m, p = _grey_cnn_checkpoint(tmp_path)
    L = vitscope.load(p, allow_cnn=True)
    assert L.spec.kind == "cnn" and L.spec.in_chans == 1 and L.spec.img_size == (28, 28)
    assert L.spec.layout.grid == (4, 4) and L.spec.classes[3] == "3"
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(L.model(x), m(x), atol=1e-5)
    with pytest.raises(VitscopeError, match="ResNet is not supported yet"):
        vitscope.load(p)  # without allow_cnn (inspect): still refused


def test_timm_cnn_name_with_weights(tmp_path):
    """timm:NAME --weights FILE for a CNN: num_classes from the head, in_chans from the first conv."""
    import timm

    torch.manual_seed(0)
    m = randomise(timm.create_model("resnet18", num_classes=5, in_chans=1))
    p = _save_pth(tmp_path, m.state_dict(), "cnn.pth")
    L = vitscope.load("timm:resnet18", weights=p, allow_cnn=True)
    s = L.spec
    assert s.kind == "cnn" and s.arch == "resnet18" and s.in_chans == 1 and len(s.classes) == 5
    assert s.kwargs == {"num_classes": 5, "in_chans": 1} and not s.random_weights
    assert s.data_config["input_size"][0] == 1 and len(s.data_config["mean"]) == 1
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(L.model(x), m.eval()(x), atol=1e-4)
    with pytest.raises(VitscopeError, match="ResNet is not supported yet"):
        vitscope.load("timm:resnet18", weights=p)  # inspect: a CNN is refused, by name


def test_timm_cnn_weights_that_do_not_fit(tmp_path):
    """Weights trained with other constructor arguments: one line naming the arch and the mismatch."""
    m, _ = _grey_cnn_checkpoint(tmp_path)  # resnet10t with narrow channels
    p = _save_pth(tmp_path, m.state_dict(), "narrow.pth")
    with pytest.raises(VitscopeError) as e:
        vitscope.load("timm:resnet10t", weights=p, allow_cnn=True)
    msg = str(e.value)
    assert "narrow.pth" in msg and "weights do not fit timm's resnet10t" in msg and "\n" not in msg


# ------------------------------------------------------------------------------------ headless backbones

def _tiny_dinov2(arch="vit_small_patch14_dinov2"):
    import timm

    torch.manual_seed(0)
    return randomise(timm.create_model(arch, pretrained=False, num_classes=0, img_size=56, depth=2))


@pytest.mark.parametrize("arch", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
def test_headless_dinov2_backbone(tmp_path, arch):
    """num_classes=0 (a feature backbone): no classes; LayerScale and registers kept; features equal timm's."""
    m = _tiny_dinov2(arch)
    p = _save_pth(tmp_path, m.state_dict(), "dino.pth")
    L = vitscope.load(f"timm:{arch}", weights=p)
    s = L.spec
    assert s.classes == [] and s.num_classes == 0 and s.arch == arch and s.layer_scale
    assert s.img_size == (56, 56) and s.layout.grid == (4, 4) and s.num_heads == 6
    assert s.layout.prefix_names == (("cls",) if "reg" not in arch else ("cls", "reg0", "reg1", "reg2", "reg3"))
    assert s.data_config["mean"][0] == pytest.approx(0.485)  # the arch's own preprocessing
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(L.model(x), m(x), atol=1e-5)
        assert L.model(x).shape == (2, 384)
    # class names for a headless model are ignored, and the spec says so
    H = vitscope.load(f"timm:{arch}", weights=p, classes=["a", "b"])
    assert H.spec.classes == [] and any("no classification head" in n for n in H.spec.notes)


def test_original_dinov2_checkpoint_layout(tmp_path):
    """Facebook's DINOv2 files (mask_token; register_tokens with the CLS position in pos_embed) open
    as timm converts them."""
    m = _tiny_dinov2("vit_small_patch14_reg4_dinov2")
    sd = dict(m.state_dict())
    pos_cls = 0.1 * torch.randn(1, 1, 384)
    sd["register_tokens"] = sd.pop("reg_token")
    sd["cls_token"] = sd["cls_token"] - pos_cls
    sd["pos_embed"] = torch.cat([pos_cls, sd["pos_embed"]], 1)
    sd["mask_token"] = torch.zeros(1, 384)
    p = _save_pth(tmp_path, sd, "dinov2_vits14_reg4_pretrain.pth")
    L = vitscope.load("timm:vit_small_patch14_reg4_dinov2", weights=p)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(L.model(x), m(x), atol=1e-5)
    assert L.spec.layout.num_prefix == 5 and L.spec.classes == []


def test_timm_name_that_takes_no_img_size():
    """--img-size with a timm CNN name: a one-line error, not an internal TypeError."""
    with pytest.raises(VitscopeError, match="cannot create resnet18: .*img_size"):
        vitscope.load("timm:resnet18", img_size=64, allow_cnn=True)
