"""Training screen speed, each against a baseline measured in the same run.

1. Training throughput with the screen open: `vitscope train --tui` in tmux (160x48) against the same
   `vitscope train` headless (vit-4x4, Fashion-MNIST, batch 128), alternated rounds, fresh processes;
   images/s from the runs' own metrics.jsonl (training steps only, evaluation excluded; median over the
   epochs after the first).
2. Key -> screen updated in the training screen in tmux while the run trains on the same 2 cores
   (probe scrubbing and head keys, polled until the probes title changes); baseline: the same keys on
   the finished run.
3. Curve redraw: the three charts rebuilt from a 10,000-step and a 100,000-step history (decimated)
   against a 100-step one; and what drawing all 10,000 points undecimated would cost.
Run: python benchmarks/bench_training.py [--quick]   (needs Debian's dataset-fashion-mnist)
"""
from __future__ import annotations

import asyncio
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_tui import Tmux  # noqa: E402

TRAIN = "--dataset fashion-mnist --model vit-4x4 --batch-size 128 --limit-test 2000"


def images_per_s(run: Path) -> float:
    """The median over the epochs after the first (in the first, the screen's process starts and imports while
    the run does: a one-off cost of a few seconds, not what a long run sees)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return float(np.median([r["images_per_s"] for r in rows[1:] or rows]))


def headless(out: Path, epochs: int, limit: int) -> float:
    subprocess.run([sys.executable, "-m", "vitscope", "train", *shlex.split(TRAIN), "--epochs", str(epochs),
                    "--limit-train", str(limit), "--out", str(out), "--quiet"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return images_per_s(out)


def state(run: Path) -> str:
    try:
        return json.loads((run / "status.json").read_text()).get("state", "")
    except (OSError, ValueError):
        return ""


def wait_state(run: Path, states: tuple[str, ...], timeout: float = 600) -> None:
    """Wait reading status.json twice a second: polling the terminal (a tmux capture per 10 ms) would take
    the CPU this measures."""
    deadline = time.time() + timeout
    while state(run) not in states:
        assert time.time() < deadline, f"{run} never reached {states}"
        time.sleep(0.5)


def with_screen(out: Path, epochs: int, limit: int) -> float:
    t = Tmux("train")
    try:
        t.start(f"train --tui {TRAIN} --epochs {epochs} --limit-train {limit} --out {shlex.quote(str(out))}")
        wait_state(out, ("finished",))
        time.sleep(1.0)
        assert "FINISHED" in t.screen(), t.screen()
        t.keys("q")
        time.sleep(1.0)
    finally:
        t.close()
    return images_per_s(out)


def throughput(rounds: int, epochs: int, limit: int) -> dict:
    tmp = Path(tempfile.mkdtemp())
    h, s = [], []
    for r in range(rounds):  # alternated, so drift (thermal, other load) hits both alike
        h.append(headless(tmp / f"h{r}", epochs, limit))
        s.append(with_screen(tmp / f"s{r}", epochs, limit))
        print(f"  round {r + 1}: headless {h[-1]:.0f} img/s, with the screen {s[-1]:.0f} img/s", flush=True)
    return {"headless": statistics.median(h), "screen": statistics.median(s),
            "ratio": statistics.median(s) / statistics.median(h), "rounds": rounds}


def probes_title(t: Tmux) -> str:
    return next((ln.split("│")[-1] for ln in t.screen().splitlines() if "attention forming" in ln), "")


def key_latency(rounds: int, training: bool, run: Path | None = None) -> tuple[dict, Path]:
    t = Tmux("keys")
    try:
        if run is None:
            run = Path(tempfile.mkdtemp()) / "run"
            t.start(f"train --tui {TRAIN} --epochs 400 --limit-train 6000 --out {shlex.quote(str(run))}")
        else:
            t.start(f"watch {shlex.quote(str(run))}")
        if training:
            wait_state(run, ("running",))
            while not (run / "probes" / "epoch-0003.npz").exists():
                time.sleep(0.5)
        t.wait("epoch 3 (latest)" if training else "STOPPED", timeout=60)
        time.sleep(0.5)
        times = []
        keys = ["left", "right", "h", "h", "left", "right", "H", "H"]
        for i in range(rounds):
            before = probes_title(t)
            k = keys[i % len(keys)]
            t.keys(k)
            t0 = time.perf_counter()
            while probes_title(t) == before and time.perf_counter() - t0 < 5:
                pass
            times.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)
        if training:
            assert "RUNNING" in t.screen() or "EVALUATING" in t.screen(), t.screen()
            t.keys("q")
            time.sleep(0.3)
            t.keys("s")  # stop it (it saves) and leave
            time.sleep(2)
    finally:
        t.close()
    a = np.array(times)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "max_ms": float(a.max()),
            "n": len(a)}, run


def redraw_cost() -> dict:
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.training import TrainingScreen
    from vitscope.tui.widgets.curves import Curves

    def synthetic(n_steps: int) -> Path:
        run = Path(tempfile.mkdtemp()) / "run"
        run.mkdir()
        epochs = 20
        (run / "run.json").write_text(json.dumps({"model": "vit-4x4", "dataset": "fashion-mnist", "epochs": epochs}))
        rng = np.random.default_rng(0)
        with open(run / "steps.jsonl", "w") as f:
            for i in range(n_steps):
                f.write(json.dumps({"step": i + 1, "epoch": epochs * (i + 1) / n_steps,
                                    "loss": float(2 * np.exp(-3 * i / n_steps) + 0.1 * rng.random()),
                                    "lr": 1e-3 * (1 - i / n_steps)}) + "\n")
        with open(run / "metrics.jsonl", "w") as f:
            for e in range(epochs):
                f.write(json.dumps({"epoch": e + 1, "loss": 1.0, "test_loss": 1.1, "accuracy": 0.5 + e / 50,
                                    "train_accuracy": 0.5, "lr": 1e-3, "images_per_s": 1000, "time": 1}) + "\n")
        return run

    out = {}

    async def measure(n: int, decimated: bool = True) -> float:
        app = InspectorApp(Options(model="", image=""), start=TrainingScreen(synthetic(n)))
        async with app.run_test(size=(160, 48)) as pilot:
            scr = app.screen
            while len(scr.steps["loss"]) < n:
                await pilot.pause(0.05)
            await pilot.pause(0.2)
            times = []
            import vitscope.tui.screens.training as ts

            old = ts.MAX_POINTS
            ts.MAX_POINTS = ts.MAX_POINTS if decimated else 10 ** 9
            try:
                for _ in range(7):
                    t0 = time.perf_counter()
                    scr.draw_curves()
                    for c in scr.query(Curves):
                        if c.display:
                            c.render()
                    times.append((time.perf_counter() - t0) * 1000)
            finally:
                ts.MAX_POINTS = old
        return float(np.median(times))

    for n in (100, 10_000, 100_000):
        out[n] = asyncio.run(measure(n))
    out["10000_undecimated"] = asyncio.run(measure(10_000, decimated=False))
    return out


def main() -> None:
    quick = "--quick" in sys.argv
    print("1. throughput with the screen open vs headless", flush=True)
    tp = throughput(1 if quick else 3, 4, 6000 if quick else 12000)
    print(f"   headless {tp['headless']:.0f} img/s, with the screen {tp['screen']:.0f} img/s: "
          f"ratio {tp['ratio']:.3f} (median of {tp['rounds']} alternated rounds)", flush=True)
    print("2. key -> screen updated in the training screen", flush=True)
    n = 16 if quick else 48
    live, run = key_latency(n, training=True)
    idle, _ = key_latency(n, training=False, run=run)
    print(f"   while training: median {live['median_ms']:.1f} ms, p90 {live['p90_ms']:.1f}, max {live['max_ms']:.0f} "
          f"({live['n']} keys); finished run: median {idle['median_ms']:.1f} ms, p90 {idle['p90_ms']:.1f}", flush=True)
    print("3. curve redraw (three charts, built and rendered)", flush=True)
    rc = redraw_cost()
    print(f"   100 steps {rc[100]:.1f} ms, 10,000 steps {rc[10_000]:.1f} ms, 100,000 steps {rc[100_000]:.1f} ms "
          f"(ratio 10k/100 {rc[10_000] / rc[100]:.2f}); 10,000 undecimated {rc['10000_undecimated']:.1f} ms",
          flush=True)
    print(json.dumps({"throughput": tp, "keys_training": live, "keys_finished": idle,
                      "redraw_ms": {str(k): v for k, v in rc.items()}}))


if __name__ == "__main__":
    main()
