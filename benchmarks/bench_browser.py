"""Misclassification browser speed and memory, each against a baseline measured in the same run.

1. Key -> screen updated in a real tmux (160x48), with a synthetic 50,000-row sweep (ImageNet-val
   size) over Fashion-MNIST's train images: j/k moves and column sorts, polled until the details
   line (or the header) changes. Baseline: the same keys on a 1,000-row sweep. Then the same j/k
   keys while a real sweep of the 60,000 train images runs in the background.
2. Sweep throughput inside the app (Pilot, headless) against `run_sweep` in the same process, on
   the sample ViT over the 60,000 train images, no cache.
3. Memory: peak RSS of a process that opens the browser on 10,000 and on 50,000 synthetic rows.
Run: python benchmarks/bench_browser.py [--quick]   (needs Debian's dataset-fashion-mnist)
"""
from __future__ import annotations

import asyncio
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "samples" / "fashion-vit-p7.safetensors")
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_tui import Tmux  # noqa: E402


def synthetic_sweep(n: int, out: Path) -> Path:
    """A crossval-style directory whose sweep.npz lists ``n`` Fashion-MNIST train images with random
    probabilities (their real labels), so thumbnails and the inspector work on it."""
    from vitscope.atomic import atomic_write_bytes
    from vitscope.data.datasets import get_dataset
    from vitscope.sweep import SweepResult

    ds = get_dataset("fashion-mnist", "train")
    rng = np.random.default_rng(0)
    label = ds.labels.numpy()[:n].astype(np.int64)
    logits = rng.normal(size=(n, 10)).astype(np.float32) * 2
    logits[np.arange(n), label] += 3  # mostly right, like a trained model
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    top = np.argsort(-probs, 1)[:, :5]
    res = SweepResult(index=np.arange(n), label=label, pred=top[:, 0], topk_idx=top,
                      topk_prob=np.take_along_axis(probs, top, 1), loss=-np.log(probs[np.arange(n), label]),
                      classes=ds.classes, probs=probs,
                      meta={"dataset": "fashion-mnist", "split": "train", "source": "synthetic", "out_of_sample": None})
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "sweep.npz", res.to_npz())
    return out


def details(t: Tmux) -> str:
    return next((ln for ln in t.screen().splitlines() if "true " in ln and "predicted" in ln and "#" in ln), "")


def header(t: Tmux) -> str:
    return "\n".join(t.screen().splitlines()[1:4])


def _until_changed(read, before: str, timeout: float = 10) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if read() != before:
            return time.perf_counter() - t0
    return float("nan")


def key_latency(args: str, ready: str, rounds: int, sorts: bool = True) -> dict:
    t = Tmux("browser")
    try:
        t.start(args)
        t.wait(ready, timeout=300)
        time.sleep(1.0 if sorts else 0.2)
        if not sorts:  # during a sweep: off the top row, so the details line changes only with the keys
            t.keys("j", "j", "j", "j", "j")
            time.sleep(0.3)
        moves, sort_times = [], []
        sweeping = []
        for i in range(rounds):
            before = details(t)
            t.keys("j" if (i // 5) % 2 == 0 else "k")
            moves.append(_until_changed(lambda: details(t), before))
            if not sorts:
                sweeping.append("sweeping:" in t.screen())
            time.sleep(0.03)
        if sorts:
            for k in ["6", "5", "3", "1", "a"] * max(1, rounds // 25):
                before = header(t)
                t.keys(k)
                sort_times.append(_until_changed(lambda: header(t), before))
                time.sleep(0.05)
        floor = statistics.median([_time(t.screen) for _ in range(20)])
        out = {"move_median_ms": 1000 * statistics.median(moves), "move_p90_ms": 1000 * np.nanpercentile(moves, 90),
               "moves": len(moves), "poll_floor_ms": 1000 * floor}
        if sort_times:
            out |= {"sort_median_ms": 1000 * statistics.median(sort_times), "sorts": len(sort_times)}
        if sweeping:
            during = [m for m, s in zip(moves, sweeping) if s]
            out |= {"moves_while_sweeping": len(during),
                    "move_median_while_sweeping_ms": 1000 * statistics.median(during) if during else None}
        return out
    finally:
        t.keys("q")
        time.sleep(0.5)
        t.close()


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


HEADLESS = f"""
import time, vitscope
from vitscope.data.datasets import get_dataset
from vitscope.sweep import run_sweep
loaded = vitscope.load({MODEL!r}); ds = get_dataset("fashion-mnist", "train")
t0 = time.perf_counter(); run_sweep(loaded, ds, 256, use_cache=False); print(time.perf_counter() - t0)
"""
IN_APP = f"""
import asyncio
from vitscope.tui.app import InspectorApp, Options
from vitscope.tui.screens.browser import BrowserOptions
async def go():
    app = InspectorApp(Options(model={MODEL!r}, image="", browse=BrowserOptions(model={MODEL!r},
                       dataset="fashion-mnist", split="train", use_cache=False)))
    async with app.run_test(size=(160, 48)) as pilot:
        scr = app.screen
        while "final" not in scr.timings:
            await pilot.pause(0.05)
        print(scr.timings["final"] - scr.timings["data"])
asyncio.run(go())
"""


def throughput(rounds: int = 5) -> dict:
    """The same sweep (sample ViT, 60,000 train images, no cache) as `run_sweep` in a fresh process and
    inside the browser (Pilot, headless) in a fresh process, as a person runs each; alternated rounds,
    medians. Each process times only its sweep."""

    def seconds(code: str) -> float:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        return float(r.stdout.strip().splitlines()[-1])

    headless, app_s = [], []
    for _ in range(rounds):  # alternated: the machine's speed drifts by 20-30% over a minute
        headless.append(seconds(HEADLESS))
        app_s.append(seconds(IN_APP))
    n = 60_000
    h, a = statistics.median(headless), statistics.median(app_s)
    return {"images": n, "rounds": rounds, "headless_img_s": n / h, "in_app_img_s": n / a, "ratio": h / a}


def peak_rss(rows_dir: Path) -> float:
    """Peak RSS (MB) of a process that opens the browser on a synthetic sweep and shows it."""
    code = f"""
import asyncio, resource
from vitscope.tui.app import InspectorApp, Options
from vitscope.tui.screens.browser import BrowserOptions
async def go():
    app = InspectorApp(Options(model={MODEL!r}, image="", browse=BrowserOptions(model={MODEL!r},
                       sweep_dir={str(rows_dir)!r})))
    async with app.run_test(size=(160, 48)) as pilot:
        while not getattr(app.screen, "final", False):
            await pilot.pause(0.05)
        for k in "jjjj6a":
            await pilot.press(k)
        await pilot.pause(1.0)
asyncio.run(go())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    return float(r.stdout.strip().splitlines()[-1])


def main() -> None:
    quick = "--quick" in sys.argv
    rounds = 40 if quick else 100
    tmp = Path(tempfile.mkdtemp())
    results: dict = {}
    small, big = synthetic_sweep(1000, tmp / "s1k"), synthetic_sweep(50_000, tmp / "s50k")
    mid = synthetic_sweep(10_000, tmp / "s10k")
    for name, d in (("1k_rows", small), ("50k_rows", big)):
        results[name] = key_latency(f"inspect {shlex.quote(str(d))}", "images  ·", rounds)
    results["50k_vs_1k_move_ratio"] = results["50k_rows"]["move_median_ms"] / results["1k_rows"]["move_median_ms"]
    results["during_sweep_60k"] = key_latency(
        f"inspect {shlex.quote(MODEL)} --dataset fashion-mnist --split train --no-cache", "sweeping:", rounds,
        sorts=False)
    results["throughput"] = throughput()
    results["rss_mb"] = {"10k_rows": peak_rss(mid), "50k_rows": peak_rss(big)}
    results["rss_mb"]["50k_minus_10k"] = results["rss_mb"]["50k_rows"] - results["rss_mb"]["10k_rows"]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("VITSCOPE_CACHE", tempfile.mkdtemp())
    main()
