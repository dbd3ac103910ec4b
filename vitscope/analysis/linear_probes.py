"""Linear probes per block (Vilas et al. 2023, section 5), compared with the class projection.

Per block, a linear classifier is trained on a token's block output — the CLS token, and the mean of
the image tokens — over a training part of the swept images, and tested on the rest; beside it the
class projection's top-1 accuracy (``head(norm(h))``, no training) on the same test images. The
block outputs are stored while the sweep streams (``BlockFeatures``: float32 memory-mapped files,
[L, N, D] per token kind, so one block's features are one contiguous read and the process keeps
no activations in memory).

Two probes: ``logistic`` (default) is multinomial logistic regression with scikit-learn's objective
(``C`` times the summed cross-entropy plus half the squared weights, bias not penalised) on
standardised features; ``ridge`` is the authors' probe (``src/linear_probing/prober.py``:
``sklearn.linear_model.Ridge(alpha=1)`` on one-hot targets of +1 / -1, fitted with an intercept).
Both are solved in torch rather than with scikit-learn: torch is already loaded for the sweep, and
scikit-learn would add a dependency (and ~1 s of imports) for two convex fits of a few lines; the
tests check both against scikit-learn on the same features. The authors' probes are few-shot (10
images per class, from another partition): ``shots`` takes N images per class of the training part.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

PROBE_KINDS = ("logistic", "ridge")
TRAIN_FRACTION = 0.5  # of each class's swept images: the probes' training part; the rest tests both


def probe_split(labels: np.ndarray, shots: int | None = None, seed: int = 0,
                train_fraction: float = TRAIN_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified (train, test) indices: ``train_fraction`` of each class trains, the rest tests;
    with ``shots`` only the first ``shots`` of each class's training part train (few-shot; the test part
    stays the same, so few-shot and full probes are scored on the same images)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * train_fraction))
        part = idx[:k] if shots is None else idx[:min(k, shots)]
        train.append(part)
        test.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, C: float = 1.0,
                 max_iter: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, scikit-learn's L2 objective, full-batch L-BFGS in float64:
    returns (weight [K, D], bias [K]). The objective is strictly convex, so the optimum is sklearn's."""
    x, y = x.double(), y.long()
    n = x.shape[0]
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        # divided by C*n: the same minimiser as sklearn's sum, at gradients of a usable scale
        loss = F.cross_entropy(x @ w.T + b, y, reduction="mean") + (w * w).sum() / (2 * C * n)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def fit_ridge(x: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' probe: ridge regression on +1/-1 one-hot targets with an intercept (centred, closed form)."""
    x = x.double()
    t = -torch.ones(x.shape[0], num_classes, dtype=torch.float64)
    t[torch.arange(x.shape[0]), y.long()] = 1.0
    xm, tm = x.mean(0), t.mean(0)
    xc, tc = x - xm, t - tm
    gram = xc.T @ xc + alpha * torch.eye(x.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(gram, xc.T @ tc).T  # [K, D]
    return w, tm - w @ xm


@dataclass
class Standardiser:
    """The training part's mean and std (a feature constant there is left unscaled)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> "Standardiser":
        x = x.double()
        std = x.std(0, unbiased=False)
        return cls(x.mean(0), torch.where(std > 0, std, torch.ones_like(std)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() - self.mean) / self.std


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                   num_classes: int, kind: str = "logistic") -> float:
    """Test accuracy of a probe trained on (train_x, train_y)."""
    if kind not in PROBE_KINDS:
        raise ValueError(f"unknown probe {kind!r} (use {', '.join(PROBE_KINDS)})")
    if kind == "ridge":  # the authors' probe sees the raw features
        w, b = fit_ridge(train_x, train_y, num_classes)
        pred = (test_x.double() @ w.T + b).argmax(-1)
    else:
        scale = Standardiser.fit(train_x)
        w, b = fit_logistic(scale(train_x), train_y, num_classes)
        pred = (scale(test_x) @ w.T + b).argmax(-1)
    return float((pred == test_y.long()).double().mean()) if len(test_y) else float("nan")


class BlockFeatures:
    """Per-block token features of N images, written batch by batch into memory-mapped float32 files:
    ``cls`` [L, N, D] (models with a CLS token) and ``image_mean`` [L, N, D] (the mean image token)."""

    def __init__(self, num_layers: int, n: int, dim: int, has_cls: bool, directory: Path | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="vitscope-features-", dir=directory)
        root = Path(self._tmp.name)
        shape = (num_layers, n, dim)
        self.arrays: dict[str, np.memmap] = {
            k: np.lib.format.open_memmap(root / f"{k}.npy", mode="w+", dtype=np.float32, shape=shape)
            for k in (("cls", "image_mean") if has_cls else ("image_mean",))}
        self.labels = np.full(n, -1, dtype=np.int64)
        self.filled = 0

    def write(self, cls: torch.Tensor | None, image_mean: torch.Tensor, labels: torch.Tensor) -> None:
        """Append one batch: ``cls`` / ``image_mean`` [L, B, D], ``labels`` [B]."""
        i, j = self.filled, self.filled + len(labels)
        for k, v in (("cls", cls), ("image_mean", image_mean)):
            if k in self.arrays and v is not None:
                self.arrays[k][:, i:j] = v.float().cpu().numpy()
        self.labels[i:j] = labels.cpu().numpy()
        self.filled = j

    def block(self, token: str, b: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.arrays[token][b, :self.filled]))

    def close(self) -> None:
        for a in self.arrays.values():
            a._mmap.close()  # noqa: SLF001  (numpy keeps no public close; the files go with the directory)
        self.arrays = {}
        self._tmp.cleanup()

    def __enter__(self) -> "BlockFeatures":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def block_probes(features: BlockFeatures, num_classes: int, project: Callable[[torch.Tensor], torch.Tensor],
                 shots: int | None = None, kind: str = "logistic", seed: int = 0) -> dict[str, Any]:
    """Per block and token kind: the probe's test accuracy and the projection's top-1 accuracy on the same
    test images (``project``: [M, D] -> [M, C] class logits, the model's own norm and head)."""
    labels = features.labels[:features.filled]
    train, test = probe_split(labels, shots, seed)
    y = torch.from_numpy(labels)
    out: dict[str, Any] = {"kind": kind, "shots": shots, "seed": seed, "train_fraction": TRAIN_FRACTION,
                           "n_train": int(len(train)), "n_test": int(len(test)), "tokens": list(features.arrays)}
    tr, te = torch.from_numpy(train), torch.from_numpy(test)
    for token in features.arrays:
        probe, proj = [], []
        for b in range(features.arrays[token].shape[0]):
            h = features.block(token, b)
            probe.append(probe_accuracy(h[tr], y[tr], h[te], y[te], num_classes, kind))
            proj.append(float((project(h[te]).argmax(-1) == y[te]).double().mean()) if len(te) else float("nan"))
        out[f"{token}_probe_accuracy"] = probe
        out[f"{token}_projection_accuracy"] = proj
    return out
