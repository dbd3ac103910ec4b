"""Every bundled sample model opens: in Python (finite logits on its own input size) and in the CLI."""
from __future__ import annotations

import pytest
import torch

import vitscope

from conftest import ROOT, run_cli

SAMPLES = sorted((ROOT / "samples").glob("*.safetensors"))


def test_there_are_samples():
    assert {p.name for p in SAMPLES} >= {"fashion-cnn.safetensors", "fashion-vit-p7.safetensors"}


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_sample_opens_and_runs(path):
    loaded = vitscope.load(path, allow_cnn=True)
    s = loaded.spec
    assert s.kind == ("cnn" if "cnn" in path.stem else "vit")
    assert s.family == "vitscope" and not s.random_weights
    c, h, w = s.data_config["input_size"]
    assert (c, h, w) == (s.in_chans, *s.img_size) == (1, 28, 28)
    assert len(s.classes) == 10
    if s.kind == "vit":
        assert s.layout.grid == (28 // s.patch_size[0], 28 // s.patch_size[1]) and s.num_layers == 4
    else:
        assert s.num_layers == 0 and s.layout.grid == (4, 4)  # output stride 8 on 28x28
    torch.manual_seed(0)
    with torch.no_grad():
        logits = loaded.model(torch.randn(2, c, h, w))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_sample_info_cli(path):
    r = run_cli("info", str(path))
    assert r.returncode == 0, r.stderr
    assert ("CNN" in r.stdout) == ("cnn" in path.stem)


def test_export_bundled_cnn(tmp_path):
    """The README's example: the 1-channel sample CNN exports a Grad-CAM for a Fashion-MNIST image."""
    out = tmp_path / "cnn"
    r = run_cli("export", str(ROOT / "samples" / "fashion-cnn.safetensors"),
                str(ROOT / "samples" / "fashion_0021_sandal_pred-sneaker.png"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "trace.npz").is_file()
