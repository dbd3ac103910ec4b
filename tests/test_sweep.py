"""Sweeps: per-image results against an independent loop, the cache, and the CLI summary."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vitscope
from vitscope.data.datasets import data_config_for, get_dataset
from vitscope.data.images import prepare
from vitscope.loaders import save_checkpoint
from vitscope.sweep import run_sweep

from conftest import needs_fashion, run_cli, tiny_timm


pytestmark = needs_fashion  # every test sweeps, or builds its checkpoint from, Fashion-MNIST


@pytest.fixture
def grey_ckpt(tmp_path):
    m = tiny_timm(in_chans=1, img_size=28, patch_size=7, num_classes=10)
    ds = get_dataset("fashion-mnist", "test")
    p = tmp_path / "grey.safetensors"
    save_checkpoint(p, m, arch="vit_tiny_patch16_224",
                    kwargs=dict(in_chans=1, img_size=28, patch_size=7, embed_dim=48, depth=2, num_heads=3,
                                num_classes=10), classes=ds.classes, data_config=data_config_for(ds))
    return p


def test_sweep_matches_independent_loop(grey_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))
    loaded = vitscope.load(grey_ckpt)
    ds = get_dataset("fashion-mnist", "test")
    res = run_sweep(loaded, ds, batch_size=64, limit=150)
    assert res.n == 150 and not res.cached
    # independent: each image through the PIL/timm path, one at a time
    preds, losses = [], []
    with torch.no_grad():
        for i in range(150):
            x = prepare(Image.fromarray(ds.image(i)), loaded.spec.data_config).input[None]
            logits = loaded.model(x)
            preds.append(int(logits.argmax()))
            losses.append(float(F.cross_entropy(logits, ds.labels[i:i + 1])))
    assert res.pred.tolist() == preds
    assert np.allclose(res.loss, losses, atol=1e-5)
    assert res.index.tolist() == list(range(150)) and res.label.tolist() == ds.labels[:150].tolist()
    conf = res.confusion()
    assert conf.sum() == 150 and np.trace(conf) == int((np.array(preds) == ds.labels[:150].numpy()).sum())
    assert abs(res.accuracy - np.trace(conf) / 150) < 1e-12
    assert np.allclose(res.topk_prob.sum(1) <= 1 + 1e-6, True) and (res.topk_idx[:, 0] == res.pred).all()
    again = run_sweep(loaded, ds, batch_size=64, limit=150)
    assert again.cached and np.array_equal(again.pred, res.pred)
    other = run_sweep(loaded, ds, batch_size=64, limit=100)
    assert not other.cached and other.key != res.key


def test_cli_sweep_json(grey_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))
    r = run_cli("sweep", str(grey_ckpt), "--dataset", "fashion-mnist", "--limit", "200", "--json", "--no-cache",
                "--out", str(tmp_path / "s.npz"))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["n"] == 200 and set(d) >= {"accuracy", "n", "per_class_accuracy", "confusion"}
    assert len(d["confusion"]) == 10 and sum(map(sum, d["confusion"])) == 200
    z = np.load(tmp_path / "s.npz")
    assert abs(z["correct"].mean() - d["accuracy"]) < 1e-12
    r = run_cli("sweep", str(grey_ckpt), "--dataset", "fashion-mnist", "--limit", "200")
    assert r.returncode == 0 and "accuracy" in r.stdout and "->" in r.stdout


def test_cli_sweep_bad_data_dir(grey_ckpt, tmp_path):
    r = run_cli("sweep", str(grey_ckpt), "--dataset", "fashion-mnist", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "t10k-images-idx3-ubyte" in r.stderr and str(tmp_path) in r.stderr
