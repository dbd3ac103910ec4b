"""The files of a run directory and how other processes talk to a run (no torch: the UI reads these)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import VitscopeError

RUN_FILES = ("run.json", "metrics.jsonl", "last.safetensors", "best.safetensors", "state.pt", "fold.json")
STATUS_FILE, STEPS_FILE, CONTROL_FILE, LOG_FILE = "status.json", "steps.jsonl", "control.json", "train.log"
STALE_FILES = ("metrics.jsonl", "fold.json", STEPS_FILE, STATUS_FILE, CONTROL_FILE)  # removed when a run starts over
COMMANDS = ("pause", "resume", "stop")
FINAL_STATES = ("finished", "stopped", "error")


def send_control(run_dir: str | Path, command: str) -> int:
    """Ask the run in ``run_dir`` to pause, resume or stop (it acts between two steps); returns the sequence
    number, which the run's status.json reports back as ``control_seq`` once done."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r} (use {', '.join(COMMANDS)})")
    path = Path(run_dir) / CONTROL_FILE
    try:
        seq = int(json.loads(path.read_text()).get("seq", 0)) + 1
    except (OSError, ValueError, AttributeError):
        seq = 1
    atomic_write_text(path, json.dumps({"seq": seq, "command": command, "time": time.time()}))
    return seq


def check_new_run(out: str | Path, overwrite: bool) -> Path:
    """The directory a new run may write to (refused when it holds a run and ``overwrite`` is not set)."""
    run = Path(out).expanduser()
    if run.exists() and not run.is_dir():
        raise VitscopeError("the run directory is a file", run)
    clash = [n for n in RUN_FILES if (run / n).exists()]
    if clash and not overwrite:
        raise VitscopeError(f"run directory already holds {', '.join(clash)}; pass --overwrite to replace "
                            "it, --resume to continue it, or choose another --out", run)
    return run


def check_resumable(run_dir: str | Path) -> Path:
    """The run directory to resume, refused in words that say what is there (and what is not)."""
    run = Path(run_dir).expanduser()
    if run.is_file():
        hint = f" (--resume {run.parent})" if (run.parent / "run.json").is_file() else ""
        raise VitscopeError(f"is a file: --resume takes the run's directory{hint}", run)
    if not run.is_dir():
        raise VitscopeError("no such run directory", run)
    for name in ("run.json", "state.pt"):
        if (run / name).exists() and not (run / name).is_file():
            raise VitscopeError(f"{name} is not a file", run / name)
    missing = [n for n in ("run.json", "state.pt") if not (run / n).is_file()]
    if missing == ["state.pt"]:  # killed before its first save (the first comes before the first step)
        raise VitscopeError("the run saved no state yet (stopped before its first step): nothing to resume; "
                            "start it again with its command and --overwrite", run)
    if missing:
        raise VitscopeError(f"not a vitscope run directory to resume (no {' and no '.join(missing)})", run)
    read_run_config(run)
    return run


def read_run_config(run: str | Path) -> dict:
    """The configuration a run directory's run.json holds (a JSON object), or a one-line error naming it."""
    path = Path(run) / "run.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise VitscopeError(f"cannot read run.json: {e.strerror or e}", path) from None
    except ValueError as e:  # not JSON, or not UTF-8
        raise VitscopeError(f"run.json is not valid JSON ({e}): it was damaged or edited", path) from None
    if not isinstance(stored, dict):
        raise VitscopeError("run.json does not hold a run's configuration (a JSON object)", path)
    return stored
