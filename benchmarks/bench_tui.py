"""Inspector latency (issue: inspector).

1. Key press -> screen updated, with Pilot, 100 presses: a head change ('l', which draws a new map)
   against a key that only changes a text label in the same app and run. Reported as medians and
   their ratio, for the sample 4x4 model and for vit_base (random weights, 224 px, 12 x 12 heads).
2. Launch -> first paint and launch -> attention shown, in a real tmux, polled every 20 ms.
Run: python benchmarks/bench_tui.py
"""
from __future__ import annotations

import asyncio
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from textual.binding import Binding
from textual.widgets import Static

import vitscope
from vitscope.inspection import Inspection
from vitscope.tui.app import InspectorApp, Options

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "samples" / "fashion-vit-p7.safetensors"
IMAGE = ROOT / "samples" / "fashion_0000_ankle-boot.png"


class BenchApp(InspectorApp):
    """The inspector plus one key ('x') that only rewrites a text label: the baseline."""

    BINDINGS = InspectorApp.BINDINGS + [Binding("x", "label_only", "label")]
    n = 0

    def action_label_only(self) -> None:
        self.n += 1
        self.query_one("#status", Static).update(f"label {self.n}")


async def key_latency(insp: Inspection, presses: int = 100, render: str = "halfcell") -> dict:
    app = BenchApp(Options(model="m", image=str(IMAGE), render=render), inspection=insp)
    times: dict[str, list[float]] = {"head": [], "label": [], "head_action": [], "label_action": []}
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        for i in range(presses):
            for key, what in (("l", "head"), ("x", "label")):
                t0 = time.perf_counter()
                await pilot.press(key)  # Pilot's key press (it carries a fixed wait of its own)
                await pilot.pause()
                times[what].append((time.perf_counter() - t0) * 1e3)
            for action, what in (("right", "head_action"), ("label_only", "label_action")):
                t0 = time.perf_counter()
                await app.run_action(action)  # the bound action, then wait until the screen is updated
                await pilot.pause()
                times[what].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"press_head_ms": round(med["head"], 1), "press_label_ms": round(med["label"], 1),
            "press_ratio": round(med["head"] / med["label"], 2),
            "action_head_ms": round(med["head_action"], 1), "action_label_ms": round(med["label_action"], 1),
            "action_ratio": round(med["head_action"] / med["label_action"], 2),
            "press_head_p90_ms": round(sorted(times["head"])[int(0.9 * presses)], 1)}


def tmux_launch(model: str, image: str) -> dict:
    sock = f"vitscope-bench-{os.getpid()}-{time.monotonic_ns()}"
    with tempfile.TemporaryDirectory() as d:
        cmd = f"{shlex.quote(sys.executable)} -m vitscope inspect {shlex.quote(model)} {shlex.quote(image)}"
        t0 = time.perf_counter()
        subprocess.run(["tmux", "-L", sock, "new-session", "-d", "-s", "t", "-x", "160", "-y", "48", "-c", d, cmd],
                       check=True)
        first = shown = None
        try:
            while time.perf_counter() - t0 < 60:
                screen = subprocess.run(["tmux", "-L", sock, "capture-pane", "-p", "-t", "t"], capture_output=True,
                                        text=True).stdout
                now = time.perf_counter() - t0
                if first is None and "grid:" in screen:
                    first = now
                if "▀" in screen and "query CLS" in screen:
                    shown = now
                    break
                time.sleep(0.02)
        finally:
            subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
    return {"first_paint_s": round(first or -1, 2), "attention_shown_s": round(shown or -1, 2)}


def main() -> None:
    small = Inspection.open(vitscope.load(MODEL), IMAGE)
    print("sample 4x4 model:", asyncio.run(key_latency(small)))
    print("sample 4x4 model, textual-image's half-cell widget instead of ours:",
          asyncio.run(key_latency(small, render="textual-image-halfcell")))
    base = Inspection.open(vitscope.load("timm:vit_base_patch16_224"), IMAGE)
    print("vit_base (12x12 heads, 14x14 grid):", asyncio.run(key_latency(base)))
    runs = [tmux_launch(str(MODEL), str(IMAGE)) for _ in range(3)]
    print("tmux launch, sample model:", runs, "median first paint",
          statistics.median(r["first_paint_s"] for r in runs), "s, median attention shown",
          statistics.median(r["attention_shown_s"] for r in runs), "s")


if __name__ == "__main__":
    main()
