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

from conftest import MNIST_DIR, MNIST_LABEL_COUNTS, needs_fashion


@needs_fashion
def test_fashion_mnist_full_split():
    train, test = get_dataset("fashion-mnist", "train"), get_dataset("fashion-mnist", "test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.size == (28, 28) and train.channels == 1
    assert np.bincount(test.labels.numpy()).tolist() == [1000] * 10
    assert test.classes[9] == "Ankle boot"


def test_mnist_files_shipped_with_the_tests():
    """tests/data/mnist: the first 300 MNIST test images, in the original IDX(.gz) files."""
    images = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (300, 28, 28) and images.dtype == np.uint8 and labels.shape == (300,)
    assert np.bincount(labels, minlength=10).tolist() == MNIST_LABEL_COUNTS
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # MNIST's test split begins so
    ds = get_dataset("mnist", "test", MNIST_DIR)
    assert len(ds) == 300 and ds.size == (28, 28) and ds.channels == 1 and ds.classes[7] == "7"
    assert ds.indices is None and ds.info["source_split"] == "test"
    assert torch.equal(ds.images, torch.from_numpy(images))
    assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))


def test_mnist_holdout_is_disjoint():
    tr = get_dataset("mnist", "train", MNIST_DIR, split_train=200)
    te = get_dataset("mnist", "test", MNIST_DIR, split_train=200)
    assert len(tr) == 200 and len(te) == 100
    assert tr.info["source_split"] == te.info["source_split"] == "test"  # no train files: the test split is divided
    assert set(tr.indices).isdisjoint(te.indices) and sorted([*tr.indices, *te.indices]) == list(range(300))
    assert tr.original_index(0) == 0 and te.original_index(0) == 200 and te.original_index(99) == 299
    full_images = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    full = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert torch.equal(tr.labels, torch.from_numpy(full[:200].astype(np.int64)))
    assert torch.equal(te.labels, torch.from_numpy(full[200:].astype(np.int64)))
    assert torch.equal(tr.images, torch.from_numpy(full_images[:200]))
    assert torch.equal(te.images, torch.from_numpy(full_images[200:]))
    for k in (0, 300):  # both halves must be non-empty
        with pytest.raises(VitscopeError, match=f"--split-train {k}: must be between 1 and 299"):
            get_dataset("mnist", "train", MNIST_DIR, split_train=k)


def test_tensor_batches_equal_timm_eval_transform():
    """Sweeps/training normalise tensors; inspect goes through timm's PIL transform: same numbers."""
    from vitscope.data.images import prepare

    ds = get_dataset("mnist", "test", MNIST_DIR)
    cfg = data_config_for(ds)
    assert cfg["mean"] == [0.1307]  # MNIST's own statistics, not the [0.5] default
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
