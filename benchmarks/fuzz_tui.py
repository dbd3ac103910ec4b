"""The long fuzz of the TUI: thousands of random keys per screen, several seeds, and ViT-B.

The same fuzzer as tests/test_tui_fuzz.py (tests/tui_fuzz.py: each screen's bindings, letters, digits,
arrows, paging keys, Enter, Esc, Tab, ctrl+p, bursts of keys, resizes down to 20x8), with more keys: the
inspector on the 4x4 sample and on timm:vit_base_patch16_224 (random init, loaded in the app's worker as
`vitscope inspect` does, so keys also arrive while it loads), the command palette on tiny terminals, the
misclassification browser on the MNIST images in tests/data, the training screen on a hand-written run,
and the split view. Reports, per screen and seed, the keys sent and whether (and how) the app crashed,
then crashes found / keys sent.

Run: python benchmarks/fuzz_tui.py [--keys N] [--seeds S] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fuzzer and the hand-written run live with the tests

SAMPLE = ROOT / "samples" / "fashion-vit-p7.safetensors"
BOOT = ROOT / "samples" / "fashion_0000_ankle-boot.png"
P4 = ROOT / "samples" / "fashion-vit-p4.safetensors"
DIGITS = ROOT / "samples" / "digits-vit.safetensors"
PHOTO = ROOT / "samples" / "photo_rgb.png"
TINY = [(60, 20), (40, 12), (20, 8), (40, 4)]


def refuse(*args, **kwargs):
    raise OSError("no training runs under the fuzzer")


def screens(tmp: Path) -> dict:
    """name -> (make_app, setup, fuzz options)."""
    import numpy as np
    from PIL import Image

    import vitscope
    from vitscope.train.probes import PROBE_DIR, image_file
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.browser import BrowserOptions
    from vitscope.tui.screens.compare import CompareScreen
    from vitscope.tui.screens.training import TrainingScreen
    from vitscope.views import Session

    from conftest import MNIST_DIR
    from tui_helpers import make_app, settle, synthetic_run, wait_for

    session = Session.open(vitscope.load(SAMPLE), BOOT)
    save = str(tmp)
    run = synthetic_run(tmp / "run")
    shutil.copy(DIGITS, run / "best.safetensors")
    for k, img in enumerate(np.load(run / PROBE_DIR / "probes.npz")["images"]):
        Image.fromarray(img).save(image_file(run, k))

    async def compare_ready(pilot):
        await wait_for(pilot, lambda: pilot.app.screen_stack[1].ready, timeout=120)

    def browser():
        b = BrowserOptions(model=str(DIGITS), dataset="mnist", data_dir=str(MNIST_DIR), save_dir=save)
        return InspectorApp(Options(model=str(DIGITS), image="", browse=b, save_dir=save))

    return {
        "inspector": (lambda: make_app(session, save_dir=save), settle, {"size": (100, 30)}),
        "palette-tiny": (lambda: make_app(session, save_dir=save), settle,
                         {"size": (40, 12), "palette_weight": 20, "resize_p": 0.1, "sizes": TINY}),
        "browser": (browser, None, {"size": (100, 30)}),
        "training": (lambda: InspectorApp(Options(model="", image="", save_dir=save), start=TrainingScreen(run, None)),
                     None, {"size": (100, 30)}),
        "compare": (lambda: InspectorApp(Options(model="", image="", save_dir=save),
                                         start=CompareScreen(str(SAMPLE), str(P4), str(BOOT))),
                    compare_ready, {"size": (100, 30)}),
        "inspector-vitb": (lambda: InspectorApp(Options(model="timm:vit_base_patch16_224", image=str(PHOTO),
                                                        save_dir=save)), None, {"size": (160, 48)}),
    }


async def fuzz_one(make_app, setup, opts: dict, seed: int, keys: int) -> tuple:
    from tui_fuzz import FuzzCrash, FuzzStats, fuzz_app

    t0 = time.perf_counter()
    st, crash = FuzzStats(), None
    try:
        await fuzz_app(make_app, seed=seed, keys=keys, setup=setup, stats=st, **opts)
    except FuzzCrash as e:
        crash = str(e)
    return st, crash, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1000, help="keys per screen and seed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="screens to fuzz (default: all)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vitscope-fuzz-"))
    os.environ["VITSCOPE_CACHE"] = str(tmp / "cache")  # sweeps cached here, not in the user's cache
    os.chdir(tmp)
    import vitscope.train.monitor as monitor
    import vitscope.tui.screens.training as training

    monitor.start_run = training.start_run = refuse  # T's form and r on a run start no child process

    table = screens(tmp)
    total_keys = crashes = 0
    print(f"{'screen':<16}{'seed':>5}{'keys':>7}{'resizes':>9}{'palette':>9}{'apps':>6}{'s':>8}{'ms/key':>8}  result")
    for i, (name, (make_app, setup, opts)) in enumerate(table.items()):
        if args.only and name not in args.only:
            continue
        for seed in range(args.seeds):
            st, crash, secs = asyncio.run(fuzz_one(make_app, setup, opts, 1000 * (i + 1) + seed, args.keys))
            total_keys += st.keys
            crashes += crash is not None
            per_key = f"{1000 * secs / st.keys:.0f}" if st.keys else "-"
            print(f"{name:<16}{seed:>5}{st.keys:>7}{st.resizes:>9}{st.palettes:>9}{st.episodes:>6}{secs:>8.1f}"
                  f"{per_key:>8}  {'CRASH: ' + crash if crash else 'ok: ' + ', '.join(sorted(st.screens))}",
                  flush=True)
    print(f"crashes found: {crashes}; keys sent: {total_keys}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
