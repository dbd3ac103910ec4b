"""Random keys on every screen (tests/tui_fuzz.py, seeded), and each crash they found as its own small test.

Every screen takes a few hundred keys drawn from its bindings, letters, digits, arrows, paging keys, Enter,
Esc, Tab and ctrl+p, some arriving together in one burst, with resizes down to 20x8; the app must not
raise, must not lose its first screen, and may leave only cleanly (a palette command can quit). The
longer run (thousands of keys per screen, several seeds, ViT-B) is benchmarks/fuzz_tui.py.
"""
from __future__ import annotations

import asyncio
import functools
import shutil

import numpy as np
import pytest
from PIL import Image

import vitscope
from vitscope.views import Session

from conftest import MNIST_DIR, ROOT
from tui_fuzz import burst, fuzz_app
from tui_helpers import IMAGE, MODEL, make_app, settle, synthetic_run, wait_for

S = ROOT / "samples"
DIGITS, P4 = S / "digits-vit.safetensors", S / "fashion-vit-p4.safetensors"
TINY = [(60, 20), (40, 12), (20, 8), (40, 4)]


def sync(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return run


@pytest.fixture(scope="module")
def session():
    return Session.open(vitscope.load(MODEL), IMAGE)


@pytest.fixture(autouse=True)
def no_training_runs(monkeypatch, tmp_path):
    """Random keys reach T's form (ctrl+s starts a run) and r on a run: no child process may start here.
    Pictures and lists the keys save land in tmp_path."""
    import vitscope.train.monitor as monitor
    import vitscope.tui.screens.training as training

    def refuse(*args, **kwargs):
        raise OSError("no training runs under the fuzzer")

    monkeypatch.setattr(monitor, "start_run", refuse)
    monkeypatch.setattr(training, "start_run", refuse)
    monkeypatch.chdir(tmp_path)


def stack(app) -> list[str]:
    return [type(s).__name__ for s in app.screen_stack]


# -- the crashes, one test each -------------------------------------------------------------------------
@sync
async def test_palette_page_keys_on_a_terminal_too_small_for_its_list(session):
    """PgUp/PgDn in the palette when its list gets no rows: KeyError in OptionList._move_page (Textual #5794)."""
    from textual.command import CommandPalette

    app = make_app(session)
    async with app.run_test(size=(40, 4)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)  # the commands are gathered
        assert isinstance(app.screen, CommandPalette)
        await pilot.press("down", "pageup", "pagedown", "end", "pagedown", "pageup")
        await pilot.resize_terminal(100, 30)
        await pilot.press("pagedown")
        assert isinstance(app.screen, CommandPalette)
        await pilot.press("escape")
        assert stack(app) == ["Screen", "InspectorScreen"]


@sync
async def test_enters_in_one_burst_in_the_palette_run_one_command(session):
    """ctrl+p, a query, then Enters that arrive together: the first runs the command and closes the palette;
    the others used to dismiss the inspector under it and then raise ScreenStackError."""
    app = make_app(session)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p", *"every key")  # the help command first
        await pilot.pause(0.3)
        await burst(pilot, "enter", "enter", "enter")
        await pilot.pause(0.3)
        assert stack(app) == ["Screen", "InspectorScreen", "HelpScreen"]  # help opened once


@sync
async def test_two_enters_after_C_choose_once_from_the_list(session):
    """C, Tab to the list, two Enters together: one class chosen, the inspector stays."""
    app = make_app(session)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("C", *"bag", "tab")
        await burst(pilot, "enter", "enter")
        await pilot.pause(0.2)
        assert stack(app) == ["Screen", "InspectorScreen"]
        assert app.screen.state.target == session.spec.classes.index("Bag")
        await burst(pilot, "C", "enter", "enter")  # from the query field too
        await pilot.pause(0.2)
        assert stack(app) == ["Screen", "InspectorScreen"]


@sync
async def test_two_enters_after_O_open_the_image_once(session):
    """O, a path, two Enters together: the image opens once and the inspector stays (the prompt's second
    answer must not dismiss the inspector)."""
    from vitscope.tui.modals import OpenImage

    other = S / "fashion_0021_sandal_pred-sneaker.png"
    app = make_app(session)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("O")
        assert isinstance(app.screen, OpenImage)
        app.screen.query_one("Input").value = str(other)
        await burst(pilot, "enter", "enter")
        await settle(pilot)
        assert stack(app) == ["Screen", "InspectorScreen"]
        assert app.screen.session.image_path == str(other)
        await burst(pilot, "O", "enter", "enter", "escape")  # a folder: one message, no second dismiss
        await settle(pilot)
        assert stack(app) == ["Screen", "InspectorScreen"]


# -- fuzzing each screen ----------------------------------------------------------------------------------
@sync
async def test_fuzz_inspector(session, tmp_path):
    async def check_state(pilot):  # after the keys: the view is one the model has
        await settle(pilot)
        scr = pilot.app.screen_stack[1]
        L, H = scr.session.spec.num_layers, scr.session.spec.num_heads
        assert 0 <= scr.state.layer < L and scr.state.head in [*range(H), "mean"]

    st = await fuzz_app(lambda: make_app(session, save_dir=str(tmp_path)), seed=1, keys=250, size=(100, 30),
                        setup=settle, teardown=check_state)
    assert st.keys >= 250 and len(st.screens) >= 3 and st.palettes > 0  # modals and the palette met keys too


@sync
async def test_fuzz_command_palette_on_tiny_terminals(session, tmp_path):
    """ctrl+p twenty times as likely, a resize every tenth step, to sizes that leave the palette no room."""
    st = await fuzz_app(lambda: make_app(session, save_dir=str(tmp_path)), seed=2, size=(40, 12),
                        setup=settle, palette_weight=20, resize_p=0.1, sizes=TINY, keys=150)
    assert st.palettes >= 40 and st.resizes >= 8


@sync
async def test_fuzz_browser(tmp_path, monkeypatch):
    """The misclassification browser on the 300 MNIST images in tests/data, while it sweeps and after;
    Enter opens the inspector over it, b returns."""
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.browser import BrowserOptions

    def app():
        b = BrowserOptions(model=str(DIGITS), dataset="mnist", data_dir=str(MNIST_DIR), save_dir=str(tmp_path))
        return InspectorApp(Options(model=str(DIGITS), image="", browse=b, save_dir=str(tmp_path)))

    st = await fuzz_app(app, seed=3, keys=200, size=(100, 30))
    assert "BrowserScreen" in st.screens


@sync
async def test_fuzz_training_screen(tmp_path):
    """A finished run written by hand, with a checkpoint and probe images: i opens the inspector over it."""
    from vitscope.train.probes import PROBE_DIR, image_file
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.training import TrainingScreen

    run = synthetic_run(tmp_path / "run")
    shutil.copy(DIGITS, run / "best.safetensors")
    probes = np.load(run / PROBE_DIR / "probes.npz")
    for k, img in enumerate(probes["images"]):
        Image.fromarray(img).save(image_file(run, k))

    def app():
        return InspectorApp(Options(model="", image="", save_dir=str(tmp_path)), start=TrainingScreen(run, None))

    st = await fuzz_app(app, seed=4, keys=200, size=(100, 30))
    assert "TrainingScreen" in st.screens


@sync
async def test_fuzz_compare_split_view(tmp_path):
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.compare import CompareScreen

    def app():
        return InspectorApp(Options(model="", image="", save_dir=str(tmp_path)),
                            start=CompareScreen(str(MODEL), str(P4), str(IMAGE)))

    async def ready(pilot):
        await wait_for(pilot, lambda: pilot.app.screen_stack[1].ready)

    st = await fuzz_app(app, seed=5, keys=200, size=(100, 30), setup=ready)
    assert "CompareScreen" in st.screens


# -- a crash exits non-zero -------------------------------------------------------------------------------
CRASH_AT_MOUNT = """
import runpy, sys
from vitscope.tui.screens.{module} import {screen} as S
mount = S.on_mount
def on_mount(self):  # the screen opens, then a handler raises, as a bug would
    mount(self)
    self.set_timer(0.2, lambda: 1 / 0)
S.on_mount = on_mount
sys.argv = ["vitscope", *sys.argv[1:]]
runpy.run_module("vitscope", run_name="__main__")
"""


def run_crashing(module: str, screen: str, *args: str):
    """The real entry point (python -m vitscope) in a subprocess whose screen raises once it is open."""
    import os
    import subprocess
    import sys

    code = CRASH_AT_MOUNT.format(module=module, screen=screen)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.mark.slow
def test_cli_inspect_crash_exits_1_with_one_line(tmp_path):
    r = run_crashing("inspector", "InspectorScreen", "inspect", str(MODEL), str(IMAGE), "--save-dir", str(tmp_path))
    assert r.returncode == 1, r.stderr[-2000:]
    # stderr also carries the screen's escape codes (no terminal here): the message is its last line
    assert r.stderr.endswith("vitscope: internal error: ZeroDivisionError: division by zero (rerun with --debug "
                             "for the traceback)\n")
    assert "Traceback" not in r.stderr and "1 / 0" not in r.stderr
    r = run_crashing("inspector", "InspectorScreen", "inspect", str(MODEL), str(IMAGE), "--debug")
    assert r.returncode == 1 and "Traceback" in r.stderr and "ZeroDivisionError" in r.stderr


@pytest.mark.slow
def test_cli_watch_crash_exits_1(tmp_path):
    run = synthetic_run(tmp_path / "run")
    r = run_crashing("training", "TrainingScreen", "watch", str(run))
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.endswith("vitscope: internal error: ZeroDivisionError: division by zero (rerun with --debug "
                             "for the traceback)\n") and "Traceback" not in r.stderr
