"""Datasets: real Fashion-MNIST / MNIST files, holdout splits, folders, and clear errors."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from vitscope.data.datasets import data_config_for, get_dataset, iterate_batches
from vitscope.data.idx import read_idx
from vitscope.errors import VitscopeError

from conftest import ROOT

MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


def test_fashion_mnist_full_split():
    train, test = get_dataset("fashion-mnist", "train"), get_dataset("fashion-mnist", "test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.size == (28, 28) and train.channels == 1
    assert np.bincount(test.labels.numpy()).tolist() == [1000] * 10
    assert test.classes[9] == "Ankle boot"


def test_mnist_holdout_is_disjoint():
    tr = get_dataset("mnist", "train", MNIST_DIR, split_train=8000)
    te = get_dataset("mnist", "test", MNIST_DIR, split_train=8000)
    assert len(tr) == 8000 and len(te) == 2000
    assert set(tr.indices).isdisjoint(te.indices)
    assert te.original_index(0) == 8000
    full = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert np.bincount(full).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.equal(te.labels, torch.from_numpy(full[8000:].astype(np.int64)))


def test_tensor_batches_equal_timm_eval_transform():
    """Sweeps/training normalise tensors; inspect goes through timm's PIL transform: same numbers."""
    from vitscope.data.images import prepare

    ds = get_dataset("fashion-mnist", "test")
    cfg = data_config_for(ds)
    x, y, _ = next(iterate_batches(ds, 4, cfg))
    for i in range(4):
        via_pil = prepare(Image.fromarray(ds.image(i)), cfg).input
        assert torch.allclose(x[i], via_pil, atol=1e-6)


def test_missing_data_dir_names_files_and_fix(tmp_path):
    with pytest.raises(VitscopeError) as e:
        get_dataset("fashion-mnist", "train", tmp_path / "empty")
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and "apt-get install dataset-fashion-mnist" in msg
    with pytest.raises(VitscopeError, match="--split-train"):
        get_dataset("mnist", "train", MNIST_DIR)


def test_corrupt_idx_header(tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(b"\x12\x34\x56\x78garbage")
    with pytest.raises(VitscopeError, match="corrupt IDX header"):
        get_dataset("fashion-mnist", "test", tmp_path)


def test_unknown_dataset():
    with pytest.raises(VitscopeError, match="unknown dataset 'imagenet-mini'.*fashion-mnist"):
        get_dataset("imagenet-mini")


def test_image_folder(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "pets" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(tmp_path / "pets" / c / f"{i}.jpg")
    ds = get_dataset(f"folder:{tmp_path / 'pets'}")
    assert ds.classes == ["cat", "dog"] and len(ds) == 6 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "readme.txt").write_text("no images")
    with pytest.raises(VitscopeError, match="no images found"):
        get_dataset(f"folder:{tmp_path / 'empty'}")


def test_cifar10_absent_is_a_clear_error(tmp_path):
    with pytest.raises(VitscopeError, match="cifar10 not found under .*--download"):
        get_dataset("cifar10", "test", tmp_path)
