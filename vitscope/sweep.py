"""Test-set sweeps: run a whole split, keep per-image results (never activations), cache them.

The cache key is the checkpoint's sha256 plus dataset, split and holdout settings, so reopening a
sweep of the same model and data is instant. Every saved sweep carries a sha256 of its own arrays, and
a cache entry is used only when that hash, its key, its length, its classes and its image indices all
check: anything else (a truncated or flipped file, another sweep's file, a directory in its place) is
named in one line and recomputed. Under torchrun each rank takes a shard and rank 0 gathers the results.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .analysis.hooks import using

from .atomic import atomic_write_bytes, remove_stale_temps
from .data.datasets import iterate_batches

K = 5
FULL_PROBS_MAX_CLASSES = 100  # all class probabilities are kept up to this many classes (label issues need them)
VERSION = 2
CACHE_FORMAT = 2  # 2: entries carry a content hash (entries of format 1 are never looked up again)
STALE_TEMP_S = 3600.0  # a cache temp file this old was left by a killed writer (a write takes milliseconds)


@dataclass
class SweepResult:
    """Per-image results of a split, in dataset order (never activations or maps).

    ``p_true`` is p(given label), ``margin`` p(given label) - max p(other class) (negative for a
    mistake); ``probs`` holds every class probability when there are at most 100 classes. ``meta``
    says where the numbers came from: dataset, split, data_dir, model, and ``out_of_sample`` (true
    for crossval and for a model that never trained on this split)."""

    index: np.ndarray  # int64 [N] index within the dataset file
    label: np.ndarray  # int64 [N]
    pred: np.ndarray  # int64 [N]
    topk_idx: np.ndarray  # int64 [N, 5]
    topk_prob: np.ndarray  # float32 [N, 5]
    loss: np.ndarray  # float32 [N]
    classes: list[str]
    key: str = ""
    cached: bool = False
    p_true: np.ndarray | None = None  # float32 [N]
    margin: np.ndarray | None = None  # float32 [N]
    probs: np.ndarray | None = None  # float32 [N, C] (C <= 100)
    fold: np.ndarray | None = None  # int64 [N]: crossval fold that held each image out
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # for the person: e.g. a damaged cache entry was recomputed
    sha256: str | None = None  # the content hash read with the file (None: computed here, or an older file)

    def __post_init__(self) -> None:
        if self.p_true is None and self.probs is not None:
            self.p_true = self.probs[np.arange(self.n), self.label].astype(np.float32)
        if self.margin is None and self.probs is not None:
            other = self.probs.copy()
            other[np.arange(self.n), self.label] = -np.inf
            self.margin = (self.p_true - other.max(1)).astype(np.float32)

    @property
    def p_pred(self) -> np.ndarray:
        return self.topk_prob[:, 0]

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.label

    @functools.cached_property
    def label_issues(self):
        """Confident-learning label issues (``label_issues.LabelIssues``), or None without all probabilities."""
        if self.probs is None:
            return None
        from .label_issues import find_label_issues

        return find_label_issues(self.label, self.probs)

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
        arrays = dict(index=self.index, label=self.label, pred=self.pred, topk_idx=self.topk_idx,
                      topk_prob=self.topk_prob, loss=self.loss, correct=self.correct, p_true=self.p_true,
                      margin=self.margin, classes=np.array(self.classes, dtype=str), key=np.array(self.key),
                      meta=np.array(json.dumps({**self.meta, "version": VERSION})),
                      **{k: v for k, v in (("probs", self.probs), ("fold", self.fold)) if v is not None})
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays, sha256=np.array(content_hash(arrays)))
        return buf.getvalue()

    @classmethod
    def from_npz(cls, path: Path) -> "SweepResult":
        """Read a saved sweep. A file that cannot be read as one (damaged, without every field of this
        version, or whose arrays differ from the sha256 stored with them) raises ValueError or KeyError;
        one the system cannot read (absent, a directory, no permission) raises OSError."""
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
        except (OSError, ValueError):
            raise
        except Exception as e:  # a damaged zip fails in zipfile's, zlib's or numpy's own ways
            raise ValueError(f"not a readable .npz ({type(e).__name__}: {e})") from None
        stored = arrays.pop("sha256", None)
        if stored is not None and str(stored) != content_hash(arrays):
            raise ValueError("its arrays differ from the sha256 stored with them (changed or damaged)")
        meta = json.loads(str(arrays["meta"]))
        if not isinstance(meta, dict) or meta.get("version") != VERSION:
            raise ValueError(f"sweep file version {meta.get('version') if isinstance(meta, dict) else '?'}")
        try:
            res = cls._checked(arrays, meta)
        except TypeError as e:  # e.g. a single value or text where an array of numbers belongs
            raise ValueError(f"a sweep array has the wrong type or shape ({e})") from None
        res.sha256 = None if stored is None else str(stored)
        return res

    @classmethod
    def _checked(cls, z: dict[str, np.ndarray], meta: dict[str, Any]) -> "SweepResult":
        res = cls(index=z["index"], label=z["label"], pred=z["pred"], topk_idx=z["topk_idx"],
                  topk_prob=z["topk_prob"], loss=z["loss"], classes=[str(c) for c in z["classes"]],
                  key=str(z["key"]), cached=True, p_true=z["p_true"], margin=z["margin"],
                  probs=z.get("probs"), fold=z.get("fold"), meta=meta)
        columns = [a for a in (res.label, res.index, res.pred, res.loss, res.p_true, res.margin, res.topk_idx,
                               res.topk_prob, res.probs, res.fold) if a is not None]
        if any(np.ndim(a) == 0 for a in columns):
            raise ValueError("a sweep array holds a single value")
        n = len(res.label)
        if any(len(a) != n for a in columns):
            raise ValueError("sweep arrays differ in length")
        if n and (res.label.min() < 0 or res.label.max() >= len(res.classes) or res.pred.max() >= len(res.classes)):
            raise ValueError("sweep labels out of range of its classes")
        return res


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the arrays' names, dtypes, shapes and bytes: stored with a sweep, it tells a whole file
    from a damaged one or one whose arrays were changed (a zip's CRCs cover neither a rewritten file nor
    a file another sweep wrote)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("VITSCOPE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitscope"
    return Path(base) / "sweeps"


def cache_key(model_id: str, ds, limit: int | None, data_config: dict[str, Any] | None = None) -> str:
    """Everything a sweep's numbers depend on: the weights, the data files (path, size, mtime) and the
    preprocessing. A changed checkpoint, dataset or preprocessing never reuses an old result."""
    parts = {"model": model_id, "dataset": ds.name, "split": ds.split, "split_train": ds.info.get("split_train"),
             "n": len(ds), "limit": limit, "data": dataset_identity(ds), "data_config": data_config,
             "version": VERSION, "cache_format": CACHE_FORMAT}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def dataset_identity(ds) -> list:
    """The files a dataset was read from, with their sizes and modification times."""
    files = [Path(f) for f in ds.info.get("files", [])] or list(getattr(ds, "paths", []))
    out = []
    for f in files:
        try:
            st = f.stat()
            out.append([str(f), st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([str(f), None, None])
    if not files:  # e.g. torchvision's CIFAR-10: the data itself
        out.append(hashlib.sha256(ds.labels.numpy().tobytes()).hexdigest())
    return out


def model_identity(loaded) -> str:
    """What a sweep's cache key says about the model: the file's hash (and the precision its weights are held
    in, which changes the numbers), else the weights' own hash; empty for random weights (never cached)."""
    from .loaders.checkpoint import file_hash

    src = Path(loaded.spec.source)
    if src.is_file():
        held = loaded.spec.weights_held  # the loader read it off the model
        return file_hash(src) + (f":held-{held}" if held else "")
    if loaded.spec.random_weights:
        return ""  # random weights: never cached
    from .loaders.checkpoint import state_dict_hash

    return state_dict_hash(loaded.model.state_dict())


def run_sweep(loaded, ds, batch_size: int = 256, limit: int | None = None, amp: bool = False,
              use_cache: bool = True, progress: Callable[[int, int], None] | None = None,
              partial: Callable[[SweepResult], None] | None = None, partial_every: float = 0.5,
              write_cache: bool = True) -> SweepResult:
    """Predict every image of ``ds`` in batches (inference mode), streaming: memory is flat in N.

    ``partial`` receives the results so far, at most every ``partial_every`` seconds (the browser
    lists them while the sweep goes on). Inside ``analysis.hooks.cancel_when`` a cancelled caller
    stops the sweep between batches; nothing is cached then. ``use_cache=False`` recomputes even when a
    cached sweep exists, and replaces it; ``write_cache=False`` leaves the cache alone. A cache entry that
    does not check is recomputed and replaced, and a cache that cannot be written leaves the sweep
    uncached: both are said in the result's ``notes``, neither is an error."""
    rank, world = _rank_world()
    ident = model_identity(loaded)
    key = cache_key(ident, ds, limit, loaded.spec.data_config) if ident else ""
    path = cache_dir() / f"{key}.npz"
    n = len(ds) if limit is None else min(limit, len(ds))
    classes = list(loaded.spec.classes)
    notes: list[str] = []
    write_cache = write_cache and bool(key)
    if key and (use_cache or write_cache) and (path.exists() or path.is_symlink()) and not path.is_file():
        notes.append(f"{path}: not a file (a directory?) where this sweep's cache belongs: left as it is, and "
                     "the sweep is not cached")
        use_cache = write_cache = False
    if use_cache and key:
        cached, damage = read_cached(path, key, ds, n, classes)
        if cached is not None:
            return cached
        if damage:
            notes.append(f"{path}: damaged cached sweep ({damage}), recomputing")
    idx = torch.arange(n)[rank::world]
    model, device = loaded.model.eval(), loaded.device
    C = len(loaded.spec.classes)
    full = C <= FULL_PROBS_MAX_CLASSES
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("i", "y", "p", "ti", "tp", "l", "pt", "m", "P")}
    done = 0
    last_partial = time.perf_counter()
    meta = sweep_meta(loaded, ds, limit)
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
            pt = probs.gather(1, y[:, None])[:, 0]
            other = probs.scatter(1, y[:, None], -1.0).amax(1)
            parts["pt"].append(pt.numpy().astype(np.float32))
            parts["m"].append((pt - other).numpy().astype(np.float32))
            if full:
                parts["P"].append(probs.numpy().astype(np.float32))
            done += len(y)
            if progress:
                progress(done, len(idx))
            if partial and done < len(idx) and time.perf_counter() - last_partial >= partial_every:
                partial(_assemble(_concat(parts), C, full, list(loaded.spec.classes), "", meta))
                last_partial = time.perf_counter()
    cat = _concat(parts)
    if world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, cat)
        cat = {k: np.concatenate([g[k] for g in gathered]) for k in cat}
        order = np.argsort(cat["i"], kind="stable")
        cat = {k: v[order] for k, v in cat.items()}
    res = _assemble(cat, C, full, list(loaded.spec.classes), key, meta)
    res.notes = notes
    if write_cache and rank == 0:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(path.parent, older_than_s=STALE_TEMP_S)  # left by sweeps killed while writing
            atomic_write_bytes(path, res.to_npz())
        except OSError as e:
            res.notes.append(f"{path}: cannot write the sweep cache ({e.strerror or e}); the sweep is not cached")
    return res


def _concat(parts: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: (np.concatenate(v) if v else np.zeros((0,))) for k, v in parts.items()}


def _assemble(cat: dict[str, np.ndarray], C: int, full: bool, classes: list[str], key: str,
              meta: dict[str, Any]) -> SweepResult:
    k = min(K, C)
    as_int = {n: cat[n].astype(np.int64) for n in ("i", "y", "p", "ti")}
    return SweepResult(index=as_int["i"], label=as_int["y"], pred=as_int["p"], topk_idx=as_int["ti"].reshape(-1, k),
                       topk_prob=cat["tp"].astype(np.float32).reshape(-1, k), loss=cat["l"].astype(np.float32),
                       classes=classes, key=key, p_true=cat["pt"].astype(np.float32),
                       margin=cat["m"].astype(np.float32),
                       probs=cat["P"].astype(np.float32).reshape(-1, C) if full else None, meta=dict(meta))


def read_cached(path: Path, key: str, ds, n: int, classes: list[str]) -> tuple[SweepResult | None, str | None]:
    """The cached sweep at ``path`` when it is whole and of this sweep: (result, None). Otherwise (None, why
    it was not used), why being None when there is no entry. Its content hash, key, length, classes, image
    indices and labels must all check: a file another sweep wrote, or one whose arrays were changed, is
    not trusted."""
    if not path.is_file():
        return None, None
    try:
        res = SweepResult.from_npz(path)
    except (OSError, KeyError, ValueError) as e:  # from_npz turns every way a damaged file fails into these
        return None, f"{type(e).__name__}: {e}"
    if res.sha256 is None:
        return None, "no content hash stored with it"
    if res.key != key:
        return None, "it holds another sweep"
    if res.n != n or res.classes != classes:
        return None, f"{res.n} images of {len(res.classes)} classes where this sweep has {n} of {len(classes)}"
    if not (np.array_equal(res.index, original_indices(ds, np.arange(n)))
            and np.array_equal(res.label, np.asarray(ds.labels[:n]))):
        return None, "its image indices or labels differ from the dataset's"
    return res, None


def sweep_meta(loaded, ds, limit: int | None) -> dict[str, Any]:
    trained = loaded.spec.provenance.get("train") or {}
    return {"dataset": ds.name, "split": ds.split, "data_dir": ds.info.get("data_dir"),
            "split_train": ds.info.get("split_train"), "limit": limit, "model": str(loaded.spec.source),
            "source": "sweep", "out_of_sample": out_of_sample(trained, ds)}


def out_of_sample(trained: dict[str, Any], ds) -> bool | None:
    """Whether a model's recorded training data excludes this split: None when unknown."""
    if not trained or "dataset" not in trained:
        return None
    if trained.get("dataset") != ds.name:
        return True
    if trained.get("folds"):  # a crossval fold model trained on most of fold_split (crossval tracks which images)
        return ds.split != trained.get("fold_split")
    if ds.split == "test":  # trained on the train split, or on a disjoint holdout of the test split
        st = trained.get("split_train")
        return st is None or ds.info.get("split_train") == st
    return False


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


RANDOM_BASELINE_IMAGES = 1_000


def projection_sweep(loaded, ds, batch_size: int = 256, limit: int | None = None, convention: str = "paper",
                     seed: int = 0, random_limit: int | None = RANDOM_BASELINE_IMAGES,
                     progress: Callable[[int, int], None] | None = None, probes: bool = False,
                     probe_shots: int | None = None, probe_kind: str = "logistic") -> dict[str, Any]:
    """Dataset-level class-embedding curves across blocks (analysis/curves.py) for the model and for a
    randomly initialised copy of the same architecture (seeded: the paper's baseline), each image's
    label as the target. Streams in batches, each batch prepared once for both models: memory is flat
    in the number of images. Not cached (the per-image sweep is).

    The random baseline runs on the first ``random_limit`` images only (None: all): its curves sit at
    chance level and settle within a few hundred images, and a second full pass would double the
    time (benchmarks/bench_projection_sweep.py).

    ``probes``: also the trained model's block outputs (CLS and mean image token) are stored on disk
    as the batches stream, and a linear probe per block is compared with the projection
    (analysis/linear_probes.py; ``probe_shots`` images per class, ``probe_kind``): ``out["probes"]``."""
    from .analysis.curves import CurveSums, accumulate
    from .analysis.memories import random_init_copy
    from .analysis.projection import read_point

    spec, lay = loaded.spec, loaded.spec.layout
    n = len(ds) if limit is None else min(limit, len(ds))
    models = {"model": loaded.model.eval(), "random_init": random_init_copy(spec.arch, spec.kwargs, seed).to(loaded.device)}
    sums = {k: CurveSums(spec.num_layers) for k in models}
    n_random = n if random_limit is None else min(n, random_limit)
    done = 0
    store = _probe_features(loaded, n) if probes else None
    for x, y, _ in iterate_batches(ds, batch_size, spec.data_config, torch.arange(n)):
        x = x.to(loaded.device)
        accumulate(models["model"], x, y, lay.num_prefix, lay.cls_index, sums["model"], convention,
                   features=store.write if store is not None else None)
        if done < n_random:
            k = min(len(y), n_random - done)
            accumulate(models["random_init"], x[:k], y[:k], lay.num_prefix, lay.cls_index, sums["random_init"],
                       convention)
        done += len(y)
        if progress is not None:
            progress(done, n)
    out: dict[str, Any] = {"convention": convention, "read_point": read_point(loaded.model, convention),
                           "target": "label", "random_init_seed": seed}
    for k, s in sums.items():
        out[k] = s.result()
    if store is not None:
        from .analysis.linear_probes import block_probes
        from .analysis.projection import ProjectionPath

        path = ProjectionPath.from_model(loaded.model)
        with store:
            out["probes"] = block_probes(store, spec.num_classes, lambda h: path(h, convention), probe_shots,
                                         probe_kind)
    return out


def _probe_features(loaded, n: int):
    """A store for the block outputs the probes need, in the cache directory (not /tmp: ViT-B's features
    for 50,000 images are 3.7 GB)."""
    from .analysis.linear_probes import BlockFeatures

    root = cache_dir().parent / "features"
    root.mkdir(parents=True, exist_ok=True)
    return BlockFeatures(loaded.spec.num_layers, n, loaded.spec.embed_dim, loaded.spec.layout.cls_index is not None, root)


def projection_curves_path(loaded, ds) -> Path | None:
    """Where the latest projection sweep of this model on this split is kept (the projection-curves
    screen reads it), or None for a model that is never cached (random weights)."""
    ident = model_identity(loaded)
    if not ident:
        return None
    return projection_curves_file(cache_key(ident, ds, None, loaded.spec.data_config))


def projection_curves_file(sweep_key: str) -> Path:
    """The kept projection sweep beside the whole split's sweep whose cache key is ``sweep_key`` (the
    browser has that key, and so needs no second hash of the checkpoint)."""
    return cache_dir() / f"{sweep_key}.projections.json"


def save_projection_curves(loaded, ds, result: dict[str, Any], limit: int | None) -> Path | None:
    """Keep a projection sweep's result (written atomically) for the screen; returns the file."""
    path = projection_curves_path(loaded, ds)
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**result, "dataset": ds.name, "split": ds.split, "limit": limit,
              "model_source": str(loaded.spec.source), "classes": list(loaded.spec.classes), "version": VERSION}
    atomic_write_bytes(path, json.dumps(record).encode())
    return path


def load_projection_curves(path: Path) -> dict[str, Any] | None:
    """A kept projection sweep, or None (absent, damaged or from another version)."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("version") != VERSION or not isinstance(rec.get("model"), dict):
        return None
    return rec
