"""The training screen and the run directory it reads: real child processes training on the shipped MNIST
images (200 train, 100 test), driven with Pilot; the probe arrays checked against independent traces."""
from __future__ import annotations

import asyncio
import functools
import json
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import vitscope
from vitscope import render
from vitscope.train import TrainConfig, Trainer
from vitscope.train.monitor import RunMonitor, decimate, form_to_args, smooth, start_run
from vitscope.train.probes import epoch_file, image_file, load_probes
from vitscope.tui.app import InspectorApp, Options
from vitscope.tui.screens.training import TrainingScreen

from conftest import MNIST_DIR
from tui_helpers import wait_for

def sync(fn):
    """Run a Pilot test (an async function) to completion; pytest still sees its fixtures."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return run


TINY = ["--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--split-train", "200", "--batch-size", "8"]


def tiny_run(run, epochs=2, **kw):
    cfg = TrainConfig(model="vit-4x4", dataset="mnist", data_dir=str(MNIST_DIR), split_train=200, batch_size=8,
                      epochs=epochs, out=str(run), **kw)
    return [e.kind for e in Trainer(cfg).events()]


def app_for(run, proc=None) -> InspectorApp:
    return InspectorApp(Options(model="", image=""), start=TrainingScreen(run, proc))


def child(run, *extra, epochs=300, preexec=None):
    """`vitscope train` in a child process, as the screen starts it."""
    if preexec is None:
        return start_run([*TINY, "--epochs", str(epochs), "--out", str(run), *extra], run)
    run.mkdir(parents=True, exist_ok=True)
    log = open(run / "train.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "vitscope", "train", *TINY, "--epochs", str(epochs), "--out",
                             str(run), "--quiet", *extra], stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=preexec, start_new_session=True)


def stop_child(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


# -- the run directory ---------------------------------------------------------------------------
def test_run_files_heartbeat_steps_and_probes(tmp_path):
    run = tmp_path / "run"
    kinds = tiny_run(run)
    assert kinds.count("probes") == 3  # epoch 0 (before training), 1, 2
    st = json.loads((run / "status.json").read_text())
    assert st["state"] == "finished" and st["pid"] == os.getpid() and st["step"] == 50 and st["epoch"] == 2
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 51))
    assert steps[24]["epoch"] == 1.0 and steps[-1]["epoch"] == 2.0
    # the probes: fixed test images, one file per epoch, arrays that equal a trace of the final model
    probes = load_probes(run)
    assert probes.epochs == [0, 1, 2] and probes.n == 4 and probes.grid == (4, 4)
    assert sorted(probes.label.tolist()) == [0, 1, 2, 3] and (probes.index >= 200).all()  # test side of the hold-out
    last = probes.epoch(2)
    loaded = vitscope.load(run / "last.safetensors")
    for k in range(probes.n):
        tr = vitscope.trace(loaded, str(image_file(run, k)))  # the probe image as a file, traced on its own
        cls_rows = tr.attn[:, :, 0, 1:].numpy()  # [L, H, patches]: CLS to every patch
        np.testing.assert_allclose(last["attn"][k].astype(np.float32), cls_rows, atol=2e-3)
        np.testing.assert_allclose(last["probs"][k].astype(np.float32),
                                   tr.logits.softmax(-1).numpy(), atol=2e-3)
        # rollout: the product of (A + I)/2 (row-normalised, mean over heads) over layers, CLS row
        A = tr.attn.double().mean(1).numpy()
        R = np.eye(A.shape[-1])
        for a in A:
            a = (a + np.eye(len(a))) / 2
            R = (a / a.sum(-1, keepdims=True)) @ R
        np.testing.assert_allclose(last["rollout"][k], R[0, 1:], atol=1e-4)
    assert not list(run.rglob(".*.tmp"))


def test_monitor_reads_incrementally_and_decimates(tmp_path):
    run = tmp_path / "run"
    tiny_run(run)
    mon = RunMonitor(run)
    first = mon.poll()
    assert first.verdict == "finished" and len(first.steps) == 50 and len(first.epochs) == 2
    again = mon.poll()
    assert again.steps == [] and again.epochs == [] and not again.reset and not again.new_probes
    with open(run / "steps.jsonl", "a") as f:  # a line half written: held back until its end arrives
        f.write('{"step": 51, "epoch": 2.04, "loss": 1.0, "lr": 0.001}\n{"step": 52, "ep')
    assert [r["step"] for r in mon.poll().steps] == [51]
    with open(run / "steps.jsonl", "a") as f:
        f.write('och": 2.08, "loss": 1.0, "lr": 0.001}\n')
    assert [r["step"] for r in mon.poll().steps] == [52]
    lines = (run / "steps.jsonl").read_text().splitlines()[:10]  # a resume trims the log: read again, whole
    (run / "steps.jsonl").write_text("\n".join(lines) + "\n")
    up = mon.poll()
    assert up.reset and len(up.steps) == 10 and len(up.epochs) == 2
    y = np.random.default_rng(0).normal(size=10_000)
    xs, ys = decimate(y, np.arange(10_000.0), 300)
    assert len(xs) == 300
    for i in (0, 1, 150, 299):  # bucket i holds points i*n//300 .. (i+1)*n//300 - 1
        lo, hi = i * 10_000 // 300, (i + 1) * 10_000 // 300
        assert ys[i] == pytest.approx(sum(y[lo:hi]) / (hi - lo)) and xs[i] == pytest.approx((lo + hi - 1) / 2)
    ema, acc = [], 0.0  # TensorBoard's smoothing, by a loop
    for t, v in enumerate(y[:500]):
        acc = 0.9 * acc + 0.1 * v
        ema.append(acc / (1 - 0.9 ** (t + 1)))
    np.testing.assert_allclose(smooth(y[:500], 0.9), ema, rtol=1e-9)
    assert smooth(y[:10], 0.0) is not None and np.array_equal(smooth(y[:10], 0.0), y[:10])
    short = decimate([3.0, 1.0], None, 300)  # a short curve is drawn as it is
    assert short[0].tolist() == [1.0, 2.0] and short[1].tolist() == [3.0, 1.0]


def test_form_checks_like_the_cli(tmp_path):
    base = {"dataset": "mnist", "data_dir": str(MNIST_DIR), "split_train": "200", "epochs": "1",
            "out": str(tmp_path / "r")}
    args, run = form_to_args(base)
    assert args[-2:] == ["--out", str(tmp_path / "r")] and "--split-train" in args
    for field, value, words in [("epochs", "x", "epochs: 'x' is not an integer"), ("lr", "0", "lr: must be"),
                                ("model", "vit-99", "model: unknown"), ("dataset", "mnist2", "dataset: unknown"),
                                ("finetune", str(MNIST_DIR / "t10k-labels-idx1-ubyte.gz"), "finetune from:")]:
        with pytest.raises(vitscope.VitscopeError, match=words):
            form_to_args({**base, field: value})
    tiny_run(tmp_path / "r", epochs=1)
    with pytest.raises(vitscope.VitscopeError, match="run directory: .*already holds"):
        form_to_args(base)
    assert form_to_args(base, overwrite=True)[0][-1] == "--overwrite"


# -- the screen, on runs in child processes ------------------------------------------------------------
@sync
async def test_live_curves_pause_resume_and_stop_saves_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = child(run)
    app = app_for(run, proc)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            scr = app.screen
            await wait_for(pilot, lambda: scr.verdict == "running" and len(scr.steps["loss"]) > 30)
            await wait_for(pilot, lambda: scr.epoch_rows and scr.query_one("#loss-plot").points > 30)
            await wait_for(pilot, lambda: "RUNNING" in scr.query_one("#topbar").text)  # not between two epochs
            top = scr.query_one("#topbar").text
            assert "img/s" in top and "ETA" in top and "vit-4x4 on mnist" in top
            assert scr.query_one("#epochs").n == len(scr.epoch_rows)
            await pilot.press("space")
            await wait_for(pilot, lambda: scr.verdict == "paused", 10)
            n = len(scr.steps["loss"])
            step = json.loads((run / "status.json").read_text())["step"]
            await pilot.pause(1.0)
            assert len(scr.steps["loss"]) == n and json.loads((run / "status.json").read_text())["step"] == step
            assert "PAUSED" in scr.query_one("#topbar").text
            await pilot.press("space")
            await wait_for(pilot, lambda: len(scr.steps["loss"]) > n + 5, 10)
            await pilot.press("s")
            await pilot.pause(0.2)
            await pilot.press("y")
            await wait_for(pilot, lambda: scr.verdict == "stopped", 15)
            assert proc.wait(10) == 0
            assert "STOPPED" in scr.query_one("#topbar").text
            assert "r resumes" in scr.query_one("#status").text
            st = json.loads((run / "status.json").read_text())
            last = vitscope.load(run / "last.safetensors")  # stop wrote a checkpoint that loads
            note = next(n for n in last.spec.notes if n.startswith("trained:"))
            record = json.loads(note.removeprefix("trained: "))  # JSON, as prediction.json carries it
            assert record["batch"] == st["batch"] and record["epoch"] == st["epoch"]
            await pilot.press("q")  # nothing trains: no question
    finally:
        stop_child(proc)


@sync
async def test_kill_9_is_reported_within_2s_and_r_resumes(tmp_path):
    run = tmp_path / "run"
    proc = child(run)
    app = app_for(run, proc)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            scr = app.screen
            await wait_for(pilot, lambda: scr.verdict == "running" and len(scr.epoch_rows) >= 1)
            os.kill(proc.pid, signal.SIGKILL)
            t0 = time.monotonic()
            await wait_for(pilot, lambda: scr.verdict == "died", 10)
            assert time.monotonic() - t0 <= 2.0
            assert scr.query_one("#run-log").display
            shown = str(scr.query_one("#run-log").render())
            assert "DIED" in shown and "SIGKILL" in shown and "r resumes" in shown
            vitscope.load(run / "last.safetensors")  # a checkpoint that loads
            saved = json.loads((run / "status.json").read_text())["epoch"]
            await pilot.press("r")
            await wait_for(pilot, lambda: scr.verdict == "running" and scr.monitor.process is not proc, 30)
            resumed = scr.monitor.process
            await wait_for(pilot, lambda: scr.status.get("resumed") is True and scr.status.get("step", 0) > 0, 30)
            assert scr.status["epoch"] >= saved  # at most the current epoch's work was lost
            assert not scr.query_one("#run-log").display
            await pilot.press("s", "y")
            await wait_for(pilot, lambda: scr.verdict == "stopped", 15)
            assert resumed.wait(10) == 0
    finally:
        stop_child(proc)
        if scr.monitor.process is not proc:
            stop_child(scr.monitor.process)
    log = (run / "train.log").read_text()
    assert "(resumed)" in log


@sync
async def test_watch_sees_a_headless_run_die(tmp_path):
    """A run this UI did not start (no process handle): dead from its pid on this host, zombie or gone."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "vitscope", "train", *TINY, "--epochs", "300", "--out",
                             str(run), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    app = app_for(run)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            scr = app.screen
            await wait_for(pilot, lambda: scr.verdict == "running" and scr.status.get("step", 0) > 10)
            assert scr.status["pid"] == proc.pid
            os.kill(proc.pid, signal.SIGKILL)  # not reaped: a zombie until wait()
            t0 = time.monotonic()
            await wait_for(pilot, lambda: scr.verdict == "died", 10)
            assert time.monotonic() - t0 <= 2.0 and f"({proc.pid}) is gone" in scr.reason
    finally:
        stop_child(proc)


@sync
async def test_quit_while_training_asks_and_detach_leaves_it_training(tmp_path):
    run = tmp_path / "run"
    proc = child(run)
    app = app_for(run, proc)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            scr = app.screen
            await wait_for(pilot, lambda: scr.verdict == "running")
            await pilot.press("q")
            await pilot.pause(0.2)
            assert type(app.screen).__name__ == "QuitRun"
            await pilot.press("escape")  # cancel: still here
            await pilot.pause(0.2)
            assert app.screen is scr and app.is_running
            await pilot.press("q")
            await pilot.pause(0.2)
            await pilot.press("d")
            await pilot.pause(0.3)
        assert not app.is_running
        from conftest import run_cli

        r = run_cli("train", "--resume", str(run))  # a second process on a live run: refused
        assert r.returncode == 2 and "still training" in r.stderr and "vitscope watch" in r.stderr
        assert any("vitscope watch" in line for line in app.farewell)
        step = json.loads((run / "status.json").read_text())["step"]
        time.sleep(1.0)
        assert proc.poll() is None and json.loads((run / "status.json").read_text())["step"] > step  # trains on
        app2 = app_for(run)  # `vitscope watch` reattaches; quitting with s stops it, and it saves
        async with app2.run_test(size=(160, 48)) as pilot:
            scr = app2.screen
            await wait_for(pilot, lambda: scr.verdict == "running")
            await pilot.press("q")
            await pilot.pause(0.2)
            await pilot.press("s")
            await pilot.pause(0.3)
        assert proc.wait(15) == 0
        assert json.loads((run / "status.json").read_text())["state"] == "stopped"
    finally:
        stop_child(proc)


@sync
async def test_a_failing_save_is_one_clear_error_and_the_previous_state_stays(tmp_path):
    """A write that fails as on a full disk: the child's file-size limit (RLIMIT_FSIZE) lets the first state
    (no optimiser moments yet, ~0.6 MB) through and fails the epoch's (~1.7 MB)."""
    run = tmp_path / "run"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    proc = child(run, epochs=3, preexec=limit)
    app = app_for(run, proc)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            scr = app.screen
            await wait_for(pilot, lambda: scr.verdict in ("error", "died"), 60)
            assert proc.wait(10) == 2
            assert scr.verdict == "error"
            shown = str(scr.query_one("#run-log").render())
            assert "ERROR" in shown and "cannot write state.pt: File too large (the previous one is intact)" in shown
    finally:
        stop_child(proc)
    assert not list(run.glob(".*.tmp"))  # no temporary file left behind
    import torch

    st = torch.load(run / "state.pt", weights_only=True)  # the previous (initial) state, whole
    assert st["step"] == 0 and st["epoch"] == 0
    assert "Traceback" not in (run / "train.log").read_text()


# -- watching a finished run: curves restored, the scrubber ---------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    tiny_run(run, epochs=3)
    return run


@sync
async def test_watch_restores_a_finished_run_and_scrubs_epochs(finished_run):
    run = finished_run
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    app = app_for(run)
    async with app.run_test(size=(160, 48)) as pilot:
        scr = app.screen
        await wait_for(pilot, lambda: scr.verdict == "finished" and scr.probe_epochs == [0, 1, 2, 3]
                       and not scr._dirty_curves)
        assert len(scr.steps["loss"]) == 75 and [r["epoch"] for r in scr.epoch_rows] == [1, 2, 3]
        table = scr.query_one("#epochs")
        assert table.n == 3 and table.cursor == 2
        best = max(range(3), key=lambda i: rows[i]["accuracy"])
        assert table._cells(best)[-1] == "best" and [table._cells(i)[-1] for i in range(3)].count("best") == 1
        assert table._cells(0)[4] == f"{rows[0]['accuracy']:.2%}"
        loss = scr.query_one("#loss-plot")
        xs_test = next(s for s in loss._series if s[0] == "test")
        assert list(xs_test[2]) == [r["test_loss"] for r in rows]  # the test loss curve is metrics.jsonl's
        steps = [json.loads(line)["loss"] for line in (run / "steps.jsonl").read_text().splitlines()]
        assert list(loss._series[0][2]) == steps
        await pilot.press("a", "a")  # smoothing 0.6, then 0.9
        assert scr.smoothing == 0.9 and "smoothed 0.9" in loss.title
        np.testing.assert_allclose(loss._series[0][2], smooth(steps, 0.9))
        await pilot.press("a", "a")  # 0.99, then off
        assert scr.smoothing == 0.0 and list(loss._series[0][2]) == steps
        assert "FINISHED" in scr.query_one("#topbar").text
        assert scr.shown_epoch() == 3
        probes = load_probes(run)

        def expected(epoch, head):  # probe 0, layer 1 tile, from the epoch file by hand
            with np.load(epoch_file(run, epoch)) as z:
                a = z["attn"][0, 1].astype(np.float64)
            m = a.mean(0) if head is None else a[head]
            return render.overlay(probes.images[0], m.reshape(4, 4), 0.6)

        def tile(col):
            pic = scr.query_one("#probes")._image
            return pic[:28, col * 30:col * 30 + 28]

        np.testing.assert_array_equal(tile(2), expected(3, None))
        await pilot.press("left")
        await pilot.press("left")
        assert scr.shown_epoch() == 1
        np.testing.assert_array_equal(tile(2), expected(1, None))
        assert "epoch 1 [2/4]" in scr.query_one("#probes-title").text
        await pilot.press("h", "h")
        assert scr.head == 1
        np.testing.assert_array_equal(tile(2), expected(1, 1))
        await pilot.press("home")
        assert scr.shown_epoch() == 0
        np.testing.assert_array_equal(tile(2), expected(0, 1))
        await pilot.press("end")
        assert scr.shown_epoch() == 3 and "(latest)" in scr.query_one("#probes-title").text
        caption = str(scr.query_one("#probe-captions").render())
        assert f"#{int(probes.index[0])} {probes.classes[int(probes.label[0])]} →" in caption


@sync
async def test_i_opens_the_best_checkpoint_on_the_probe_image(finished_run):
    from vitscope.tui.screens.inspector import InspectorScreen

    app = app_for(finished_run)
    async with app.run_test(size=(160, 48)) as pilot:
        scr = app.screen
        await wait_for(pilot, lambda: scr.verdict == "finished" and scr.probes is not None)
        await pilot.press("j", "i")
        await wait_for(pilot, lambda: isinstance(app.screen, InspectorScreen) and app.screen.session is not None)
        ins = app.screen
        assert ins.opts.model == str(finished_run / "best.safetensors")
        assert ins.opts.image == str(image_file(finished_run, 1))
        await pilot.press("escape")  # at the inspector's top: back to the run
        assert app.screen is scr


@sync
async def test_training_screen_under_no_color_and_80x24(finished_run, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = app_for(finished_run)
    async with app.run_test(size=(80, 24)) as pilot:
        scr = app.screen
        await wait_for(pilot, lambda: scr.verdict == "finished" and not scr._dirty_curves)
        assert scr.query_one("#curves-col").display and not scr.query_one("#probes-col").display
        await pilot.press("v")
        await pilot.pause(0.2)
        assert scr.query_one("#probes-col").display and not scr.query_one("#curves-col").display
        assert "forming" in app.export_screenshot()  # every segment through the monochrome filter
        await pilot.press("v")
        await pilot.pause(0.2)
        assert "loss" in app.export_screenshot()
    assert app.return_code in (None, 0)


@sync
async def test_T_opens_the_form_and_starts_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from vitscope.tui.modals import TrainForm

    app = app_for(tmp_path / "nothing")  # any screen: T is the app's
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("T")
        await pilot.pause(0.2)
        form = app.screen
        assert isinstance(form, TrainForm)
        values = {"dataset": "mnist", "data_dir": str(MNIST_DIR), "split_train": "200", "epochs": "abc",
                  "batch_size": "8", "out": str(tmp_path / "formrun")}
        for key, v in values.items():
            form.query_one(f"#f-{key}").value = v
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
        assert app.screen is form and "epochs: 'abc' is not an integer" in str(form.query_one("#form-error").render())
        form.query_one("#f-epochs").value = "1"
        await pilot.press("ctrl+s")
        await pilot.pause(0.2)
        scr = app.screen
        assert isinstance(scr, TrainingScreen) and scr.run_dir == tmp_path / "formrun"
        await wait_for(pilot, lambda: scr.verdict == "finished", 60)
        assert scr.monitor.process.wait(5) == 0 and len(scr.epoch_rows) == 1


def test_torchrun_run_is_watched_and_controlled_on_every_rank(tmp_path):
    """Under torchrun (2 CPU processes, gloo), rank 0 reads control.json and broadcasts: every rank pauses,
    resumes and stops on the same step; a monitor without a process handle follows it by rank 0's pid."""
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = open(tmp_path / "torchrun.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_port=29541", "-m", "vitscope", "train", *TINY, "--epochs", "300", "--out",
                             str(run), "--quiet"], stdout=log, stderr=subprocess.STDOUT, env=env)
    mon = RunMonitor(run)

    def until(cond, timeout=60):
        deadline = time.time() + timeout
        while not cond():
            assert time.time() < deadline and proc.poll() is None, (tmp_path / "torchrun.log").read_text()[-2000:]
            time.sleep(0.2)

    try:
        until(lambda: mon.poll().verdict == "running" and mon.status.get("step", 0) > 5)
        assert mon.status["world_size"] == 2
        mon.send("pause")
        until(lambda: mon.poll().verdict == "paused")
        step = mon.status["step"]
        time.sleep(1.0)
        assert mon.poll().status["step"] == step  # neither rank stepped on (they would deadlock alone)
        mon.send("resume")
        until(lambda: mon.poll().status.get("step", 0) > step + 3)
        mon.send("stop")
        code = proc.wait(60)
        log = (tmp_path / "torchrun.log").read_text()
        assert code == 0, "\n".join(ln for ln in log.splitlines() if "rror" in ln or "what()" in ln)[-3000:]
        assert mon.poll().verdict == "stopped"
    finally:
        stop_child(proc)
    vitscope.load(run / "last.safetensors")


@sync
async def test_sigterm_stops_and_saves_like_ctrl_c_and_resume_cleans_temporaries(tmp_path):
    run = tmp_path / "run"
    proc = child(run)
    app = app_for(run, proc)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            scr = app.screen
            await wait_for(pilot, lambda: scr.verdict == "running" and len(scr.epoch_rows) >= 1)
            proc.terminate()
            assert proc.wait(20) == 143
            await wait_for(pilot, lambda: scr.verdict == "stopped", 5)  # not DIED: it saved and said so
            assert not scr.query_one("#run-log").display
    finally:
        stop_child(proc)
    import torch

    st = torch.load(run / "state.pt", weights_only=True)
    assert st["step"] == json.loads((run / "status.json").read_text())["step"] > 25  # where it stopped
    assert "stopped; state saved" in (run / "train.log").read_text()
    (run / ".state.pt.x1y2.tmp").write_bytes(b"half a file")  # as a writer killed mid-file leaves
    (run / "probes" / ".epoch-0009.npz.abc.tmp").write_bytes(b"")
    Trainer(TrainConfig(), resume=run)
    assert not list(run.rglob(".*.tmp"))
    (run / "state.pt").unlink()  # as a kill before the first save leaves it: said plainly
    with pytest.raises(vitscope.VitscopeError, match="saved no state yet .* --overwrite"):
        Trainer(TrainConfig(), resume=run)
