"""End to end: `vitscope inspect` in a real terminal (tmux), driven by keystrokes like a person, in the
colour settings an SSH session delivers (256 colours, NO_COLOR) and with work running at quit."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from conftest import MNIST_DIR, ROOT, needs_fashion

MODEL = ROOT / "samples" / "fashion-vit-p7.safetensors"
IMAGE = ROOT / "samples" / "fashion_0000_ankle-boot.png"
PHOTO = ROOT / "samples" / "photo_rgb.png"


class Tmux:
    def __init__(self, tmp_path, name: str):
        assert shutil.which("tmux"), "tmux is installed by .ci/run"
        self.sock = f"vitscope-test-{os.getpid()}-{name}"
        self.tmp = tmp_path
        self.rc_file = tmp_path / f"rc-{name}"

    def run(self, args: str, env: dict[str, str] | None = None, size=(140, 40)) -> None:
        cmd = f"{shlex.quote(sys.executable)} -m vitscope {args}; echo $? > {shlex.quote(str(self.rc_file))}"
        base = {k: v for k, v in os.environ.items() if k not in ("TMUX", "COLORTERM", "NO_COLOR")}
        base.update(env or {})
        exports = " ".join(f"-e {k}={shlex.quote(v)}" for k, v in (env or {}).items())
        subprocess.run(["tmux", "-L", self.sock, "new-session", "-d", "-s", "t", "-x", str(size[0]), "-y",
                        str(size[1]), "-c", str(self.tmp), *shlex.split(exports), cmd], check=True, env=base)

    def screen(self) -> str:
        return subprocess.run(["tmux", "-L", self.sock, "capture-pane", "-p", "-t", "t"], capture_output=True,
                              text=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "-L", self.sock, "send-keys", "-t", "t", *keys], check=True)

    def wait_for(self, *texts: str, timeout: float = 90) -> str:
        """The first capture that shows every one of texts. Textual draws a change over more than one refresh
        (the top bar, then a pane), so a test that reads several things waits for them in one capture."""
        deadline = time.time() + timeout
        screen = ""
        while time.time() < deadline:
            screen = self.screen()
            if all(text in screen for text in texts):
                return screen
            if self.rc_file.exists():
                break
            time.sleep(0.1)
        missing = [text for text in texts if text not in screen]
        raise AssertionError(f"{missing!r} never appeared; screen was:\n{screen}")

    def wait_exit(self, timeout: float = 30) -> tuple[int, float]:
        t0 = time.time()
        while not self.rc_file.exists() and time.time() - t0 < timeout:
            time.sleep(0.02)
        assert self.rc_file.exists(), f"no exit within {timeout}s; screen:\n{self.screen()}"
        return int(self.rc_file.read_text().strip()), time.time() - t0

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True)


@pytest.fixture
def tmux(tmp_path, request):
    t = Tmux(tmp_path, request.node.name[-30:].replace("[", "-").replace("]", ""))
    yield t
    t.close()


COLOUR_SETTINGS = {
    "truecolor": {"COLORTERM": "truecolor", "TERM": "xterm-256color"},
    "256-colours-over-ssh": {"TERM": "tmux-256color"},
    "no-color": {"NO_COLOR": "1", "TERM": "xterm-256color"},
}


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(COLOUR_SETTINGS))
def test_inspect_in_tmux(tmux, setting):
    tmux.run(f"inspect {shlex.quote(str(MODEL))} {shlex.quote(str(IMAGE))}", COLOUR_SETTINGS[setting])
    t0 = time.time()
    tmux.wait_for("Ankle boot", "4 layers x 4 heads")
    tmux.wait_for("layer 0, mean of heads, query CLS")
    shown = time.time() - t0
    assert "▀" in tmux.screen()  # the picture is drawn with half-cell blocks under tmux
    if setting == "256-colours-over-ssh":
        tmux.wait_for("256 colours only")  # the warning is kept
    tmux.keys("j", "h")
    tmux.wait_for("layer 1, head 3")
    tmux.keys("o")
    tmux.wait_for("4 layers x 4 heads + mean")
    tmux.keys("g")
    tmux.wait_for("Grad-CAM (last block norm1)")
    tmux.keys("Escape")  # alone: ESC followed at once by a key reads as Alt+key
    tmux.wait_for("layer 1, head 3, query CLS")
    tmux.keys("s")
    tmux.wait_for("saved ")
    tmux.keys("q")
    rc, _ = tmux.wait_exit()
    assert rc == 0
    pngs = list(tmux.tmp.glob("vitscope-fashion_0000_ankle-boot-L1-h3.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 1000
    print(f"{setting}: attention shown {shown:.2f}s after launch")


@pytest.mark.slow
def test_quit_while_ablation_runs_returns_to_the_shell(tmux):
    """ViT-B (random init): head ablation is ~80 forward passes; q must not wait for it."""
    tmux.run(f"inspect timm:vit_base_patch16_224 {shlex.quote(str(PHOTO))}", {"COLORTERM": "truecolor"})
    tmux.wait_for("layer 0, mean of heads", timeout=120)
    tmux.keys("n", "n", "n")
    tmux.wait_for("ablating every head")
    time.sleep(0.5)
    tmux.keys("q")
    rc, seconds = tmux.wait_exit()
    assert rc == 0
    assert seconds < 5, f"quit took {seconds:.1f}s while an ablation ran"
    print(f"quit -> shell: {seconds:.2f}s")


@pytest.mark.parametrize("model,image,expect", [
    ("README.md", IMAGE, "README.md: not a PyTorch checkpoint or safetensors file"),
    (MODEL, ROOT / "README.md", "README.md: not an image"),
    (MODEL, ROOT / "samples", "samples: is a directory"),
])
def test_bad_arguments_fail_before_a_screen_opens(model, image, expect, tmp_path):
    r = subprocess.run([sys.executable, "-m", "vitscope", "inspect", str(model), str(image)], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in r.stderr
    assert "\x1b[" not in r.stdout  # no screen was drawn


@pytest.mark.slow
def test_unknown_timm_name_ends_the_app_with_one_line(tmux):
    tmux.run(f"inspect timm:no_such_vit {shlex.quote(str(IMAGE))} 2> err.txt")
    rc, _ = tmux.wait_exit(timeout=90)
    err = (tmux.tmp / "err.txt").read_text(errors="replace")  # Textual draws on stderr; the message comes last
    last = re.sub(r"\x1b\[[0-9;?<>]*[A-Za-z]", "", err.strip().splitlines()[-1])  # after the screen's reset codes
    assert rc == 2 and "vitscope: error: " in last, last
    assert "unknown timm model 'no_such_vit'" in last[last.index("vitscope: error: "):]
    assert "Traceback" not in err


def test_sixel_under_tmux_warns_and_falls_back():
    from vitscope.cli import choose_renderer

    assert choose_renderer("sixel", {"TMUX": "/tmp/x"})[0] == "halfcell"
    assert "does not pass through tmux" in choose_renderer("sixel", {"TMUX": "/tmp/x"})[1]
    assert choose_renderer("sixel", {}) == ("sixel", None)
    assert choose_renderer("auto", {"SSH_CONNECTION": "1 2 3 4"}) == ("halfcell", None)


@pytest.mark.slow
def test_bad_start_class_ends_the_app_with_one_line(tmux):
    tmux.run(f"inspect {shlex.quote(str(MODEL))} {shlex.quote(str(IMAGE))} --class Sneakr 2> err.txt")
    rc, _ = tmux.wait_exit(timeout=90)
    err = (tmux.tmp / "err.txt").read_text(errors="replace")
    last = re.sub(r"\x1b\[[0-9;?<>]*[A-Za-z]", "", err.strip().splitlines()[-1])
    assert rc == 2 and "--class 'Sneakr' is not one of the model's 10 classes (did you mean 'Sneaker'" in last, last


@pytest.mark.slow
@needs_fashion
def test_browser_in_tmux_opens_a_mistake_and_comes_back(tmux):
    """The sample Fashion-MNIST model over the whole test split, in 256 colours at 100x30: the sweep fills
    the table, a confident mistake opens in the inspector with its true class as target, b comes back to
    the same row, the confusion matrix shows counts, and q returns to the shell."""
    tmux.run(f"inspect {shlex.quote(str(MODEL))} --dataset fashion-mnist --no-cache", {"TERM": "tmux-256color"},
             size=(100, 30))
    tmux.wait_for("10,000 images", timeout=120)
    tmux.wait_for("accuracy 87.17%", "✗", "8914")  # the highest-loss mistake on top
    tmux.keys("m")
    tmux.wait_for("most confident mistakes")
    tmux.keys("j", "Enter")
    screen = tmux.wait_for("target: TRUE class", "fashion-mnist-test-", "layer 0, mean of heads")
    shown = re.search(r"fashion-mnist-test-(\d+)", screen).group(1)
    tmux.keys("P")
    tmux.wait_for("target: PREDICTED class")
    tmux.keys("b")
    screen = tmux.wait_for("most confident mistakes", f" {shown} ")
    cursor_line = next(line for line in screen.splitlines() if f" {shown} " in line)
    assert "✗" in cursor_line
    tmux.keys("c")
    tmux.wait_for("confusion matrix", "pred →", "954")  # Sandal's correct count
    tmux.keys("q")
    rc, seconds = tmux.wait_exit()
    assert rc == 0 and seconds < 5


def test_train_tui_one_epoch_then_inspect_then_quit(tmux):
    """`vitscope train --tui` in a real terminal: the run trains in a child, the screen follows it to the end,
    i opens the best checkpoint in the inspector, b comes back, q returns to the shell."""
    tmux.run(f"train --tui --dataset mnist --data-dir {shlex.quote(str(MNIST_DIR))} --split-train 200 "
             "--batch-size 8 --epochs 1 --out run", {"TERM": "tmux-256color"}, size=(160, 48))
    tmux.wait_for("FINISHED", timeout=60)
    # the probe columns are labelled once the picture is drawn
    tmux.wait_for("rollout", "vit-4x4 on mnist", "epoch 1/1", "attention forming · epoch 1", "image")
    tmux.keys("i")
    tmux.wait_for("best.safetensors  ·  image-0.png")
    tmux.wait_for("layer 0, mean of heads, query CLS")
    tmux.keys("b")
    tmux.wait_for("FINISHED")
    tmux.keys("q")
    rc, took = tmux.wait_exit()
    assert rc == 0 and took < 5
    run = tmux.tmp / "run"
    assert (run / "best.safetensors").is_file() and (run / "probes" / "epoch-0001.npz").is_file()
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


def test_compare_split_view_in_tmux(tmux):
    """`vitscope compare FINETUNED IMAGE` in a real terminal: the parent is found, keys move both sides."""
    s = ROOT / "samples"
    tmux.run(f"compare {shlex.quote(str(s / 'digits-vit-ft.safetensors'))} {shlex.quote(str(s / 'mnist_8000_4.png'))}",
             {"TERM": "tmux-256color"}, size=(160, 48))
    tmux.wait_for("finetune of its parent (sha256)", "fashion-vit-p7.safetensors", "change per head", timeout=60)
    tmux.keys("j")
    tmux.wait_for("layer 1, mean of heads")
    tmux.keys("r")
    tmux.wait_for("rollout · layer 1")
    tmux.keys("q")
    rc, took = tmux.wait_exit()
    assert rc == 0 and took < 5
