"""Training: events, deterministic and exactly resumable runs, finetuning, DDP on 2 CPU processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file

import vitscope
from vitscope.errors import VitscopeError
from vitscope.train import TrainConfig, Trainer

from conftest import MNIST_DIR, needs_fashion, run_cli

SMALL = dict(model="vit-4x4", dataset="fashion-mnist", epochs=2, batch_size=64, limit_train=640,
             limit_test=500, seed=3)


def _run(tmp_path, name, **kw):
    cfg = TrainConfig(out=str(tmp_path / name), **{**SMALL, **kw})
    events = list(Trainer(cfg).events())
    return cfg, events


@needs_fashion
def test_events_files_and_checkpoint(tmp_path):
    cfg, events = _run(tmp_path, "a")
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "finished"
    assert kinds.count("step") == 2 * 10 and kinds.count("epoch_end") == 2
    run = tmp_path / "a"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"epoch", "step", "loss", "accuracy", "lr", "images_per_s", "time"}
    L = vitscope.load(run / "best.safetensors")
    assert L.spec.family == "vitscope" and L.spec.num_heads == 4 and L.spec.layout.grid == (4, 4)
    assert L.spec.classes[0] == "T-shirt/top" and L.spec.data_config["mean"] == [0.2860]
    assert max(r["accuracy"] for r in rows) > 0.2  # twice chance after 20 steps on 640 images
    assert not any(p.name.startswith(".") for p in run.iterdir())  # no temp files left behind


@needs_fashion
def test_same_seed_same_weights(tmp_path):
    _run(tmp_path, "a", epochs=1)
    _run(tmp_path, "b", epochs=1)
    a, b = load_file(tmp_path / "a" / "last.safetensors"), load_file(tmp_path / "b" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@needs_fashion
def test_stop_and_resume_equals_straight_run(tmp_path):
    _run(tmp_path, "straight")
    cfg = TrainConfig(out=str(tmp_path / "cut"), **SMALL)
    tr = Trainer(cfg)
    kinds = []
    for ev in tr.events():
        kinds.append(ev.kind)
        if ev.kind == "step" and ev.step == 13:  # mid second epoch
            tr.stop()
    assert kinds[-1] == "stopped"
    resumed = Trainer(TrainConfig(), resume=tmp_path / "cut")
    assert resumed.step == 13 and resumed.epoch == 1
    kinds = [e.kind for e in resumed.events()]
    assert kinds[-1] == "finished" and kinds.count("step") == 7
    a = load_file(tmp_path / "straight" / "last.safetensors")
    b = load_file(tmp_path / "cut" / "last.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@needs_fashion
def test_pause_from_another_thread(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "p"), **{**SMALL, "epochs": 1})
    tr = Trainer(cfg)
    seen = []
    for ev in tr.events():
        seen.append(ev.kind)
        if ev.kind == "step" and ev.step == 2:
            tr.pause()
            threading.Timer(0.2, tr.resume).start()
    assert "paused" in seen and seen[-1] == "finished" and seen.count("step") == 10


@needs_fashion
def test_finetune_replaces_head_and_records_parent(tmp_path):
    _run(tmp_path, "parent", epochs=1)
    parent = tmp_path / "parent" / "best.safetensors"
    cfg, events = _run(tmp_path, "child", dataset="mnist", data_dir=str(MNIST_DIR), split_train=200,
                       finetune=str(parent), epochs=1)
    from vitscope.loaders.checkpoint import file_hash
    from safetensors import safe_open

    with safe_open(str(tmp_path / "child" / "best.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["vitscope"])
    assert meta["parent"] == file_hash(parent)
    assert meta["classes"] == [str(i) for i in range(10)]
    p, c = load_file(parent), load_file(tmp_path / "child" / "best.safetensors")
    assert not torch.equal(p["head.weight"], c["head.weight"])


@needs_fashion
def test_run_directory_is_not_clobbered(tmp_path):
    _run(tmp_path, "a", epochs=1)
    before = (tmp_path / "a" / "metrics.jsonl").read_text()
    with pytest.raises(VitscopeError, match="--overwrite"):
        Trainer(TrainConfig(out=str(tmp_path / "a"), **SMALL))
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == before
    with pytest.raises(VitscopeError, match="not a vitscope run directory"):
        Trainer(TrainConfig(), resume=tmp_path)


def test_cli_train_bad_inputs(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    r = run_cli("train", "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--split-train", "200",
                "--finetune", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "--finetune" in r.stderr and "notes.txt" in r.stderr
    r = run_cli("train", "--dataset", "kmnist", "--out", str(tmp_path / "r2"))
    assert r.returncode == 2 and "unknown dataset 'kmnist'" in r.stderr
    r = run_cli("train", "--resume", str(tmp_path))
    assert r.returncode == 2 and "not a vitscope run directory" in r.stderr


@needs_fashion
@pytest.mark.slow
def test_cli_train_and_sigint_resume(tmp_path):
    """A real subprocess interrupted with Ctrl-C saves its state; --resume finishes the run."""
    import signal
    import time

    out = tmp_path / "run"
    args = [sys.executable, "-m", "vitscope", "train", "--dataset", "fashion-mnist", "--epochs", "3",
            "--limit-train", "3200", "--limit-test", "300", "--batch-size", "64", "--out", str(out), "--quiet"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr
    assert "--resume" in stdout and (out / "state.pt").exists()
    r = run_cli("train", "--resume", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["epoch"] == 3


@needs_fashion
@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    """torchrun --nproc_per_node=2 on gloo: rank 0 writes; sweep shards are gathered."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                        "-m", "vitscope", "train", "--dataset", "fashion-mnist", "--epochs", "1", "--limit-train",
                        "1024", "--limit-test", "400", "--batch-size", "64", "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("epoch 1:") == 1  # only rank 0 reports and writes
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    ck = out / "best.safetensors"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29534",
                        "-m", "vitscope", "sweep", str(ck), "--dataset", "fashion-mnist", "--limit", "300", "--json",
                        "--no-cache"], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[:3000]
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    single = run_cli("sweep", str(ck), "--dataset", "fashion-mnist", "--limit", "300", "--json", "--no-cache")
    want = json.loads(single.stdout)
    got = json.loads(lines[0])
    assert got["n"] == 300 and got["confusion"] == want["confusion"]


@pytest.mark.slow
def test_a_full_disk_at_the_start_of_an_overwrite_leaves_no_other_runs_state_to_resume(tmp_path):
    """--overwrite over a finished run, on a disk with room for run.json but not for state.pt: one line, exit 2,
    and the directory does not resume the old run's state under the new run's configuration."""
    import resource

    out = tmp_path / "run"
    args = ["--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--split-train", "200", "--batch-size", "50",
            "--limit-test", "50", "--out", str(out)]
    list(Trainer(TrainConfig(dataset="mnist", data_dir=str(MNIST_DIR), split_train=200, batch_size=50,
                             limit_test=50, epochs=1, probes=0, out=str(out))).events())
    assert (out / "state.pt").is_file()

    def preexec():  # run.json (~1 KB) fits, state.pt (~1.7 MB) does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    r = subprocess.run([sys.executable, "-m", "vitscope", "train", *args, "--epochs", "3", "--lr", "0.01",
                        "--overwrite", "--quiet"], capture_output=True, text=True, timeout=300, preexec_fn=preexec)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1].startswith(f"vitscope: error: {out / 'state.pt'}: cannot write state.pt: File "
                                                "too large") and "Traceback" not in r.stderr
    assert json.loads((out / "run.json").read_text())["epochs"] == 3
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(VitscopeError, match="saved no state yet"):
        Trainer(TrainConfig(), resume=out)


MIXED = dict(model="vit-4x4", dataset="mnist", data_dir=str(MNIST_DIR), split_train=200, epochs=2, batch_size=32,
             limit_test=50, probes=0, seed=5, mixup=0.8, cutmix=1.0)  # 6 steps an epoch


def _weights(run) -> dict[str, torch.Tensor]:
    return load_file(run / "last.safetensors")


def test_mixup_and_cutmix_runs_repeat_and_resume_bit_exactly(tmp_path):
    """The mixing draws from the run's own generator (seeded, saved in state.pt), not numpy's global one."""
    import numpy as np

    for name in ("a", "b"):
        list(Trainer(TrainConfig(out=str(tmp_path / name), **MIXED)).events())
        np.random.rand(3)  # anything else in the process drawing from numpy's generator changes nothing
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = TrainConfig(out=str(tmp_path / "plain"), **{**MIXED, "mixup": 0.0, "cutmix": 0.0})
    list(Trainer(plain).events())
    assert not torch.equal(_weights(tmp_path / "plain")["head.weight"], a["head.weight"])  # the mixing took part
    for stop_at in (6, 9):  # at the end of epoch 1, and within epoch 2
        run = tmp_path / f"cut{stop_at}"
        tr = Trainer(TrainConfig(out=str(run), **MIXED))
        for ev in tr.events():
            if ev.kind == "step" and ev.step == stop_at:
                tr.stop()
        np.random.seed(1234)  # the global generator elsewhere in the process: irrelevant to the resumed run
        kinds = [e.kind for e in Trainer(TrainConfig(), resume=run).events()]
        assert kinds.count("step") == 12 - stop_at and kinds[-1] == "finished"
        c = _weights(run)
        assert all(torch.equal(a[k], c[k]) for k in a), stop_at
    # a Ctrl-C within step 9 (after its augmentation and mixing drew their numbers) abandons it: the state saved
    # is the one before it, generators included, so the resumed run is still the same run
    run = tmp_path / "abandoned"
    tr = Trainer(TrainConfig(out=str(run), **MIXED))
    forward, calls = tr.model.forward, []

    def interrupted_forward(x):
        calls.append(tr.model.training)
        if calls.count(True) == 9:
            raise KeyboardInterrupt
        return forward(x)

    tr.model.forward = interrupted_forward
    last = list(tr.events())[-1]
    assert last.kind == "stopped" and last.step == 8 and last.data["saved"]
    resumed = Trainer(TrainConfig(), resume=run)
    assert resumed.step == 8 and [e.kind for e in resumed.events()].count("step") == 4
    c = _weights(run)
    assert all(torch.equal(a[k], c[k]) for k in a)


def _start_training(out, *extra):
    """`vitscope train` on tests/data/mnist in a subprocess, returned once it has taken a step."""
    import time

    args = [sys.executable, "-m", "vitscope", "train", "--dataset", "mnist", "--data-dir", str(MNIST_DIR),
            "--split-train", "200", "--batch-size", "20", "--limit-test", "100", "--epochs", "100", "--out", str(out),
            "--quiet", *extra]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((out / "steps.jsonl").is_file() and (out / "steps.jsonl").stat().st_size):
        assert time.time() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.02)
    return p


@pytest.mark.slow
@pytest.mark.parametrize("gap_s", [0.02, 0.15])
def test_a_double_ctrl_c_stops_quietly_with_130_and_the_state_saved(gap_s, tmp_path):
    """Two SIGINTs gap_s apart: the second may abandon the step under way, never a save; no traceback, exit 130
    (not -2: a Ctrl-C in the interpreter's shutdown once killed the process), and the state resumes."""
    import signal
    import time

    out = tmp_path / "run"
    p = _start_training(out)
    p.send_signal(signal.SIGINT)
    time.sleep(gap_s)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and "Exception ignored" not in stderr and stderr == "", stderr
    assert stdout.splitlines()[-1] == (f"stopped; state saved to {out / 'state.pt'}; continue with: vitscope train "
                                       f"--resume {out}")
    resumed = Trainer(TrainConfig(), resume=out)
    steps = [json.loads(line)["step"] for line in (out / "steps.jsonl").read_text().splitlines()]
    assert resumed.step == steps[-1] and resumed.epoch * 10 + resumed.batch_in_epoch == resumed.step
    assert json.loads((out / "status.json").read_text())["state"] == "stopped"


@pytest.mark.parametrize("given, run_json, message", [
    ("run/run.json", "{}", "run/run.json: is a file: --resume takes the run's directory (--resume {tmp}/run)"),
    ("run", "{bad", "run/run.json: run.json is not valid JSON (Expecting property name"),
    ("run", b"\xff\xfe", "run/run.json: run.json is not valid JSON ("),
    ("run", "[1, 2]", "run/run.json: run.json does not hold a run's configuration"),
    ("run", '{"epochs": "ten"}', "run/run.json: epochs is 'ten', not a whole number"),
    ("run", '{"clip_grad": [1]}', "run/run.json: clip_grad is [1], not a number or null"),
    ("run", None, "run/run.json: run.json is not a file"),
    ("nowhere", "{}", "nowhere: no such run directory"),
])
def test_resume_says_what_is_wrong_with_run_json(given, run_json, message, tmp_path, capsys):
    """--resume named 'no run.json' whenever run.json was not a readable file in the directory given: the
    run.json itself given, a damaged one, one that is a directory."""
    from vitscope.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "state.pt").write_bytes(b"never read: run.json is checked first")
    if run_json is None:
        (run / "run.json").mkdir()
    elif isinstance(run_json, bytes):
        (run / "run.json").write_bytes(run_json)
    else:
        (run / "run.json").write_text(run_json)
    assert main(["train", "--resume", str(tmp_path / given)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"vitscope: error: {tmp_path}/{message.format(tmp=tmp_path)}")
