"""Test-set sweeps: run a whole split, keep per-image results (never activations), cache them.

The cache key is the checkpoint's sha256 plus dataset, split and holdout settings, so reopening a
sweep of the same model and data is instant. Under torchrun each rank takes a shard and rank 0
gathers the results.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .analysis.hooks import using

from .atomic import atomic_write_bytes
from .data.datasets import iterate_batches

K = 5


@dataclass
class SweepResult:
    index: np.ndarray  # int64 [N] index within the dataset file
    label: np.ndarray  # int64 [N]
    pred: np.ndarray  # int64 [N]
    topk_idx: np.ndarray  # int64 [N, 5]
    topk_prob: np.ndarray  # float32 [N, 5]
    loss: np.ndarray  # float32 [N]
    classes: list[str]
    key: str = ""
    cached: bool = False

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.label

    @property
    def n(self) -> int:
        return len(self.label)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if self.n else 0.0

    def confusion(self) -> np.ndarray:
        C = len(self.classes)
        m = np.zeros((C, C), dtype=np.int64)
        np.add.at(m, (self.label, self.pred), 1)
        return m

    def per_class_accuracy(self) -> dict[str, float]:
        m = self.confusion()
        totals = m.sum(1)
        return {c: (float(m[i, i] / totals[i]) if totals[i] else float("nan")) for i, c in enumerate(self.classes)}

    def worst_confusions(self, k: int = 5) -> list[tuple[str, str, int]]:
        m = self.confusion()
        np.fill_diagonal(m, 0)
        flat = np.argsort(m, axis=None)[::-1][:k]
        return [(self.classes[i], self.classes[j], int(m[i, j])) for i, j in
                zip(*np.unravel_index(flat, m.shape)) if m[i, j] > 0]

    def summary(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "n": self.n, "per_class_accuracy": self.per_class_accuracy(),
                "confusion": self.confusion().tolist(), "classes": self.classes,
                "worst_confusions": [{"true": a, "predicted": b, "count": c} for a, b, c in self.worst_confusions()],
                "mean_loss": float(self.loss.mean()) if self.n else 0.0, "cache_key": self.key}

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, index=self.index, label=self.label, pred=self.pred, topk_idx=self.topk_idx,
                            topk_prob=self.topk_prob, loss=self.loss, correct=self.correct,
                            classes=np.array(self.classes, dtype=str), key=np.array(self.key))
        return buf.getvalue()

    @classmethod
    def from_npz(cls, path: Path) -> "SweepResult":
        z = np.load(path)
        return cls(index=z["index"], label=z["label"], pred=z["pred"], topk_idx=z["topk_idx"],
                   topk_prob=z["topk_prob"], loss=z["loss"], classes=[str(c) for c in z["classes"]],
                   key=str(z["key"]), cached=True)


def cache_dir() -> Path:
    base = os.environ.get("VITSCOPE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitscope"
    return Path(base) / "sweeps"


def cache_key(model_id: str, ds, limit: int | None) -> str:
    parts = {"model": model_id, "dataset": ds.name, "split": ds.split, "split_train": ds.info.get("split_train"),
             "n": len(ds), "limit": limit, "version": 1}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def model_identity(loaded) -> str:
    from .loaders.checkpoint import file_hash

    src = Path(loaded.spec.source)
    if src.is_file():
        return file_hash(src)
    if loaded.spec.random_weights:
        return ""  # random weights: never cached
    from .loaders.checkpoint import state_dict_hash

    return state_dict_hash(loaded.model.state_dict())


def run_sweep(loaded, ds, batch_size: int = 256, limit: int | None = None, amp: bool = False,
              use_cache: bool = True, progress: Callable[[int, int], None] | None = None) -> SweepResult:
    """Predict every image of ``ds`` in batches (inference mode), streaming: memory is flat in N."""
    rank, world = _rank_world()
    ident = model_identity(loaded)
    key = cache_key(ident, ds, limit) if ident else ""
    path = cache_dir() / f"{key}.npz"
    if use_cache and key and path.is_file():
        try:
            return SweepResult.from_npz(path)
        except (OSError, KeyError, ValueError):
            pass  # a damaged cache file is recomputed
    n = len(ds) if limit is None else min(limit, len(ds))
    idx = torch.arange(n)[rank::world]
    model, device = loaded.model.eval(), loaded.device
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("i", "y", "p", "ti", "tp", "l")}
    done = 0
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp and device.type == "cuda" else None
    with torch.inference_mode():
        for x, y, bidx in iterate_batches(ds, batch_size, loaded.spec.data_config, idx):
            with using(model), (ctx or contextlib.nullcontext()):  # one batch at a time: the UI may share it
                logits = model(x.to(device))
            logits = logits.float().cpu()
            probs = logits.softmax(-1)
            tp, ti = probs.topk(min(K, probs.shape[1]), -1)
            parts["i"].append(original_indices(ds, bidx.numpy()))
            parts["y"].append(y.numpy().astype(np.int64))
            parts["p"].append(ti[:, 0].numpy().astype(np.int64))
            parts["ti"].append(ti.numpy().astype(np.int64))
            parts["tp"].append(tp.numpy().astype(np.float32))
            parts["l"].append(F.cross_entropy(logits, y, reduction="none").numpy().astype(np.float32))
            done += len(y)
            if progress:
                progress(done, len(idx))
    cat = {k: (np.concatenate(v) if v else np.zeros((0,))) for k, v in parts.items()}
    if world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, cat)
        cat = {k: np.concatenate([g[k] for g in gathered]) for k in cat}
        order = np.argsort(cat["i"], kind="stable")
        cat = {k: v[order] for k, v in cat.items()}
    res = SweepResult(index=cat["i"], label=cat["y"], pred=cat["p"], topk_idx=cat["ti"].reshape(-1, min(K, len(ds.classes))),
                      topk_prob=cat["tp"].reshape(-1, min(K, len(ds.classes))), loss=cat["l"],
                      classes=list(loaded.spec.classes), key=key)
    if key and rank == 0 and use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, res.to_npz())
    return res


def original_indices(ds, idx: np.ndarray) -> np.ndarray:
    """Indices within the dataset's file (a holdout split keeps its offsets)."""
    base = getattr(ds, "indices", None)
    return (np.asarray(base)[idx] if base is not None else idx).astype(np.int64)


def _rank_world() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
