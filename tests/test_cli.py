"""The headless CLI, run as a real subprocess: outputs on disk, and one-line errors with exit 2."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import MNIST_DIR, run_cli, tiny_timm
from hang_guard import odd_paths


def test_info_describes_model(timm_ckpt):
    r = run_cli("info", str(timm_ckpt))
    assert r.returncode == 0, r.stderr
    assert "2 x 3" in r.stdout and "4 x 4 patches" in r.stdout and "cls" in r.stdout
    r = run_cli("info", str(timm_ckpt), "--json")
    d = json.loads(r.stdout)
    assert d["num_layers"] == 2 and d["num_heads"] == 3 and d["classes"][0] == "c0"


def test_info_says_random_weights_loudly():
    r = run_cli("info", "timm:vit_tiny_patch16_224")
    assert r.returncode == 0, r.stderr
    assert "RANDOM" in r.stdout and "tench" in r.stdout


def test_export_writes_documented_files(timm_ckpt, sample_png, tmp_path):
    out = tmp_path / "out"
    r = run_cli("export", str(timm_ckpt), str(sample_png), "--out", str(out), "--token", "1,2",
                "--class", "c3", "--head-fusion", "max", "--discard", "0.2")
    assert r.returncode == 0, r.stderr
    assert "prediction:" in r.stdout and "time: imports" in r.stdout
    z = np.load(out / "trace.npz")
    L, H, N, D = 2, 3, 17, 48
    assert z["attn"].shape == (L, H, N, N) and z["attn"].dtype == np.float32
    assert z["resid"].shape == (L + 1, N, D)
    assert z["attn_out"].shape == (L, N, D) and z["mlp_out"].shape == (L, N, D)
    assert z["logits"].shape == (10,) and abs(z["probs"].sum() - 1) < 1e-5
    assert int(z["prefix_tokens"]) == 1 and list(z["grid"]) == [4, 4]
    assert list(z["classes"][:2]) == ["c0", "c1"]
    assert z["image"].shape == (32, 32, 3) and z["image"].dtype == np.uint8
    assert z["input"].shape == (3, 32, 32)
    assert int(z["token"]) == 1 + 1 * 4 + 2 and int(z["target"]) == 3
    assert z["rollout"].shape == (4, 4)
    assert str(z["rollout_head_fusion"]) == "max" and abs(float(z["rollout_discard"]) - 0.2) < 1e-6
    # anyone can re-run the exact input and get the stored logits
    import vitscope

    loaded = vitscope.load(timm_ckpt)
    with torch.no_grad():
        logits = loaded.model(torch.from_numpy(z["input"])[None])[0].numpy()
    assert np.abs(logits - z["logits"]).max() < 1e-5
    # rollout stored equals rollout recomputed from the stored attention with the stored settings
    R = vitscope.attention_rollout(torch.from_numpy(z["attn"]), "max", 0.2)
    assert np.abs(R[7, 1:].reshape(4, 4) - z["rollout"]).max() < 1e-6
    pred = json.loads((out / "prediction.json").read_text())
    assert len(pred["top5"]) == 5 and pred["target_class"] == "c3" and pred["query"] == "patch (1, 2)"
    for name in ("heads.png", "rollout.png", "layers/mean_layer00.png", "layers/mean_layer01.png"):
        assert Image.open(out / name).size[0] > 100
    # heads.png is the layers x (heads + mean) grid: 2 rows of 4 tiles
    w, h = Image.open(out / "heads.png").size
    assert w > h


def test_an_option_between_model_and_image_is_read_as_such(timm_ckpt, sample_png, tmp_path):
    """`export MODEL --weight-dtype bfloat16 IMAGE --out DIR`: argparse gave IMAGE (optional) up once an option came
    between it and MODEL and said 'unrecognized arguments: IMAGE'."""
    r = run_cli("export", str(timm_ckpt), "--weight-dtype", "bfloat16", str(sample_png), "--out", str(tmp_path / "o"),
                "--no-analyses")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "trace.npz").is_file()
    r = run_cli("export", str(timm_ckpt), "--no-analyses", str(sample_png), "stray", "--out", str(tmp_path / "p"))
    assert r.returncode == 2 and "unrecognized arguments: stray" in r.stderr


def test_export_refuses_to_overwrite(timm_ckpt, sample_png, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "trace.npz").write_bytes(b"precious")
    r = run_cli("export", str(timm_ckpt), str(sample_png), "--out", str(out))
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert (out / "trace.npz").read_bytes() == b"precious"


def _bad_checkpoints(tmp_path):
    d = {}
    d["missing"] = (tmp_path / "nope.pt", "no such file")
    (tmp_path / "adir").mkdir()
    d["directory"] = (tmp_path / "adir", "directory")
    (tmp_path / "notes.pt").write_text("these are my notes, not weights\n")
    d["text"] = (tmp_path / "notes.pt", "not a PyTorch checkpoint")
    m = tiny_timm()
    torch.save(m.state_dict(), tmp_path / "full.pth")
    (tmp_path / "trunc.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:5000])
    d["truncated"] = (tmp_path / "trunc.pth", "truncated or corrupt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp_path / "full.safetensors")
    (tmp_path / "trunc.safetensors").write_bytes((tmp_path / "full.safetensors").read_bytes()[:3000])
    d["truncated_safetensors"] = (tmp_path / "trunc.safetensors", "not a readable safetensors")
    torch.save({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, tmp_path / "other.pth")
    d["unrecognised"] = (tmp_path / "other.pth", "tried: vitscope checkpoint; timm VisionTransformer")
    torch.save(m, tmp_path / "pickled.pt")
    d["pickled"] = (tmp_path / "pickled.pt", "--trust-checkpoint")
    return d


@pytest.mark.parametrize("case", ["missing", "directory", "text", "truncated", "truncated_safetensors",
                                  "unrecognised", "pickled"])
def test_bad_checkpoints_exit_2_with_one_line(tmp_path, case):
    path, expect = _bad_checkpoints(tmp_path)[case]
    r = run_cli("info", str(path), "--heads", "3")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert str(path) in lines[0] and expect in lines[0]


def test_heads_that_do_not_divide_dim(tmp_path):
    torch.save(tiny_timm().state_dict(), tmp_path / "m.pth")
    r = run_cli("info", str(tmp_path / "m.pth"), "--heads", "5")
    assert r.returncode == 2 and "5 heads do not divide the embedding dim 48" in r.stderr
    r = run_cli("info", str(tmp_path / "m.pth"))
    assert r.returncode == 2 and "--heads" in r.stderr and "m.pth" in r.stderr


def test_non_vit_model_is_named_unsupported():
    r = run_cli("info", "timm:swin_tiny_patch4_window7_224")
    assert r.returncode == 2 and "not supported yet" in r.stderr and "SwinTransformer" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("info", "timm:resnet18")  # CNNs open for Grad-CAM comparison and sweeps
    assert r.returncode == 0 and "CNN" in r.stdout


def test_inspect_refuses_a_cnn():
    import vitscope
    from vitscope.errors import VitscopeError

    with pytest.raises(VitscopeError, match="not supported yet"):
        vitscope.load("timm:resnet18")


def test_swin_state_dict_is_named_unsupported(tmp_path):
    import timm

    torch.save(timm.create_model("swin_tiny_patch4_window7_224", num_classes=3).state_dict(), tmp_path / "s.pth")
    r = run_cli("info", str(tmp_path / "s.pth"))
    assert r.returncode == 2 and "Swin-style" in r.stderr and "s.pth" in r.stderr


@pytest.mark.parametrize("kind", ["text", "tiny", "huge", "missing"])
def test_bad_images_exit_2(timm_ckpt, tmp_path, kind):
    p = tmp_path / "img.png"
    if kind == "text":
        p.write_text("not an image")
        expect = "not an image"
    elif kind == "tiny":
        Image.new("RGB", (1, 1)).save(p)
        expect = "too small"
    elif kind == "huge":
        Image.new("L", (20000, 20000)).save(p)
        expect = "safety limit"
    else:
        expect = "no such file"
    r = run_cli("export", str(timm_ckpt), str(p), "--out", str(tmp_path / "o"))
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and str(p) in r.stderr and expect in r.stderr
    assert not (tmp_path / "o" / "trace.npz").exists()


@pytest.mark.parametrize("args,expect", [
    (["--token", "17"], "--token 17 is out of range: this model has 17 tokens"),
    (["--token", "4,0"], "outside the 4x4 grid"),
    (["--class", "c33"], "--class 'c33' is not one of the model's 10 classes (did you mean"),
])
def test_bad_token_and_class(timm_ckpt, sample_png, tmp_path, args, expect):
    r = run_cli("export", str(timm_ckpt), str(sample_png), "--out", str(tmp_path / "o"), *args)
    assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr


def test_debug_shows_traceback(tmp_path):
    r = run_cli("info", str(tmp_path / "nope.pt"), "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_export_analysis_keys_and_faithfulness(timm_ckpt, sample_png, tmp_path):
    out = tmp_path / "a"
    r = run_cli("export", str(timm_ckpt), str(sample_png), "--out", str(out), "--faithfulness")
    assert r.returncode == 0, r.stderr
    z = np.load(out / "trace.npz")
    L, N, H = 2, 17, 3
    shapes = {"proj_topk_idx": (L, N, 5), "proj_topk_prob": (L, N, 5), "proj_target_logit": (L, N),
              "proj_attn_target_logit": (L, N), "proj_mlp_target_logit": (L, N), "identifiability": (L,),
              "identifiability_r": (L,), "attn_update_rate": (L,), "mlp_update_rate": (L,), "gradcam": (4, 4),
              "grad_rollout": (4, 4), "chefer": (4, 4), "head_ablation": (L, H)}
    for k, shape in shapes.items():
        assert z[k].shape == shape, k
    assert z["proj_topk_idx"].dtype == np.int32 and z["gradcam"].dtype == np.float32
    # the last layer's CLS projection is the prediction
    assert int(z["proj_topk_idx"][-1, 0, 0]) == int(z["logits"].argmax())
    f = json.loads((out / "faithfulness.json").read_text())
    assert set(f["methods"]) >= {"attention_last_layer_mean", "rollout", "grad_rollout", "chefer", "gradcam",
                                 "identifiability_map", "random"}
    for row in f["methods"].values():
        assert 0 <= row["deletion_auc"] <= 1 and 0 <= row["insertion_auc"] <= 1
    assert "deletion AUC" in r.stdout and Image.open(out / "gradcam.png").size[0] > 100


def test_export_cnn_gradcam(tmp_path, sample_png):
    import timm

    from vitscope.loaders import save_checkpoint

    kw = dict(in_chans=3, num_classes=4, channels=[16, 32, 64, 128], stem_width=16, output_stride=8)
    m = timm.create_model("resnet10t", **kw)
    ck = tmp_path / "cnn.safetensors"
    save_checkpoint(ck, m, arch="resnet10t", kwargs=kw, classes=list("abcd"),
                    data_config={"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
                                 "interpolation": "bilinear", "crop_pct": 1.0})
    r = run_cli("info", str(ck))
    assert r.returncode == 0 and "CNN" in r.stdout and "4 x 4" in r.stdout
    r = run_cli("export", str(ck), str(sample_png), "--out", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    z = np.load(tmp_path / "c" / "trace.npz")
    assert set(z.files) == {"logits", "probs", "classes", "input", "image", "target", "gradcam"}
    assert z["gradcam"].shape == (4, 4) and z["image"].shape == (32, 32, 3)


def test_device_that_is_not_there(monkeypatch):
    """--device cuda on a machine without CUDA: a clear error (forced here, so it runs everywhere)."""
    import torch as _torch

    from vitscope.errors import VitscopeError
    from vitscope.loaders import resolve_device

    monkeypatch.setattr(_torch.cuda, "is_available", lambda: False)
    with pytest.raises(VitscopeError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(VitscopeError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    assert resolve_device("cpu").type == "cpu"


def test_export_flow_small_model_and_refusal(timm_ckpt, sample_png, tmp_path):
    out = tmp_path / "f"
    r = run_cli("export", str(timm_ckpt), str(sample_png), "--out", str(out), "--flow", "--no-analyses")
    assert r.returncode == 0, r.stderr
    assert "flow" in r.stdout.split("time:")[1]
    z = np.load(out / "trace.npz")
    import torch as _torch

    from vitscope.analysis.flow import attention_flow
    from vitscope.spec import TokenLayout

    want, _ = attention_flow(_torch.from_numpy(z["attn"]), TokenLayout(("cls",), (4, 4)))
    assert np.allclose(z["flow"], want.numpy(), atol=1e-6)
    big = tmp_path / "big"
    r = run_cli("export", "timm:vit_base_patch16_224", str(sample_png), "--out", str(big), "--flow")
    assert r.returncode == 2 and "--flow: attention flow is offered for up to 200 tokens" in r.stderr
    assert not big.exists()


# every command that takes a model, image, weights or class-name path; {X} is the odd path under test
ODD_ARGUMENTS = {
    "info": ["info", "{X}"],
    "info_weights": ["info", "timm:vit_tiny_patch16_224", "--weights", "{X}"],
    "info_classes": ["info", "{CKPT}", "--classes", "{X}"],
    "export_image": ["export", "{CKPT}", "{X}", "--out", "{OUT}"],
    "export_model": ["export", "{X}", "{IMG}", "--out", "{OUT}"],
    "inspect_image": ["inspect", "{CKPT}", "{X}"],
    "inspect_model": ["inspect", "{X}", "{IMG}"],
    "compare_image": ["compare", "{CKPT}", "{CKPT}", "{X}", "--out", "{OUT}"],
    "compare_model": ["compare", "{X}", "{CKPT}", "{IMG}", "--out", "{OUT}"],
    "sweep_model": ["sweep", "{X}", "--dataset", "mnist", "--data-dir", str(MNIST_DIR)],
    "train_finetune": ["train", "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--split-train", "100",
                       "--finetune", "{X}", "--epochs", "1", "--out", "{OUT}"],
}


@pytest.mark.slow  # 14 subprocesses, though each exits within a second or two
@pytest.mark.parametrize("command,kind", [(c, "fifo") for c in ODD_ARGUMENTS] + [
    ("info", "symlink_to_device"), ("export_image", "char_device"), ("inspect_image", "symlink_to_device")])
def test_fifo_or_device_argument_exits_2_at_once(timm_ckpt, sample_png, tmp_path, command, kind):
    """A FIFO would make open() wait for a writer and /dev/zero never ends: refused from their stat."""
    path, words = odd_paths(tmp_path / "odd")[kind]
    fill = {"{X}": str(path), "{CKPT}": str(timm_ckpt), "{IMG}": str(sample_png), "{OUT}": str(tmp_path / "o")}
    r = run_cli(*(fill.get(a, a) for a in ODD_ARGUMENTS[command]), timeout=60)  # a hang fails: TimeoutExpired
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert str(path) in lines[0] and words in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind,words", [("directory", "--dataset folder:"), ("symlink_loop", "symlink loop"),
                                        ("dangling_symlink", "dangling symlink")])
def test_image_that_is_not_a_file_says_what_it_is(timm_ckpt, tmp_path, kind, words):
    path, _ = odd_paths(tmp_path / "odd")[kind]
    r = run_cli("export", str(timm_ckpt), str(path), "--out", str(tmp_path / "o"), timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and str(path) in lines[0] and words in lines[0], r.stderr


def test_sweep_of_an_image_folder_with_a_fifo_inside(timm_ckpt, tmp_path):
    for c in range(10):
        (tmp_path / "imgs" / f"c{c}").mkdir(parents=True)
        Image.new("L", (28, 28), 20 * c).save(tmp_path / "imgs" / f"c{c}" / "a.png")
    fifo = tmp_path / "imgs" / "c3" / "b.png"
    os.mkfifo(fifo)
    r = run_cli("sweep", str(timm_ckpt), "--dataset", f"folder:{tmp_path / 'imgs'}", "--split", "test", timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and str(fifo) in lines[0] and "FIFO" in lines[0], r.stderr
