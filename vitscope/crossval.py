"""Out-of-sample probabilities for a whole split by K-fold cross-validation, for finding label issues.

A split that no held-out model exists for (the MNIST test split that vitscope's samples train on) gets
one anyway: the split is divided into K stratified folds; for each fold a model (the ordinary
:class:`~vitscope.train.Trainer`, run directory ``DIR/fold-k/``) trains on the other K-1 folds, and its
*last* checkpoint predicts the held-out fold. Not the best one: choosing by held-out accuracy would let
the held-out labels into the model choice. Put together, every image has probabilities from a model
that never saw it, which is what confident learning (:mod:`vitscope.label_issues`) needs.

``DIR`` ends up with ``fold-0/`` ... ``fold-{K-1}/`` (normal run directories, ``fold.json`` listing
which images each side got), ``sweep.npz`` (a :class:`~vitscope.sweep.SweepResult` over the whole
split, in file order, with ``fold`` set) and ``crossval.json`` (the summary and the ranked label
issues, and the sha256 of that ``sweep.npz``), written in that order, atomically: ``crossval.json``
existing, and naming the ``sweep.npz`` beside it, means the run is complete. A full disk is one error
line with the previous files as they were; a kill leaves at worst a temporary file the next run removes.
A fold whose directory already holds a finished model of the same configuration is reused, an
interrupted one resumes, so a stopped crossval continues where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .atomic import remove_stale_temps, write_output
from .errors import VitscopeError
from .sweep import SweepResult

# Measured on the 10,000-image MNIST test split on 2 CPU cores (README, "Cross-validation"): cnn-small
# reaches ~99% held-out accuracy in 5 epochs on 8,000 images (~20 s a fold), where vit-4x4 is at 89% after
# 10 epochs; a weak model flags many right labels, so the CNN is the default even in a ViT tool.
DEFAULT_PRESET = "cnn-small"
DEFAULT_EPOCHS = 5
DEFAULT_FOLDS = 5
DEFAULT_BATCH_SIZE = 128
# Fold models train without label smoothing (train's default is 0.1): smoothing caps every probability
# near 0.9, so the per-class thresholds (mean p(own class), ~0.89) sit at the cap and confident
# learning flags nothing. Measured on MNIST: 0 issues flagged with smoothing, see README for without.
PREDICT_BATCH_SIZE = 512
OUTPUT_FILES = ("sweep.npz", "crossval.json")
# run.json fields that may differ between an interrupted crossval and its continuation
NOT_COMPARED = ("out", "command", "device", "amp")


@dataclass
class CrossvalEvent:
    """kind: fold_start, step, epoch_end, fold_done, stopped, finished. ``fold`` counts from 0."""

    kind: str
    fold: int = 0
    data: dict[str, Any] = field(default_factory=dict)


class CrossValidation:
    """K-fold cross-validation of one split; :meth:`events` runs it, :meth:`stop` (any thread) halts it."""

    def __init__(self, dataset: str, split: str = "test", folds: int = DEFAULT_FOLDS, preset: str = DEFAULT_PRESET,
                 epochs: int = DEFAULT_EPOCHS, out: str | Path = "runs/crossval", data_dir: str | Path | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0, limit: int | None = None, device: str = "cpu",
                 overwrite: bool = False, command: str = ""):
        from .data.datasets import get_fold_datasets
        from .train.presets import resolve_model

        if epochs < 1:
            raise VitscopeError(f"--epochs {epochs}: must be at least 1")
        if batch_size < 1:
            raise VitscopeError(f"--batch-size {batch_size}: must be at least 1")
        # absolute, so that the fold runs resume from any working directory
        self.data_dir = str(Path(data_dir).expanduser().resolve()) if data_dir else None
        self.dataset, self.split, self.folds, self.preset, self.epochs = dataset, split, folds, preset, epochs
        self.batch_size, self.seed, self.limit, self.device = batch_size, seed, limit, device
        self.out = Path(out).expanduser()
        self.command = command
        # everything that can be wrong with the input is found here, before any training
        _, _, whole = get_fold_datasets(dataset, split, self.data_dir, folds, 0, seed, limit)
        self.n = len(whole)
        self.classes = list(whole.classes)
        resolve_model(preset, whole.channels, whole.size, len(whole.classes))
        self.overwrite = overwrite
        self._check_out()
        self._stop = threading.Event()
        self._trainer = None
        self.result: SweepResult | None = None
        self.summary: dict[str, Any] | None = None

    # -- configuration ---------------------------------------------------------------------------
    def fold_dir(self, k: int) -> Path:
        return self.out / f"fold-{k}"

    def fold_config(self, k: int):
        from .train import TrainConfig

        return TrainConfig(model=self.preset, dataset=self.dataset, out=str(self.fold_dir(k)), epochs=self.epochs,
                           batch_size=self.batch_size, seed=self.seed, data_dir=self.data_dir, device=self.device,
                           command=self.command, folds=self.folds, fold=k, fold_split=self.split,
                           fold_limit=self.limit, label_smoothing=0.0)

    def _same_config(self, k: int) -> bool:
        path = self.fold_dir(k) / "run.json"
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        want = {key: v for key, v in asdict(self.fold_config(k)).items() if key not in NOT_COMPARED}
        return isinstance(stored, dict) and all(stored.get(key) == v for key, v in want.items())

    def _check_out(self) -> None:
        """Files already in DIR: those of this same crossval are continued; any other is a clash (exit 2)."""
        if self.overwrite or not self.out.exists():
            return
        if not self.out.is_dir():
            raise VitscopeError("--out must be a directory", self.out)
        clash = []
        for k in range(self.folds):
            d = self.fold_dir(k)
            if d.exists() and any((d / name).exists() for name in _run_files()) and not self._same_config(k):
                clash.append(d.name)
        extra = sorted(p.name for p in self.out.glob("fold-*") if p.name not in
                       {self.fold_dir(k).name for k in range(self.folds)})
        clash += extra  # folds of a crossval with another --folds
        summary = self.out / "crossval.json"
        if summary.is_file():
            try:
                s = json.loads(summary.read_text())
                same = all(s.get(key) == v for key, v in self._identity().items())
            except (OSError, json.JSONDecodeError, AttributeError):
                same = False
            if not same:
                clash.append("crossval.json")
        if clash:
            raise VitscopeError(f"already holds a different run ({', '.join(clash)}); pass --overwrite to replace "
                                "it or choose another --out (the same command continues its own crossval)", self.out)

    def _identity(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "data_dir": self.data_dir, "folds": self.folds,
                "preset": self.preset, "epochs": self.epochs, "seed": self.seed, "batch_size": self.batch_size,
                "limit": self.limit, "n": self.n}

    def _finished(self, k: int) -> bool:
        """The fold's last.safetensors holds the final epoch's weights of this configuration."""
        from safetensors import safe_open

        path = self.fold_dir(k) / "last.safetensors"
        if not path.is_file() or not self._same_config(k):
            return False
        try:
            with safe_open(str(path), "pt") as f:
                train = json.loads((f.metadata() or {}).get("vitscope", "{}")).get("train") or {}
        except Exception:  # unreadable (e.g. truncated by a crash): train it again
            return False
        return train.get("epoch") == self.epochs and train.get("fold") == k and train.get("folds") == self.folds

    # -- control ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop after the current training step; the fold's state is saved, nothing else is written."""
        self._stop.set()
        if self._trainer is not None:
            self._trainer.stop()

    def interrupt(self) -> None:
        """For a second Ctrl-C, from a SIGINT handler: abandon the fold's step or evaluation under way (see
        :meth:`Trainer.interrupt`); outside training (predicting a fold), stop at once with KeyboardInterrupt."""
        trainer = self._trainer
        if trainer is not None:
            trainer.interrupt()
        else:
            raise KeyboardInterrupt

    # -- the run ---------------------------------------------------------------------------------
    def events(self) -> Iterator[CrossvalEvent]:
        from .train import Trainer

        t0 = time.perf_counter()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.overwrite:  # a replaced crossval must not look complete while its folds retrain
                for name in OUTPUT_FILES:
                    (self.out / name).unlink(missing_ok=True)
            for name in OUTPUT_FILES:  # left by a crossval killed while writing them
                remove_stale_temps(self.out, name)
        except OSError as e:
            raise VitscopeError(f"cannot prepare the output directory: {e.strerror or e}", self.out) from None
        parts, reused, fold_time = [], [], []
        for k in range(self.folds):
            if self._stop.is_set():
                yield CrossvalEvent("stopped", k, {"run_dir": str(self.fold_dir(k))})
                return
            t_fold = time.perf_counter()
            if not self.overwrite and self._finished(k):
                status = "reuse"
            elif not self.overwrite and self._same_config(k) and (self.fold_dir(k) / "state.pt").is_file():
                status = "resume"
            else:
                status = "train"
            if status == "reuse":
                reused.append(k)
                for d in (self.fold_dir(k), self.fold_dir(k) / "probes"):  # a kill during its last state save
                    if d.is_dir():
                        remove_stale_temps(d)
                yield CrossvalEvent("fold_start", k, {"status": status, "folds": self.folds,
                                                      "run_dir": str(self.fold_dir(k))})
            else:
                if status == "resume":
                    trainer = Trainer(self.fold_config(k), resume=self.fold_dir(k))
                else:  # a fresh fold, or a leftover of this crossval with no state to resume from
                    trainer = Trainer(self.fold_config(k), overwrite=True)
                self._trainer = trainer
                if self._stop.is_set():  # stop() came while the trainer was being built
                    trainer.stop()
                yield CrossvalEvent("fold_start", k, {
                    "status": status, "folds": self.folds, "run_dir": str(self.fold_dir(k)),
                    "n_train": len(trainer.train_ds), "n_held_out": len(trainer.test_ds), "epochs": self.epochs,
                    "epoch": trainer.epoch, "steps_per_epoch": trainer.steps_per_epoch})
                for ev in trainer.events():
                    if ev.kind == "step":
                        yield CrossvalEvent("step", k, {**ev.data, "epoch": ev.epoch})
                    elif ev.kind == "epoch_end":
                        yield CrossvalEvent("epoch_end", k, ev.data)
                    elif ev.kind == "stopped":
                        self._trainer = None
                        yield CrossvalEvent("stopped", k, {**ev.data, "run_dir": str(self.fold_dir(k))})
                        return
                self._trainer = None
            part = self._predict(k)
            parts.append(part)
            fold_time.append(_train_time(self.fold_dir(k)))
            yield CrossvalEvent("fold_done", k, {"status": status, "accuracy": part.accuracy, "n_held_out": part.n,
                                                 "train_time_s": fold_time[-1],
                                                 "time_s": time.perf_counter() - t_fold})
        self.result = self._assemble(parts)
        self.summary = self._summarise(self.result, reused, fold_time, time.perf_counter() - t0)
        # sweep.npz first: crossval.json, naming it by its sha256, is the mark of a complete run
        sweep = self.result.to_npz()
        self.summary["sweep_sha256"] = hashlib.sha256(sweep).hexdigest()
        write_output(self.out / "sweep.npz", sweep)
        write_output(self.out / "crossval.json", json.dumps(self.summary, indent=2).encode())
        yield CrossvalEvent("finished", self.folds, {"summary": self.summary})

    def _predict(self, k: int) -> SweepResult:
        """Fold k's held-out images through its last checkpoint (never cached: the weights may be retrained)."""
        from .data.datasets import get_fold_datasets
        from .loaders import load
        from .sweep import run_sweep

        _, held_out, _ = get_fold_datasets(self.dataset, self.split, self.data_dir, self.folds, k, self.seed,
                                           self.limit)
        loaded = load(self.fold_dir(k) / "last.safetensors", device=self.device, allow_cnn=True)
        if list(loaded.spec.classes) != self.classes:
            raise VitscopeError(f"the fold model's classes differ from {self.dataset}'s", self.fold_dir(k))
        res = run_sweep(loaded, held_out, PREDICT_BATCH_SIZE, use_cache=False)
        if res.probs is None:
            raise VitscopeError(f"crossval needs every class probability: at most 100 classes, not {len(self.classes)}")
        return res

    def _assemble(self, parts: list[SweepResult]) -> SweepResult:
        """One result over the split, in file order, each image's numbers from the model that held it out."""
        cat = {name: np.concatenate([getattr(p, name) for p in parts]) for name in
               ("index", "label", "pred", "topk_idx", "topk_prob", "loss", "p_true", "margin", "probs")}
        fold = np.concatenate([np.full(p.n, k, dtype=np.int64) for k, p in enumerate(parts)])
        order = np.argsort(cat["index"], kind="stable")
        models = [f"{self.fold_dir(k).name}/last.safetensors" for k in range(self.folds)]
        meta = {"dataset": self.dataset, "split": self.split, "data_dir": self.data_dir, "limit": self.limit,
                "source": "crossval", "out_of_sample": True, "folds": self.folds, "preset": self.preset,
                "epochs": self.epochs, "seed": self.seed, "models": models}
        from .loaders.checkpoint import file_hash

        ident = {"meta": meta, "models": [file_hash(self.out / m) for m in models]}
        key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
        return SweepResult(index=cat["index"][order], label=cat["label"][order], pred=cat["pred"][order],
                           topk_idx=cat["topk_idx"][order], topk_prob=cat["topk_prob"][order], loss=cat["loss"][order],
                           classes=self.classes, key=key, p_true=cat["p_true"][order], margin=cat["margin"][order],
                           probs=cat["probs"][order], fold=fold[order], meta=meta)

    def _summarise(self, res: SweepResult, reused: list[int], fold_time: list[float], wall: float) -> dict[str, Any]:
        from .label_issues import SCORE_DEFINITION, issue_records

        issues = res.label_issues
        assert res.fold is not None and issues is not None
        fold_acc = [float(res.correct[res.fold == k].mean()) for k in range(self.folds)]
        return {**self._identity(), "accuracy": res.accuracy, "fold_accuracy": fold_acc,
                "fold_sizes": [int((res.fold == k).sum()) for k in range(self.folds)],
                "mean_loss": float(res.loss.mean()), "per_class_accuracy": res.per_class_accuracy(),
                "time_s": round(wall, 2), "fold_train_time_s": [round(t, 2) for t in fold_time],
                "reused_folds": reused, "out": str(self.out), "sweep": "sweep.npz", "models": res.meta["models"],
                "out_of_sample": True, "score_definition": SCORE_DEFINITION,
                "label_issue_count": int(issues.is_issue.sum()),
                "label_issues": issue_records(issues, res.index, res.label, res.classes)}


def _run_files() -> tuple[str, ...]:
    from .train.trainer import RUN_FILES

    return RUN_FILES


def _train_time(run_dir: Path) -> float:
    """Seconds the fold's epochs took (metrics.jsonl), so a reused fold still reports its cost."""
    try:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return 0.0
    return float(sum(r.get("time", 0.0) for r in rows))


def run_crossval(dataset: str, split: str = "test", folds: int = DEFAULT_FOLDS, preset: str = DEFAULT_PRESET,
                 epochs: int = DEFAULT_EPOCHS, out: str | Path = "runs/crossval", data_dir: str | Path | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0, limit: int | None = None, device: str = "cpu",
                 progress: Callable[[CrossvalEvent], None] | None = None, overwrite: bool = False) -> SweepResult:
    """Cross-validate ``split`` into ``out`` and return the out-of-sample :class:`SweepResult`.

    ``progress`` gets every :class:`CrossvalEvent`. Raises KeyboardInterrupt when stopped (the fold's
    state is saved; the same call continues)."""
    cv = CrossValidation(dataset, split, folds, preset, epochs, out, data_dir, batch_size, seed, limit, device,
                         overwrite)
    for ev in cv.events():
        if progress:
            progress(ev)
        if ev.kind == "stopped":
            raise KeyboardInterrupt
    assert cv.result is not None
    return cv.result


def load_crossval(out: str | Path) -> tuple[SweepResult, dict[str, Any]]:
    """A finished crossval directory: its SweepResult and summary (what a browser opens)."""
    out = Path(out).expanduser()
    if not (out / "crossval.json").is_file():
        raise VitscopeError("not a finished crossval directory (no crossval.json)", out)
    try:
        summary = json.loads((out / "crossval.json").read_text())
        if not isinstance(summary, dict):
            raise ValueError("crossval.json does not hold a summary")
        want = summary.get("sweep_sha256")  # absent in a crossval written before it was recorded
        if want is not None and hashlib.sha256((out / "sweep.npz").read_bytes()).hexdigest() != want:
            raise VitscopeError("sweep.npz is not the one crossval.json records (a crossval stopped while writing "
                                "them?): run the same command again to finish it", out)
        return SweepResult.from_npz(out / "sweep.npz"), summary
    except (OSError, KeyError, ValueError) as e:
        raise VitscopeError(f"cannot read the crossval results ({e})", out) from None


__all__ = ["CrossValidation", "CrossvalEvent", "run_crossval", "load_crossval", "DEFAULT_PRESET", "DEFAULT_EPOCHS",
           "DEFAULT_FOLDS"]
