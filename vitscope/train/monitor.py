"""Watching a run from another process: what the training screen and ``vitscope watch`` read.

A run is only ever watched through its directory (see :mod:`vitscope.train.trainer` for the files), so the
same code follows a run this process started, one started headless or under torchrun in another terminal,
and a finished one. :class:`RunMonitor` reads the two logs incrementally (by byte offset: a poll costs the
new lines only, whatever the run's length), the heartbeat and the probe list, and tells whether the run
lives: by its process where it can see it (the child it started, or the pid on this host; a zombie counts
as dead) and by the heartbeat's age otherwise. :func:`start_run` starts ``vitscope train`` as a child
process in its own session (its output in ``RUN_DIR/train.log``), so the UI is never the process that
trains: a crash of the run cannot take the UI down, and the UI can leave the run training.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .probes import recorded_epochs
from .runfiles import CONTROL_FILE, FINAL_STATES, LOG_FILE, STATUS_FILE, STEPS_FILE, send_control

STALE_S = 3.0  # a heartbeat older than this (it beats twice a second) from a process we cannot see: lost
LIVE_STATES = ("starting", "running", "paused", "evaluating")

__all__ = ["RunMonitor", "RunUpdate", "start_run", "send_control", "decimate", "smooth", "CONTROL_FILE", "is_run_dir"]


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "run.json").is_file()


class _Tail:
    """New complete JSON lines of a growing file, read from where the last call stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> tuple[list[dict[str, Any]], bool]:
        """(new rows, reset): reset when the file was cut or replaced (a resume trims it, --overwrite starts
        it over), and the rows are then the whole file again."""
        try:
            size = self.path.stat().st_size
        except OSError:
            reset = self.offset > 0
            self.offset, self.partial = 0, b""
            return [], reset
        reset = size < self.offset
        if reset:
            self.offset, self.partial = 0, b""
        if size == self.offset:
            return [], reset
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()  # an incomplete last line waits for its end
        rows = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows, reset


@dataclass
class RunUpdate:
    """What changed since the last poll."""

    epochs: list[dict[str, Any]] = field(default_factory=list)  # new metrics.jsonl rows
    steps: list[dict[str, Any]] = field(default_factory=list)  # new steps.jsonl rows
    reset: bool = False  # the logs were rewritten: forget what was read before (rows are then all of them)
    status: dict[str, Any] = field(default_factory=dict)
    verdict: str = "unknown"  # starting running paused evaluating finished stopped error died lost unknown
    reason: str = ""  # why, in words, for died / lost / error
    probe_epochs: list[int] = field(default_factory=list)
    new_probes: bool = False


class RunMonitor:
    """Follows one run directory. ``process``: the child this UI started (then its exit is seen at once)."""

    def __init__(self, run_dir: str | Path, process: subprocess.Popen | None = None) -> None:
        self.run_dir = Path(run_dir).expanduser()
        self.process = process
        self.config: dict[str, Any] = self._read_json("run.json") or {}
        self._metrics = _Tail(self.run_dir / "metrics.jsonl")
        self._steps = _Tail(self.run_dir / STEPS_FILE)
        self._probe_epochs: list[int] = []
        self._status_mtime = -1
        self.status: dict[str, Any] = {}
        self.verdict = "unknown"
        self.host = socket.gethostname()

    def _read_json(self, name: str) -> dict[str, Any] | None:
        try:
            v = json.loads((self.run_dir / name).read_text())
        except (OSError, ValueError):
            return None
        return v if isinstance(v, dict) else None

    def poll(self) -> RunUpdate:
        up = RunUpdate()
        # the heartbeat first, then the logs: a state it reports (paused, stopped) was set after the log lines
        # of the steps before it were written, so this poll reads them all
        try:
            mtime = (self.run_dir / STATUS_FILE).stat().st_mtime_ns
        except OSError:
            mtime = None
        if mtime is not None and mtime != self._status_mtime:
            st = self._read_json(STATUS_FILE)
            if st is not None:
                self.status, self._status_mtime = st, mtime
            if not self.config:
                self.config = self._read_json("run.json") or {}
        up.status = self.status
        up.epochs, r1 = self._metrics.read()
        up.steps, r2 = self._steps.read()
        if r1 or r2:  # read both again from the start, so the curves are rebuilt whole
            up.reset = True
            self._metrics, self._steps = _Tail(self._metrics.path), _Tail(self._steps.path)
            up.epochs, _ = self._metrics.read()
            up.steps, _ = self._steps.read()
        epochs = recorded_epochs(self.run_dir)
        up.new_probes = epochs != self._probe_epochs
        self._probe_epochs = up.probe_epochs = epochs
        up.verdict, up.reason = self._verdict()
        self.verdict = up.verdict
        return up

    # -- liveness ---------------------------------------------------------------------------------
    def _verdict(self) -> tuple[str, str]:
        st = self.status
        state = st.get("state")
        if self.process is not None:
            code = self.process.poll()
            if code is None:
                return (state or "starting"), ""
            if state in FINAL_STATES and st.get("pid") == self.process.pid:
                return state, st.get("error") or ""
            return "died", self._exit_reason(code)
        if not st:
            return self._without_status()
        if state in FINAL_STATES:
            return state, st.get("error") or ""
        pid, host = st.get("pid"), st.get("host")
        if host == self.host and isinstance(pid, int):
            if _alive(pid):
                return state or "running", ""
            return "died", f"its process ({pid}) is gone"
        age = time.time() - float(st.get("updated") or 0)
        if age > STALE_S:
            return "lost", f"no heartbeat from {host or 'its host'} for {age:.0f} s"
        return state or "running", ""

    def _without_status(self) -> tuple[str, str]:
        """A run directory without status.json: from before heartbeats, or not started yet."""
        rows = self._read_metrics_tail()
        if not rows:
            return "unknown", "no status.json and no metrics yet"
        done = int(rows[-1].get("epoch", 0))
        if done >= int(self.config.get("epochs", 0) or 0):
            return "finished", ""
        return "stopped", f"{done} of {self.config.get('epochs', '?')} epochs done (no heartbeat recorded)"

    def _read_metrics_tail(self) -> list[dict[str, Any]]:
        rows, _ = _Tail(self._metrics.path).read()
        return rows

    def _exit_reason(self, code: int) -> str:
        if code < 0:
            import signal

            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the training process was killed ({name})"
        last = [ln for ln in self.log_tail(20) if ln.strip()]
        err = next((ln for ln in reversed(last) if "error" in ln.lower()), last[-1] if last else "")
        return f"the training process exited with status {code}" + (f": {err.strip()}" if err else "")

    def log_tail(self, n: int = 8) -> list[str]:
        """The last ``n`` lines of train.log (what the child printed)."""
        path = self.run_dir / LOG_FILE
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 16384))
                data = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        # a progress bar redraws with \r: keep what the line finally said
        return [ln.rsplit("\r", 1)[-1] for ln in data.splitlines()][-n:]

    @property
    def live(self) -> bool:
        return self.verdict in LIVE_STATES

    def send(self, command: str) -> int:
        return send_control(self.run_dir, command)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed child nobody reaped yet is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def start_run(train_args: Sequence[str], run_dir: str | Path, append_log: bool = False) -> subprocess.Popen:
    """Start ``vitscope train TRAIN_ARGS --quiet`` in its own session (Ctrl-C in the UI's terminal does not
    reach it, and it outlives the UI when detached); its output goes to RUN_DIR/train.log."""
    run = Path(run_dir).expanduser()
    run.mkdir(parents=True, exist_ok=True)
    log = open(run / LOG_FILE, "ab" if append_log else "wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("COLUMNS", None)
    try:
        return subprocess.Popen([sys.executable, "-m", "vitscope", "train", *train_args, "--quiet"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, close_fds=True)
    finally:
        log.close()


def smooth(y: Sequence[float] | np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average with ``weight`` on the past, debiased at the
    start (s_t = w s_{t-1} + (1 - w) y_t, divided by 1 - w^(t+1)), so the first points are not pulled to 0."""
    y = np.asarray(y, dtype=np.float64)
    if weight <= 0 or not len(y):
        return y
    from scipy.signal import lfilter

    ema = lfilter([1 - weight], [1, -weight], y)
    return ema / (1 - weight ** np.arange(1, len(y) + 1))


def decimate(y: Sequence[float] | np.ndarray, x: Sequence[float] | np.ndarray | None = None,
             max_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of a long curve: the mean of each of ``max_points`` equal runs of
    points (a plot one screen wide cannot show more; the redraw cost stops growing with the run)."""
    y = np.asarray(y, dtype=np.float64)
    x = np.arange(1, len(y) + 1, dtype=np.float64) if x is None else np.asarray(x, dtype=np.float64)
    n = len(y)
    if n <= max_points:
        return x, y
    edges = np.linspace(0, n, max_points + 1).astype(np.int64)
    counts = np.diff(edges)
    keep = counts > 0
    cy, cx = np.r_[0.0, np.cumsum(y)], np.r_[0.0, np.cumsum(x)]
    ys = (cy[edges[1:]] - cy[edges[:-1]])[keep] / counts[keep]
    xs = (cx[edges[1:]] - cx[edges[:-1]])[keep] / counts[keep]
    return xs, ys


FORM_FIELDS = (  # the new-run form: (key, label, default); every value a string as typed
    ("dataset", "dataset (fashion-mnist, mnist, cifar10, folder:PATH)", "fashion-mnist"),
    ("model", "model (a preset or timm:NAME)", "vit-4x4"),
    ("epochs", "epochs", "10"),
    ("batch_size", "batch size", "128"),
    ("lr", "learning rate", "2e-3"),
    ("finetune", "finetune from (a checkpoint; blank: from scratch)", ""),
    ("out", "run directory (blank: runs/MODEL-DATASET)", ""),
    ("data_dir", "data directory (blank: the usual places)", ""),
    ("limit_train", "images per epoch (blank: all)", ""),
    ("split_train", "hold out: train on the first K test images, test on the rest (blank: no)", ""),
)


def form_to_args(values: dict[str, str], overwrite: bool = False) -> tuple[list[str], Path]:
    """The arguments of ``vitscope train`` for a filled-in form, checked as the CLI would check them (so a
    mistake is a line in the form, not a dead run): raises VitscopeError naming the field."""
    from ..errors import VitscopeError
    from ..preflight import check_dataset, check_model_ref
    from .presets import PRESETS
    from .runfiles import RUN_FILES, check_new_run

    v = {k: str(values.get(k, d)).strip() for k, _, d in FORM_FIELDS}

    def number(key: str, kind: type, positive: bool = True) -> str:
        try:
            x = kind(v[key])
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise VitscopeError(f"{key.replace('_', ' ')}: {v[key]!r} is not {what}") from None
        if positive and not x > 0:
            raise VitscopeError(f"{key.replace('_', ' ')}: must be more than 0")
        return v[key]

    if not v["dataset"]:
        raise VitscopeError("dataset: required")
    model = v["model"] or "vit-4x4"
    if model not in PRESETS and not (model.startswith("timm:") and len(model) > 5):
        raise VitscopeError(f"model: unknown {model!r} (presets: {', '.join(PRESETS)}; or timm:NAME)")
    args = ["--dataset", v["dataset"], "--model", model, "--epochs", number("epochs", int),
            "--batch-size", number("batch_size", int), "--lr", number("lr", float)]
    if v["data_dir"]:
        if not Path(v["data_dir"]).expanduser().is_dir():
            raise VitscopeError(f"data directory: {v['data_dir']} is not a directory")
        args += ["--data-dir", v["data_dir"]]
    if v["split_train"]:
        args += ["--split-train", number("split_train", int)]
    for split in (("test",) if v["split_train"] else ("train", "test")):
        try:
            check_dataset(v["dataset"], split, v["data_dir"] or None)
        except VitscopeError as e:
            raise VitscopeError(f"dataset: {e}") from None
    if v["finetune"]:
        try:
            check_model_ref(v["finetune"])
        except VitscopeError as e:
            raise VitscopeError(f"finetune from: {e}") from None
        args += ["--finetune", v["finetune"]]
    if v["limit_train"]:
        args += ["--limit-train", number("limit_train", int)]
    out = v["out"] or f"runs/{model.replace('timm:', '')}-{v['dataset'].replace('folder:', '').replace('/', '_')}"
    run = Path(out).expanduser()
    held = [n for n in RUN_FILES if (run / n).exists()]
    if held and not overwrite:  # the form's words: the CLI's (--overwrite) would be no help here
        raise VitscopeError(f"run directory: {out} already holds a run ({', '.join(held)}); ctrl+o replaces it, "
                            "or choose another directory")
    try:
        run = check_new_run(out, overwrite)
    except VitscopeError as e:
        raise VitscopeError(f"run directory: {e}") from None
    args += ["--out", out]
    if overwrite:
        args.append("--overwrite")
    return args, run
