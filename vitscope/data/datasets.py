"""Datasets: Fashion-MNIST and MNIST (IDX files), CIFAR-10 (torchvision), and image folders.

IDX datasets live in memory as uint8 tensors ([N, H, W]); batches are normalised (and augmented) as
tensors, which is exactly what timm's eval transform does for an image already at the model's input
size with crop_pct 1 (tested). Image folders go through the model's own timm transform per image.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import VitscopeError
from ..paths import check_regular_file
from .idx import read_idx
from .locate import DEBIAN_FASHION, IDX_FILES, _find_file, _search_dirs, how_to_get, not_found  # noqa: F401

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}

# per-dataset normalisation, stored in every checkpoint trained on it (timm data_config form)
STATS = {"fashion-mnist": ([0.2860], [0.3530]), "mnist": ([0.1307], [0.3081]),
         "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])}
DATASETS = ("fashion-mnist", "mnist", "cifar10", "folder:PATH")


@dataclass
class ArrayDataset:
    """Images held in memory: uint8 [N, H, W] (grey) or [N, H, W, 3], labels int64 [N]."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    indices: np.ndarray | None = None  # original indices within the file (after a holdout split)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else 3

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def original_index(self, i: int) -> int:
        return int(self.indices[i]) if self.indices is not None else i

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images -> float [B, C, H, W] in [0, 1], and labels."""
        x = self.images[idx]
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
        return x.float().div_(255.0), self.labels[idx]

    def image(self, i: int) -> np.ndarray:
        return self.images[i].numpy()

    def subset(self, positions: np.ndarray, **info: Any) -> "ArrayDataset":
        """The images at ``positions``, keeping their indices within the file (for folds and holdouts)."""
        pos = np.asarray(positions, dtype=np.int64)
        base = np.arange(len(self)) if self.indices is None else np.asarray(self.indices)
        t = torch.from_numpy(pos)
        return ArrayDataset(name=self.name, split=self.split, images=self.images[t], labels=self.labels[t],
                            classes=self.classes, indices=base[pos], info={**self.info, **info})


def data_config_for(ds: ArrayDataset | "FolderDataset", size: tuple[int, int] | None = None) -> dict[str, Any]:
    mean, std = STATS.get(ds.name, ([0.5] * ds.channels, [0.5] * ds.channels))
    h, w = size or ds.size
    return {"input_size": [ds.channels, h, w], "mean": mean, "std": std, "interpolation": "bilinear",
            "crop_pct": 1.0}


def normalise(x: torch.Tensor, data_config: dict[str, Any]) -> torch.Tensor:
    mean = torch.tensor(data_config["mean"], dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(data_config["std"], dtype=x.dtype, device=x.device)[:, None, None]
    return (x - mean) / std


def load_idx_dataset(name: str, split: str, data_dir: str | Path | None = None, download: bool = False,
                     split_train: int | None = None) -> ArrayDataset:
    """MNIST-style IDX data. With ``split_train=K`` and no train files, the test split is divided: the
    first K images train, the rest evaluate (disjoint)."""
    if download:
        _download(name)
    files = IDX_FILES
    dirs = _search_dirs(name, data_dir)

    def locate(which: str) -> tuple[Path, Path] | None:
        for d in dirs:
            im, lb = _find_file(d, files[which][0]), _find_file(d, files[which][1])
            if im and lb:
                return im, lb
        return None

    holdout = split_train is not None
    source_split = "test" if holdout and locate("train") is None else split
    if holdout and locate("train") is not None:
        source_split = "train"  # the real train split exists: hold out from it
    found = locate(source_split)
    if found is None:
        hint = "" if source_split == "test" or name != "mnist" else \
            " (only the MNIST test split may be here: use --split-train K to train on part of it)"
        raise VitscopeError(not_found(name, source_split, data_dir, dirs) + hint, data_dir)
    images = read_idx(found[0])
    labels = read_idx(found[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise VitscopeError(f"IDX shapes do not match: images {images.shape}, labels {labels.shape}", found[0])
    indices = None
    if holdout:
        n = len(labels)
        if not 0 < split_train < n:  # type: ignore[operator]
            raise VitscopeError(f"--split-train {split_train}: must be between 1 and {n - 1}")
        indices = np.arange(0, split_train) if split == "train" else np.arange(split_train, n)
        images, labels = images[indices], labels[indices]
    classes = FASHION_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
    return ArrayDataset(name=name, split=split, images=torch.from_numpy(np.ascontiguousarray(images)),
                        labels=torch.from_numpy(labels.astype(np.int64)), classes=classes, indices=indices,
                        info={"files": [str(found[0]), str(found[1])], "source_split": source_split,
                              "split_train": split_train})


def _download(name: str) -> None:
    from torchvision import datasets as tvd

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitscope" / "data"
    cls = {"fashion-mnist": tvd.FashionMNIST, "mnist": tvd.MNIST}[name]
    try:
        for train in (True, False):
            cls(str(cache), train=train, download=True)
    except Exception as e:  # network errors come in many types; say what failed
        raise VitscopeError(f"could not download {name} ({str(e).splitlines()[0][:160]})") from None


@dataclass
class FolderDataset:
    """ImageFolder layout: one subfolder per class, any image format Pillow reads."""

    name: str
    split: str
    paths: list[Path]
    labels: torch.Tensor
    classes: list[str]
    channels: int = 3
    size: tuple[int, int] = (224, 224)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def original_index(self, i: int) -> int:
        return i


def load_folder(path: str | Path, split: str = "test") -> FolderDataset:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise VitscopeError("image folder not found", root)
    sub = root / split if (root / split).is_dir() else root
    classes = sorted(d.name for d in sub.iterdir() if d.is_dir())
    paths, labels = [], []
    for ci, c in enumerate(classes):
        for p in sorted((sub / c).rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir():  # a FIFO or dangling link: refused
                paths.append(check_regular_file(p, "an image file"))
                labels.append(ci)
    if not paths:
        raise VitscopeError("no images found: expected one subfolder per class holding image files "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))})", sub)
    return FolderDataset(name=f"folder:{root}", split=split, paths=paths,
                         labels=torch.tensor(labels, dtype=torch.int64), classes=classes, info={"root": str(sub)})


def load_cifar10(split: str, data_dir: str | Path | None, download: bool) -> ArrayDataset:
    from torchvision.datasets import CIFAR10

    root = Path(data_dir or Path.home() / ".cache" / "vitscope" / "data").expanduser()
    try:
        ds = CIFAR10(str(root), train=split == "train", download=download)
    except RuntimeError:
        raise VitscopeError(f"cifar10 not found under {root}: pass --download (needs internet) or --data-dir") \
            from None
    return ArrayDataset(name="cifar10", split=split, images=torch.from_numpy(ds.data),
                        labels=torch.tensor(ds.targets, dtype=torch.int64), classes=CIFAR10_CLASSES)


def get_dataset(name: str, split: str = "test", data_dir: str | Path | None = None, download: bool = False,
                split_train: int | None = None):
    """A dataset by name: fashion-mnist, mnist, cifar10 or folder:PATH."""
    if split not in ("train", "test"):
        raise VitscopeError(f"unknown split {split!r} (use train or test)")
    if name.startswith("folder:"):
        ds = load_folder(name[len("folder:"):], split)
    elif name in ("fashion-mnist", "mnist"):
        ds = load_idx_dataset(name, split, data_dir, download, split_train)
    elif name == "cifar10":
        ds = load_cifar10(split, data_dir, download)
    else:
        raise VitscopeError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    ds.info["data_dir"] = str(Path(data_dir).expanduser().resolve()) if data_dir else None  # to reopen it
    return ds


def fold_assignment(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold number per example: stratified (each class spread evenly over the folds, fold sizes differ by at
    most one) after a seeded shuffle, so the folds are random but every fold sees every class."""
    labels = np.asarray(labels)
    perm = np.random.default_rng(seed).permutation(len(labels))
    order = perm[np.argsort(labels[perm], kind="stable")]  # shuffled within each class, classes in turn
    fold = np.empty(len(labels), dtype=np.int64)
    fold[order] = np.arange(len(labels)) % folds  # dealt like cards: round-robin across the class runs
    return fold


def get_fold_datasets(name: str, split: str, data_dir: str | Path | None, folds: int, fold: int, seed: int = 0,
                      limit: int | None = None) -> tuple[ArrayDataset, ArrayDataset, ArrayDataset]:
    """(train, held_out, whole) for fold ``fold`` of ``folds`` of a split (its first ``limit`` images):
    train is every other fold. Both keep their indices within the file."""
    try:
        whole = get_dataset(name, split, data_dir)
    except VitscopeError as e:  # the holdout hint (--split-train) is train's; crossval folds the test split itself
        if "--split-train" not in str(e):
            raise
        raise VitscopeError(str(e).split(" (only the MNIST test split")[0] + " (only the MNIST test split may be "
                            "here: cross-validate it with --split test)") from None
    if not isinstance(whole, ArrayDataset):
        raise VitscopeError("cross-validation needs an in-memory dataset (mnist, fashion-mnist, cifar10), "
                            "not an image folder")
    if limit is not None:
        if limit < 1:
            raise VitscopeError(f"--limit {limit}: must be at least 1")
        whole = whole.subset(np.arange(min(limit, len(whole))))
    n = len(whole)
    if not 2 <= folds <= n:
        raise VitscopeError(f"--folds {folds}: must be between 2 and the number of images ({n})")
    if not 0 <= fold < folds:
        raise VitscopeError(f"fold {fold}: must be between 0 and {folds - 1}")
    assign = fold_assignment(whole.labels.numpy(), folds, seed)
    info = {"folds": folds, "fold": fold, "fold_seed": seed, "fold_limit": limit}
    return (whole.subset(np.flatnonzero(assign != fold), **info, fold_part="train"),
            whole.subset(np.flatnonzero(assign == fold), **info, fold_part="held_out"), whole)


def iterate_batches(ds, batch_size: int, data_config: dict[str, Any], indices: torch.Tensor | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Normalised eval batches (x, labels, dataset indices) in order, streaming (never all at once)."""
    n = len(ds)
    order = torch.arange(n) if indices is None else indices
    if isinstance(ds, ArrayDataset):
        c, h, w = data_config["input_size"]
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            x, y = ds.batch(idx)
            if x.shape[1] != c:
                x = x.mean(1, keepdim=True) if c == 1 else x.expand(-1, c, -1, -1)
            if x.shape[-2:] != (h, w):
                x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=True,
                                                    align_corners=False)
            yield normalise(x, data_config), y, idx
        return
    from .images import load_image

    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        xs = [load_image(ds.paths[int(i)], data_config).input for i in idx]
        yield torch.stack(xs), ds.labels[idx], idx


@dataclass(frozen=True)
class DatasetImage:
    """One image of a dataset, by its position in ``dataset`` (what the browser opens in the inspector)."""

    dataset: Any  # ArrayDataset or FolderDataset
    position: int

    @property
    def index(self) -> int:
        """The index within the dataset's file (or folder listing)."""
        return self.dataset.original_index(self.position)

    @property
    def label(self) -> int:
        return int(self.dataset.labels[self.position])

    @property
    def name(self) -> str:
        """A short name that is also safe in a file name: ``fashion-mnist-test-17`` or the image's path."""
        if isinstance(self.dataset, FolderDataset):
            return str(self.dataset.paths[self.position])
        return f"{self.dataset.name}-{self.dataset.split}-{self.index}"

    def pil(self):
        """The image as Pillow reads it ('L' or 'RGB'), before the model's preprocessing."""
        from PIL import Image

        if isinstance(self.dataset, FolderDataset):
            from .images import read_image

            return read_image(self.dataset.paths[self.position])
        a = self.dataset.image(self.position)
        return Image.fromarray(a, "L" if a.ndim == 2 else "RGB")


def position_of(ds: Any, index: int) -> int:
    """The position in ``ds`` of the image with file index ``index`` (the inverse of original_index)."""
    base = getattr(ds, "indices", None)
    if base is None:
        return int(index)
    hit = np.flatnonzero(np.asarray(base) == index)
    if not len(hit):
        raise IndexError(f"image {index} is not in this split")
    return int(hit[0])
