"""A real full disk: a small tmpfs mounted for the test, where the machine allows it (root, as in CI).

Elsewhere each test falls back to the file-size limit (RLIMIT_FSIZE: write() fails with EFBIG), the
same write path the other full-disk tests take, so the test still checks the behaviour either way.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from vitscope.train import TrainConfig, Trainer

from conftest import MNIST_DIR, ROOT, run_cli

MODEL = str(ROOT / "samples" / "fashion-vit-p7.safetensors")
IMAGE = str(ROOT / "samples" / "fashion_0000_ankle-boot.png")


@contextlib.contextmanager
def small_disk(where: Path, size: str):
    """A tmpfs of ``size`` at ``where``; yields True when mounted, False when this machine does not allow it."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill the mounted disk up to ``leave`` bytes free."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != "filler"}


def run(args: list[str], mounted: bool, limit: int) -> subprocess.CompletedProcess:
    preexec = None if mounted else (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    return subprocess.run([sys.executable, "-m", "vitscope", *args], capture_output=True, text=True, timeout=300,
                          preexec_fn=preexec, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))


def disk_error(mounted: bool) -> str:
    return "No space left on device" if mounted else "File too large"


def test_export_on_a_full_disk_keeps_the_previous_export(tmp_path):
    with small_disk(tmp_path / "disk", "4m") as mounted:
        out = tmp_path / "disk" / "out"
        first = run_cli("export", MODEL, IMAGE, "--out", str(out), "--no-analyses")
        assert first.returncode == 0, first.stderr
        before = snapshot(out)
        if mounted:
            fill(tmp_path / "disk", 16 * 1024)
        r = run(["export", MODEL, IMAGE, "--out", str(out), "--overwrite", "--no-analyses"], mounted, 16 * 1024)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and disk_error(mounted) in r.stderr.splitlines()[-1]
        assert snapshot(out) == before
        assert not [p for p in (tmp_path / "disk").iterdir() if ".partial-" in p.name]


def test_training_on_a_full_disk_says_so_and_keeps_the_last_good_state(tmp_path):
    with small_disk(tmp_path / "disk", "16m") as mounted:
        out = tmp_path / "disk" / "run"
        cfg = dict(dataset="mnist", data_dir=str(MNIST_DIR), split_train=200, batch_size=50, limit_test=50, probes=0)
        trainer = Trainer(TrainConfig(epochs=2, out=str(out), **cfg))
        for event in trainer.events():
            if event.kind == "epoch_end":
                trainer.stop()  # a run stopped after its first epoch, to be resumed on a full disk
        before = snapshot(out)
        if mounted:
            fill(tmp_path / "disk", 64 * 1024)  # the logs fit, a new state.pt (~1.7 MB) does not
        r = run(["train", "--resume", str(out), "--quiet"], mounted, 65536)
        assert r.returncode == 2, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("vitscope: error: ") and disk_error(mounted) in last and "intact" in last, last
        assert "Traceback" not in r.stderr
        after = snapshot(out)
        for name in ("state.pt", "last.safetensors", "best.safetensors"):
            assert after[name] == before[name], name  # the previous checkpoint and state, byte for byte
        assert not [p for p in out.iterdir() if ".tmp" in p.name]
        # and the run resumes from that state once there is room again
        (tmp_path / "disk" / "filler").unlink(missing_ok=True)
        events = list(Trainer(TrainConfig(), resume=out).events())
        assert [e.epoch for e in events if e.kind == "epoch_end"] == [1]  # the second epoch (0-based), no more
