"""End to end: `vitscope inspect` in a real terminal (tmux), driven by keystrokes like a person."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT

MODEL = ROOT / "samples" / "fashion-vit-p7.safetensors"
IMAGE = ROOT / "samples" / "fashion_0000_ankle-boot.png"


def tmux(sock: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True, check=False).stdout


def wait_for(sock: str, text: str, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    screen = ""
    while time.time() < deadline:
        screen = tmux(sock, "capture-pane", "-p", "-t", "t")
        if text in screen:
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared; screen was:\n{screen}")


@pytest.mark.slow
def test_inspect_in_tmux(tmp_path):
    assert shutil.which("tmux"), "tmux is installed by .ci/run"
    sock = f"vitscope-test-{os.getpid()}"
    rc_file = tmp_path / "rc"
    cmd = (f"{shlex.quote(sys.executable)} -m vitscope inspect {shlex.quote(str(MODEL))} {shlex.quote(str(IMAGE))}; "
           f"echo $? > {shlex.quote(str(rc_file))}")
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX",)}
    subprocess.run(["tmux", "-L", sock, "new-session", "-d", "-s", "t", "-x", "140", "-y", "40", "-c", str(tmp_path),
                    cmd], check=True, env=env)
    try:
        t0 = time.time()
        screen = wait_for(sock, "Ankle boot")
        assert "4 layers x 4 heads" in screen and "layer 0, mean of heads, query CLS" in screen
        assert "▀" in screen  # the picture is drawn with half-cell blocks under tmux
        shown = time.time() - t0
        tmux(sock, "send-keys", "-t", "t", "j", "l")
        wait_for(sock, "layer 1, head 0")
        tmux(sock, "send-keys", "-t", "t", "o")
        wait_for(sock, "overview: rows = 4 layers")
        tmux(sock, "send-keys", "-t", "t", "o", "s")
        wait_for(sock, "saved ")
        tmux(sock, "send-keys", "-t", "t", "q")
        deadline = time.time() + 30
        while not rc_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert rc_file.read_text().strip() == "0"
        pngs = list(tmp_path.glob("vitscope-fashion_0000_ankle-boot-L1-h0.png"))
        assert len(pngs) == 1 and pngs[0].stat().st_size > 1000
        print(f"attention shown {shown:.2f}s after launch")
    finally:
        tmux(sock, "kill-server")
