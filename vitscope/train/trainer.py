"""A Trainer that yields events, can be paused and stopped from another thread, and resumes exactly.

A run directory holds ``run.json`` (the configuration), ``metrics.jsonl`` (one line per epoch),
``steps.jsonl`` (one line per optimiser step: loss and learning rate), ``last.safetensors`` /
``best.safetensors`` (vitscope checkpoints), ``state.pt`` (optimiser, scheduler, RNG and position, loadable
with ``weights_only=True``), ``status.json`` (a heartbeat: process, state, position, speed, ETA, rewritten
twice a second) and ``probes/`` (the attention of a few fixed test images after every epoch,
:mod:`vitscope.train.probes`). Every file but the two logs is written atomically.

When state is saved: at the start of a fresh run (with ``last.safetensors`` of the initial weights, so a
run killed at any moment leaves a checkpoint that loads and a state that resumes), at the end of every
epoch, every ``save_every_s`` seconds within an epoch (default 10 minutes), and on stop. A ``kill -9`` loses
at most the steps since the last of those: within the current epoch.

Another process controls a run through ``control.json`` (``{"seq": N, "command": "pause"|"resume"|"stop"}``,
written atomically; :func:`send_control`), read between steps: the training screen, ``vitscope watch``,
any script. Under torchrun rank 0 reads it and broadcasts the command, so every rank acts on the same step.
A cross-validation fold run (``folds``/``fold`` set) trains on every fold of ``fold_split`` but one and
evaluates on that one; its ``fold.json`` records which images of the file each side got.
Under torchrun (WORLD_SIZE > 1) it trains with DistributedDataParallel: each rank takes a shard of the
epoch's permutation, rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import threading
import time
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_write_bytes, atomic_write_text, remove_stale_temps
from ..data.datasets import (ArrayDataset, data_config_for, get_dataset, get_fold_datasets, iterate_batches,
                             normalise)
from ..errors import VitscopeError
from ..loaders.checkpoint import file_hash, save_checkpoint
from .presets import build_model, resolve_model

from .runfiles import (COMMANDS, CONTROL_FILE, FINAL_STATES, LOG_FILE, RUN_FILES, STALE_FILES,  # noqa: F401
                       STATUS_FILE, STEPS_FILE, check_new_run, check_resumable, read_run_config, send_control)


MIX_SEED_TAG = 0x6D6978  # "mix": keeps the mixing generator's seed apart from the others seeded with cfg.seed


@dataclass
class TrainConfig:
    model: str = "vit-4x4"
    dataset: str = "fashion-mnist"
    out: str = "runs/run"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    clip_grad: float | None = 1.0
    drop_path: float = 0.0
    augment: str = "auto"  # auto | none | shift | flip-shift
    mixup: float = 0.0
    cutmix: float = 0.0
    seed: int = 0
    data_dir: str | None = None
    split_train: int | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    finetune: str | None = None
    device: str = "cpu"
    amp: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    probes: int = 4  # fixed test images whose attention is recorded after every epoch (0: none)
    save_every_s: float = 600.0  # also save state.pt within an epoch this often (seconds; 0: at epoch ends only)
    # cross-validation (vitscope crossval): fold_split is divided into `folds` stratified folds (shuffled with
    # `seed`, first `fold_limit` images only when set); this run trains on all but fold `fold` and evaluates on it
    folds: int | None = None
    fold: int | None = None
    fold_split: str = "test"
    fold_limit: int | None = None

    @classmethod
    def from_stored(cls, stored: dict[str, Any], path: Path) -> "TrainConfig":
        """The configuration a run.json holds (unknown keys ignored); a value of the wrong type is one error
        naming the file, not a crash in the middle of the resumed run."""
        hints = typing.get_type_hints(cls)
        known = {k: v for k, v in stored.items() if k in hints}
        for key, value in known.items():
            if not _fits(value, hints[key]):
                raise VitscopeError(f"{key} is {value!r}, not {_type_name(hints[key])}", path)
        return cls(**known)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a TrainConfig field's type (int, float, str, bool, dict, or an optional one)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typing.get_origin(hint) or hint)


def _type_name(hint: Any) -> str:
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    names = {int: "a whole number", float: "a number", str: "a string", bool: "true or false", dict: "a JSON object",
             type(None): "null"}
    return " or ".join(names.get(typing.get_origin(a) or a, str(a)) for a in (typing.get_args(hint) if union else
                                                                             (hint,)))


@dataclass
class Event:
    """What the trainer reports: kind is start, step, epoch_end, checkpoint, paused, stopped, finished, error."""

    kind: str
    epoch: int = 0
    step: int = 0
    data: dict[str, Any] = field(default_factory=dict)


def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and os.environ.get("VITSCOPE_DIST_BACKEND") != "gloo" \
                else "gloo"
            dist.init_process_group(backend)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    def __init__(self, config: TrainConfig, resume: str | Path | None = None, overwrite: bool = False):
        self.rank, self.world = _dist()
        self._pause = threading.Event()
        self._stop = threading.Event()
        self._control_mtime: int | None = None
        self._control_seq = 0
        self._status: dict[str, Any] = {}
        self._steps_log: Any = None
        self._status_lock = threading.Lock()
        self._beat: threading.Thread | None = None
        self._beat_stop = threading.Event()
        self._rate_window: list[tuple[int, float]] = []
        self._eval_s = 0.0
        self._saved_at = time.monotonic()
        self.probes: Any = None
        self._abortable = False  # within a step's forward/backward or an evaluation: interrupt() may abandon it
        self._updating = False  # within the weight update: a KeyboardInterrupt here leaves it half-applied
        if resume is not None:
            run = check_resumable(resume)
            config = TrainConfig.from_stored(read_run_config(run), run / "run.json")
            config.out = str(run)
            self.resuming = True
        else:
            run = check_new_run(config.out, overwrite)
            self.resuming = False
        self.cfg = config
        self.run_dir = run
        self._setup()

    # -- control from another thread -------------------------------------------------------------
    def pause(self) -> None:
        self._pause.set()

    def resume(self) -> None:
        self._pause.clear()

    def stop(self) -> None:
        self._stop.set()
        self._pause.clear()

    def interrupt(self) -> None:
        """For a second Ctrl-C, from a SIGINT handler (in the thread that trains): abandon the step or the
        evaluation under way by raising KeyboardInterrupt there; the state saved is the one before it. While
        the weights are updated or files written, nothing happens: the stop under way finishes first."""
        if self._abortable:
            self._abortable = False
            raise KeyboardInterrupt

    # -- setup -----------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        from ..loaders import resolve_device

        self.device = resolve_device(cfg.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if cfg.folds is not None:
            if cfg.split_train is not None or cfg.fold is None:
                raise VitscopeError("a fold run needs fold and folds, and no split_train")
            self.train_ds, self.test_ds, _ = get_fold_datasets(cfg.dataset, cfg.fold_split, cfg.data_dir, cfg.folds,
                                                               cfg.fold, cfg.seed, cfg.fold_limit)
        else:
            self.train_ds = get_dataset(cfg.dataset, "train", cfg.data_dir, split_train=cfg.split_train)
            self.test_ds = get_dataset(cfg.dataset, "test", cfg.data_dir, split_train=cfg.split_train)
        if not isinstance(self.train_ds, ArrayDataset):
            raise VitscopeError("training on image folders is not supported yet; sweeps work on folders")
        self.parent: str | None = None
        if cfg.finetune:
            self.arch, self.kwargs, init_sd, self.parent = self._finetune_source(cfg.finetune)
        else:
            self.arch, self.kwargs = resolve_model(cfg.model, self.train_ds.channels, self.train_ds.size,
                                                   len(self.train_ds.classes), cfg.model_kwargs)
            init_sd = None
        self.data_config = data_config_for(self.train_ds, self._input_size())
        torch.manual_seed(cfg.seed)
        self.model = build_model(self.arch, self.kwargs, cfg.drop_path).to(self.device)
        if init_sd is not None:
            self.model.load_state_dict(init_sd, strict=True)
        self.net = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        decay = [p for n, p in self.model.named_parameters() if p.ndim > 1 and "token" not in n and "pos_embed" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if not (p.ndim > 1 and "token" not in n
                                                                        and "pos_embed" not in n)]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        n_train = len(self.train_ds) if cfg.limit_train is None else min(cfg.limit_train, len(self.train_ds))
        self.n_train = n_train
        self.steps_per_epoch = max(1, (n_train // self.world) // cfg.batch_size)
        total = self.steps_per_epoch * cfg.epochs
        warm = int(self.steps_per_epoch * cfg.warmup_epochs)

        def lr_lambda(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = (step - warm) / max(1, total - warm)
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda)
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.rank)
        # timm's Mixup draws from numpy's global generator, which anything in the process may use: the mixing
        # draws from this one instead (seeded from the run's seed, saved in state.pt), so runs repeat exactly
        self.mix_rng = np.random.RandomState([cfg.seed, self.rank, MIX_SEED_TAG])
        self.mixup = None
        if cfg.mixup or cfg.cutmix:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                               num_classes=len(self.train_ds.classes))
        self.epoch, self.batch_in_epoch, self.step, self.best_acc = 0, 0, 0, -1.0
        if self.resuming:
            self._check_fold_record()
            self._load_state()
            if self.rank == 0:
                self._trim_logs()
                for d in (self.run_dir, self.run_dir / "probes"):  # left by a writer killed mid-file
                    if d.is_dir():
                        remove_stale_temps(d)
        elif self.rank == 0:
            self._start_run_dir()
        self._rng_kept = self._rng_state()  # the generators as they go with the weights and position (see events)
        if self.rank == 0:
            if (self.run_dir / CONTROL_FILE).exists():  # a command left from before this process: not for us
                (self.run_dir / CONTROL_FILE).unlink()
            if cfg.probes and hasattr(self.model, "blocks"):
                from .probes import ProbeRecorder

                self.probes = ProbeRecorder(self.run_dir, self.model, self.test_ds, self.data_config, cfg.probes)

    def _start_run_dir(self) -> None:
        """A fresh run's directory. What an earlier run left there goes before run.json is written: its state
        first, so that a run stopped here (a kill, a full disk) is never resumed from another run's state."""
        import shutil

        run = self.run_dir
        try:
            run.mkdir(parents=True, exist_ok=True)
            for stale in ("state.pt", *STALE_FILES):
                (run / stale).unlink(missing_ok=True)
            if (run / "probes").is_dir():
                shutil.rmtree(run / "probes")
            remove_stale_temps(run)  # left by a writer killed mid-file
        except OSError as e:
            raise VitscopeError(f"cannot prepare the run directory: {e.strerror or e}", run) from None
        self._write(run / "run.json", lambda p: atomic_write_text(p, json.dumps(asdict(self.cfg), indent=2)))
        if self.cfg.folds is not None:
            self._write(run / "fold.json", lambda p: atomic_write_text(p, json.dumps(self.fold_record())))

    def _trim_logs(self) -> None:
        """On resume, drop log lines past the saved state (written by the steps a kill threw away), so the
        curves do not show them twice."""
        for name, key, last in ((STEPS_FILE, "step", self.step), ("metrics.jsonl", "epoch", self.epoch)):
            path = self.run_dir / name
            if not path.is_file():
                continue
            keep = []
            for line in path.read_text().splitlines():
                try:
                    if int(json.loads(line)[key]) <= last:
                        keep.append(line)
                except (ValueError, KeyError, TypeError):
                    pass  # a line cut short by the kill
            self._write(path, lambda p: atomic_write_text(p, "".join(k + "\n" for k in keep)))

    def fold_record(self) -> dict[str, Any]:
        """Which images of the file a fold run trains on and holds out (the proof that it never saw them)."""
        cfg = self.cfg
        return {"dataset": cfg.dataset, "split": cfg.fold_split, "folds": cfg.folds, "fold": cfg.fold,
                "seed": cfg.seed, "limit": cfg.fold_limit,
                "train_indices": [int(i) for i in self.train_ds.indices],
                "held_out_indices": [int(i) for i in self.test_ds.indices]}

    def _check_fold_record(self) -> None:
        # the folds are rebuilt from the data on resume: if the files changed, the rest would train on other images
        path = self.run_dir / "fold.json"
        if self.cfg.folds is None or not path.is_file():
            return
        if json.loads(path.read_text()) != self.fold_record():
            raise VitscopeError("the data's folds differ from those this run started with (the dataset files "
                                "changed?); start it again with --overwrite", path)

    def _input_size(self) -> tuple[int, int]:
        s = self.kwargs.get("img_size")
        if s is None:
            return self.train_ds.size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    def _finetune_source(self, ref: str):
        from ..loaders import load

        try:
            parent = load(ref, allow_cnn=True)
        except VitscopeError as e:
            raise VitscopeError(f"--finetune: {e}") from None
        arch, kwargs = parent.spec.arch, dict(parent.spec.kwargs)
        if not kwargs:
            raise VitscopeError("--finetune needs a vitscope checkpoint or timm model (its arch and kwargs)", ref)
        sd = parent.model.state_dict()
        n_cls = len(self.train_ds.classes)
        if kwargs.get("in_chans", 3) != self.train_ds.channels:
            raise VitscopeError(f"--finetune: the model takes {kwargs.get('in_chans', 3)} channels, "
                                f"{self.cfg.dataset} has {self.train_ds.channels}", ref)
        if kwargs.get("num_classes") != n_cls or parent.spec.classes != self.train_ds.classes:
            kwargs["num_classes"] = n_cls  # a new head: drop the old one's weights
            head = parent.model.get_classifier()
            names = {n for n, p in parent.model.named_parameters() if any(p is q for q in head.parameters())}
            sd = {k: v for k, v in sd.items() if k not in names}
            fresh = build_model(arch, kwargs).state_dict()
            sd.update({k: v for k, v in fresh.items() if k not in sd})
        h = file_hash(ref) if Path(ref).is_file() else ref
        return arch, kwargs, sd, h

    # -- state -----------------------------------------------------------------------------------
    def _state_bytes(self) -> bytes:
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                 "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                 "best_acc": self.best_acc, **self._rng_state()}
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    def _save_state(self) -> None:
        if self.rank == 0:
            self._write(self.run_dir / "state.pt", lambda p: atomic_write_bytes(p, self._state_bytes()))
            self._saved_at = time.monotonic()

    def _write(self, path: Path, write) -> Any:
        """Write a file of the run; a failure (a full disk) is one clear error, the previous file intact."""
        try:
            return write(path)
        except OSError as e:
            kept = "the previous one is intact" if path.exists() else "no earlier copy existed"
            raise VitscopeError(f"cannot write {path.name}: {e.strerror or e} ({kept})", path) from None

    def _load_state(self) -> None:
        path = self.run_dir / "state.pt"
        try:
            st = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # any unreadable state: name the file
            raise VitscopeError(f"cannot read training state ({str(e).splitlines()[0][:120]})", path) from None
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])
        self._set_rng_state(st)
        self.epoch, self.batch_in_epoch = int(st["epoch"]), int(st["batch_in_epoch"])
        self.step, self.best_acc = int(st["step"]), float(st["best_acc"])

    def _rng_state(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(), **_numpy_rng_state(self.mix_rng)}

    def _set_rng_state(self, st: dict[str, Any]) -> None:
        self.gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        if "mix_keys" in st:  # absent in a state saved before the mixing had its own generator
            _set_numpy_rng_state(self.mix_rng, st)

    def _checkpoint(self, name: str, acc: float | None, complete: bool = True) -> Path:
        """``complete``: written at an epoch's end; else from within one (the start, a stop), and the record's
        ``epoch`` counts the whole epochs done, ``batch`` the steps into the next."""
        cfg = self.cfg
        train = {"dataset": cfg.dataset, "epochs": cfg.epochs, "epoch": self.epoch + 1, "accuracy": acc,
                 "command": cfg.command, "seed": cfg.seed, "split_train": cfg.split_train, "model": cfg.model}
        if cfg.folds is not None:  # trained on part of fold_split: sweeps must not call that split out-of-sample
            train.update(folds=cfg.folds, fold=cfg.fold, fold_split=cfg.fold_split, fold_limit=cfg.fold_limit)
        if not complete:
            train.update(epoch=self.epoch, batch=self.batch_in_epoch, steps_per_epoch=self.steps_per_epoch)
        if cfg.finetune:
            train["finetune"] = cfg.finetune  # where the parent was; `parent` holds its sha256
        return self._write(self.run_dir / name, lambda p: save_checkpoint(
            p, self.model, arch=self.arch, kwargs=self.kwargs, classes=self.train_ds.classes,
            data_config=self.data_config, parent=self.parent, train=train))

    # -- the loop --------------------------------------------------------------------------------
    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.cfg.augment
        if mode == "auto":
            mode = "shift" if self.cfg.dataset == "mnist" else "flip-shift"
        if mode == "none":
            return x
        B = x.shape[0]
        h, w = x.shape[-2:]
        shift = (torch.randint(-2, 3, (B, 2), generator=self.gen).float() * 2 / torch.tensor([w, h])).to(x)
        theta = torch.zeros(B, 2, 3, device=x.device)
        theta[:, 0, 0] = 1
        theta[:, 1, 1] = 1
        if mode == "flip-shift":
            flip = (torch.rand(B, generator=self.gen) < 0.5).to(x.device)
            theta[:, 0, 0] = torch.where(flip, -1.0, 1.0)
        theta[:, :, 2] = shift
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch)
        perm = torch.randperm(len(self.train_ds), generator=g)[: self.n_train]
        per_rank = len(perm) // self.world
        return perm[self.rank * per_rank:(self.rank + 1) * per_rank]

    def evaluate(self) -> tuple[float, float]:
        ds = self.test_ds
        n = len(ds) if self.cfg.limit_test is None else min(self.cfg.limit_test, len(ds))
        idx = torch.arange(n)[self.rank::self.world]
        self.model.eval()
        correct = torch.zeros(2, dtype=torch.float64)  # correct, loss sum
        with torch.inference_mode():
            for x, y, _ in iterate_batches(ds, 512, self.data_config, idx):
                with self._autocast():
                    logits = self.model(x.to(self.device))
                logits = logits.float().cpu()
                correct[0] += (logits.argmax(-1) == y).sum()
                correct[1] += F.cross_entropy(logits, y, reduction="sum")
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(correct)
        self.model.train()
        return float(correct[0] / n), float(correct[1] / n)

    def _autocast(self):
        import contextlib

        if self.cfg.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- status, step log and control (rank 0 writes; control is read by rank 0 and broadcast) -----------
    def _set_status(self, state: str | None = None, **fields: Any) -> None:
        with self._status_lock:
            if state is not None:
                self._status["state"] = state
            self._status.update(fields)

    def _heartbeat(self) -> None:
        """status.json twice a second from a thread, so it stays fresh during evaluation and saves too; a
        watcher on another host tells a dead run from a busy one by its age. Best effort: a full disk must
        not stop training (the checkpoint writes report that)."""
        while True:
            with self._status_lock:
                snap = dict(self._status, updated=time.time())
            try:
                atomic_write_text(self.run_dir / STATUS_FILE, json.dumps(snap), durable=False)
            except OSError:
                pass
            if self._beat_stop.wait(0.5):
                return

    def _final_status(self, state: str, **fields: Any) -> None:
        if self.rank != 0:
            return
        self._beat_stop.set()
        if self._beat is not None:
            self._beat.join()
        self._set_status(state, **fields)
        with self._status_lock:
            snap = dict(self._status, updated=time.time())
        try:
            atomic_write_text(self.run_dir / STATUS_FILE, json.dumps(snap))
        except OSError:
            pass

    def _poll_control(self) -> str | None:
        """A new command in control.json (rank 0 reads, every rank gets it), or None."""
        cmd = 0
        if self.rank == 0:
            path = self.run_dir / CONTROL_FILE
            try:
                mtime = path.stat().st_mtime_ns
            except OSError:
                mtime = None
            if mtime is not None and mtime != self._control_mtime:
                self._control_mtime = mtime
                try:
                    msg = json.loads(path.read_text())
                    seq, name = int(msg["seq"]), str(msg["command"])
                except (OSError, ValueError, KeyError, TypeError):
                    seq, name = 0, ""
                if seq > self._control_seq and name in COMMANDS:
                    self._control_seq = seq
                    self._set_status(control_seq=seq)
                    cmd = COMMANDS.index(name) + 1
        if self.world > 1:
            import torch.distributed as dist

            t = torch.tensor([cmd], device=self.device if self.device.type == "cuda" else "cpu")
            dist.broadcast(t, 0)
            cmd = int(t.item())
        if not cmd:
            return None
        name = COMMANDS[cmd - 1]
        {"pause": self.pause, "resume": self.resume, "stop": self.stop}[name]()
        return name

    def _log_step(self, loss: float, lr: float) -> None:
        if self._steps_log is None:
            return
        row = {"step": self.step, "epoch": round(self.epoch + self.batch_in_epoch / self.steps_per_epoch, 4),
               "loss": round(loss, 6), "lr": lr}
        try:
            self._steps_log.write(json.dumps(row) + "\n")
            self._steps_log.flush()
        except OSError:
            pass  # the log is for the curves; a full disk is reported by the next save

    def _speed(self, images: int, seconds: float) -> None:
        """images/s (a moving average over the last steps, pauses excluded) and the ETA of the run."""
        self._rate_window.append((images, seconds))
        if len(self._rate_window) > 50:
            self._rate_window.pop(0)
        n, t = sum(i for i, _ in self._rate_window), sum(s for _, s in self._rate_window)
        ips = n * self.world / t if t > 0 else 0.0
        left = (self.cfg.epochs * self.steps_per_epoch - self.step) * self.cfg.batch_size * self.world
        eta = left / ips + self._eval_s * (self.cfg.epochs - self.epoch) if ips > 0 else None
        self._set_status(images_per_s=ips, eta_s=eta)

    def events(self) -> Iterator[Event]:
        """Train, yielding events; Ctrl-C or stop() saves the exact position for --resume."""
        cfg = self.cfg
        if self.rank == 0:
            import socket

            self._set_status("starting", pid=os.getpid(), host=socket.gethostname(), run_dir=str(self.run_dir),
                             epoch=self.epoch, epochs=cfg.epochs, batch=self.batch_in_epoch,
                             steps_per_epoch=self.steps_per_epoch, step=self.step, world_size=self.world,
                             best_accuracy=self.best_acc if self.best_acc >= 0 else None, control_seq=0,
                             started=time.time(), resumed=self.resuming, error=None)
            self._beat = threading.Thread(target=self._heartbeat, name="vitscope-heartbeat", daemon=True)
            self._beat.start()
        yield Event("start", self.epoch, self.step, {"run_dir": str(self.run_dir), "arch": self.arch,
                                                     "kwargs": self.kwargs, "steps_per_epoch": self.steps_per_epoch,
                                                     "epochs": cfg.epochs, "resumed": self.resuming,
                                                     "world_size": self.world, "n_train": self.n_train})
        try:
            if self.rank == 0:
                if not self.resuming:  # a run killed from here on leaves a checkpoint that loads and a state
                    self._save_state()
                    self._checkpoint("last.safetensors", None, complete=False)
                self._steps_log = open(self.run_dir / STEPS_FILE, "a")
                if self.probes is not None:
                    self.probes.write_meta()
                    if not self.resuming:
                        self.probes.record(0, 0, self.device)
                        yield Event("probes", 0, 0, {"epoch": 0})
            self._saved_at = time.monotonic()
            while self.epoch < cfg.epochs:
                order = self._epoch_order(self.epoch)
                self.model.train()
                t0 = time.perf_counter()
                paused_s = 0.0
                seen, loss_sum, correct = 0, 0.0, 0
                self._set_status("running", epoch=self.epoch)
                while self.batch_in_epoch < self.steps_per_epoch:
                    self._poll_control()
                    if self._stop.is_set():
                        self._save_state()
                        if self.rank == 0:
                            self._checkpoint("last.safetensors", None, complete=False)
                        self._final_status("stopped")
                        yield Event("stopped", self.epoch, self.step, {"state": str(self.run_dir / "state.pt")})
                        return
                    if self._pause.is_set():
                        self._set_status("paused")
                        yield Event("paused", self.epoch, self.step)
                        tp = time.perf_counter()
                        while self._pause.is_set() and not self._stop.is_set():
                            time.sleep(0.1)
                            self._poll_control()
                        paused_s += time.perf_counter() - tp
                        if not self._stop.is_set():
                            self._set_status("running")
                            yield Event("resumed", self.epoch, self.step)
                        continue
                    ts = time.perf_counter()
                    self._abortable = True
                    b = self.batch_in_epoch
                    idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                    x, y = self.train_ds.batch(idx)
                    x = normalise(self._augment(x), self.data_config).to(self.device)
                    y = y.to(self.device)
                    target = y
                    if self.mixup is not None:
                        with _numpy_global_rng(self.mix_rng):
                            x, target = self.mixup(x, y)
                    with self._autocast():
                        logits = self.net(x)
                        if self.mixup is not None:
                            loss = torch.sum(-target * F.log_softmax(logits.float(), -1), -1).mean()
                        else:
                            loss = F.cross_entropy(logits.float(), target, label_smoothing=cfg.label_smoothing)
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.clip_grad:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                    self._abortable = False
                    self._updating = True
                    self.opt.step()
                    self.sched.step()
                    self.step += 1
                    self.batch_in_epoch += 1
                    self._rng_kept = self._rng_state()
                    self._updating = False
                    seen += len(idx)
                    loss_f, lr = float(loss.detach()), self.sched.get_last_lr()[0]
                    loss_sum += loss_f * len(idx)
                    correct += int((logits.argmax(-1) == y).sum())
                    if self.rank == 0:
                        self._log_step(loss_f, lr)
                        self._speed(len(idx), time.perf_counter() - ts)
                        self._set_status(step=self.step, batch=self.batch_in_epoch, loss=loss_f, lr=lr)
                        if cfg.save_every_s and time.monotonic() - self._saved_at > cfg.save_every_s \
                                and self.batch_in_epoch < self.steps_per_epoch:
                            self._save_state()
                    yield Event("step", self.epoch, self.step, {"loss": loss_f, "lr": lr,
                                                                "batch": self.batch_in_epoch,
                                                                "of": self.steps_per_epoch})
                elapsed = time.perf_counter() - t0 - paused_s
                self._set_status("evaluating")
                te = time.perf_counter()
                self._abortable = True
                acc, test_loss = self.evaluate()
                self._abortable = False
                self._eval_s = time.perf_counter() - te
                ips = seen * self.world / elapsed if elapsed > 0 else 0.0
                row = {"epoch": self.epoch + 1, "step": self.step, "loss": loss_sum / max(1, seen),
                       "train_accuracy": correct / max(1, seen), "test_loss": test_loss, "accuracy": acc,
                       "lr": self.sched.get_last_lr()[0], "images_per_s": ips, "time": elapsed}
                best = acc > self.best_acc
                if best:
                    self.best_acc = acc
                if self.rank == 0:
                    self._write(self.run_dir / "metrics.jsonl", lambda p: _append_line(p, json.dumps(row)))
                yield Event("epoch_end", self.epoch, self.step, row)
                if self.rank == 0:
                    self._checkpoint("last.safetensors", acc)
                    yield Event("checkpoint", self.epoch, self.step, {"path": str(self.run_dir / "last.safetensors")})
                    if best:
                        self._checkpoint("best.safetensors", acc)
                        yield Event("checkpoint", self.epoch, self.step,
                                    {"path": str(self.run_dir / "best.safetensors"), "best": True})
                    if self.probes is not None:
                        self._write(self.run_dir / "probes", lambda p: self.probes.record(self.epoch + 1, self.step,
                                                                                          self.device))
                        yield Event("probes", self.epoch + 1, self.step, {"epoch": self.epoch + 1})
                self.epoch += 1
                self.batch_in_epoch = 0
                self._save_state()
                self._set_status(epoch=self.epoch, batch=0, best_accuracy=self.best_acc, last_accuracy=acc)
            self._final_status("finished", best_accuracy=self.best_acc)
        except KeyboardInterrupt:
            # a step or an evaluation abandoned (interrupt(), or a Ctrl-C with no handler that stops first): the
            # weights and position are those before it, and the generators are put back to match them, so the
            # state saved resumes exactly. Inside the weight update (a notebook's Ctrl-C) the update is
            # half-applied: then the state saved last stands.
            self._abortable = False
            if not self._updating:
                self._set_rng_state(self._rng_kept)
                self._save_state()
            self._final_status("stopped")
            yield Event("stopped", self.epoch, self.step, {"state": str(self.run_dir / "state.pt"),
                                                           "interrupted": True, "saved": not self._updating})
            return
        except VitscopeError as e:
            self._final_status("error", error=str(e))
            raise
        except Exception as e:
            self._final_status("error", error=f"{type(e).__name__}: {e}")
            yield Event("error", self.epoch, self.step, {"error": f"{type(e).__name__}: {e}"})
            raise
        finally:
            if self._steps_log is not None:
                self._steps_log.close()
                self._steps_log = None
            if self._beat is not None and not self._beat_stop.is_set():  # the consumer stopped iterating
                self._final_status("stopped")
        yield Event("finished", self.epoch, self.step, {"best_accuracy": self.best_acc,
                                                         "best": str(self.run_dir / "best.safetensors")})


@contextlib.contextmanager
def _numpy_global_rng(rng: np.random.RandomState) -> Iterator[None]:
    """Code that draws from numpy's global generator (timm's Mixup) draws from ``rng`` instead; the global
    generator is left as it was."""
    saved = np.random.get_state()
    np.random.set_state(rng.get_state())
    try:
        yield
    finally:
        rng.set_state(np.random.get_state())
        np.random.set_state(saved)


def _numpy_rng_state(rng: np.random.RandomState) -> dict[str, Any]:
    """A RandomState's state as tensors and numbers (state.pt loads with weights_only=True: no numpy arrays)."""
    _, keys, pos, has_gauss, gauss = rng.get_state()
    return {"mix_keys": torch.from_numpy(keys.astype(np.int64)), "mix_pos": int(pos), "mix_has_gauss": int(has_gauss),
            "mix_gauss": float(gauss)}


def _set_numpy_rng_state(rng: np.random.RandomState, st: dict[str, Any]) -> None:
    rng.set_state(("MT19937", st["mix_keys"].numpy().astype(np.uint32), int(st["mix_pos"]),
                   int(st["mix_has_gauss"]), float(st["mix_gauss"])))


def _append_line(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
