"""Shared helpers for the Pilot tests of the screens."""
from __future__ import annotations

import numpy as np

from vitscope.tui.app import InspectorApp, Options
from vitscope.views import Session

from conftest import ROOT

MODEL = ROOT / "samples" / "fashion-vit-p7.safetensors"
IMAGE = ROOT / "samples" / "fashion_0000_ankle-boot.png"
CNN = ROOT / "samples" / "fashion-cnn.safetensors"
SANDAL = ROOT / "samples" / "fashion_0021_sandal_pred-sneaker.png"


def fresh(session: Session) -> Session:
    """A new Session (empty cache) over the same model and trace."""
    return Session(session.loaded, session.trace, session._shown, session.input, session.image_path,
                   session._logits)


def make_app(session: Session, model=MODEL, image=IMAGE, **opts) -> InspectorApp:
    return InspectorApp(Options(model=str(model), image=str(image), **opts), session=fresh(session))


def text(app, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


async def settle(pilot, timeout: float = 60.0) -> None:
    """Wait until no worker runs (slow panes compute in workers) and the screen has caught up."""
    t = 0.0
    await pilot.pause()
    while any(w.is_running for w in pilot.app.workers):
        await pilot.pause(0.05)
        t += 0.05
        assert t < timeout, "timed out waiting for workers"
    await pilot.pause()


async def wait_for(pilot, cond, timeout: float = 60.0) -> None:
    t = 0.0
    while not cond():
        await pilot.pause(0.05)
        t += 0.05
        assert t < timeout, "timed out waiting for the app"


def shown_picture(app) -> np.ndarray:
    from vitscope.tui.widgets import HalfCellImage

    return app.screen.query_one(HalfCellImage)._image


def synthetic_run(run, state: str = "finished", epochs: int = 6, error: str | None = None):
    """A run directory written by hand with fixed numbers (what a finished 6-epoch run leaves: run.json,
    metrics.jsonl, steps.jsonl, status.json, probes/ over 4 shipped MNIST images), so the training screen's
    snapshots do not depend on training's floating point on this CPU or on timings."""
    import json
    import socket

    from vitscope.data.datasets import get_dataset
    from vitscope.train.probes import PROBE_DIR, epoch_file

    from conftest import MNIST_DIR

    run.mkdir(parents=True)
    steps_per_epoch, rng = 25, np.random.default_rng(7)
    (run / "run.json").write_text(json.dumps({"model": "vit-4x4", "dataset": "mnist", "epochs": epochs,
                                              "batch_size": 8, "lr": 0.002}))
    with open(run / "steps.jsonl", "w") as f:
        for s in range(1, epochs * steps_per_epoch + 1):
            lr = 0.002 * min(1.0, s / steps_per_epoch) * (0.5 + 0.5 * np.cos(np.pi * s / (epochs * steps_per_epoch)))
            loss = 2.3 * np.exp(-s / 60) + 0.4 + 0.15 * rng.random()
            f.write(json.dumps({"step": s, "epoch": round(s / steps_per_epoch, 4), "loss": round(float(loss), 6),
                                "lr": float(lr)}) + "\n")
    with open(run / "metrics.jsonl", "w") as f:
        for e in range(1, epochs + 1):
            acc = 0.3 + 0.6 * (1 - np.exp(-e / 2))
            f.write(json.dumps({"epoch": e, "step": e * steps_per_epoch, "loss": 2.3 * np.exp(-e / 2.4) + 0.45,
                                "train_accuracy": acc - 0.03, "test_loss": 2.3 * np.exp(-e / 2.6) + 0.5,
                                "accuracy": acc if e != 5 else acc + 0.05, "lr": 0.002 * (1 - e / (epochs + 1)),
                                "images_per_s": 950.0 + 10 * e, "time": 0.21}) + "\n")
    (run / "status.json").write_text(json.dumps({
        "state": state, "pid": 1, "host": socket.gethostname(), "epoch": epochs if state == "finished" else 3,
        "epochs": epochs, "batch": 0 if state == "finished" else 12, "steps_per_epoch": steps_per_epoch,
        "step": epochs * steps_per_epoch, "loss": 0.61, "lr": 2e-5, "best_accuracy": 0.88, "error": error,
        "world_size": 1, "updated": 0}))
    ds = get_dataset("mnist", "test", str(MNIST_DIR), split_train=200)
    pos = np.array([0, 2, 8, 15])
    (run / PROBE_DIR).mkdir()
    np.savez(run / PROBE_DIR / "probes.npz", index=pos + 200, label=ds.labels.numpy()[pos],
             images=np.stack([np.repeat(ds.image(int(p))[..., None], 3, -1) for p in pos]),
             classes=np.array(ds.classes), grid=np.array([4, 4]), dataset=np.array("mnist"), split=np.array("test"))
    for e in range(epochs + 1):
        sharp = 1 + 2 * e  # attention concentrates epoch by epoch
        logits = rng.normal(size=(4, 4, 4, 16)) * sharp / 4
        attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        probs = rng.dirichlet(np.ones(10) * (3.0 / sharp), size=4)
        np.savez(epoch_file(run, e), attn=attn.astype(np.float16), rollout=attn.mean((1, 2)).astype(np.float32),
                 probs=probs.astype(np.float16), epoch=np.int64(e), step=np.int64(e * steps_per_epoch))
    return run
