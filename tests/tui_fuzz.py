"""A seeded random-key fuzzer for the app's screens, driven with Textual's Pilot.

Each step sends one key drawn from what the active screen answers to (its bindings and the app's) plus
letters, digits, arrows, PgUp/PgDn, Home/End, Enter, Esc, Tab, Backspace and ctrl+p; or 2-4 such keys in one
burst (as a terminal delivers them when the app is busy); or resizes the terminal (tiny sizes included); or
waits a little for workers. While the command palette is open the keys are the palette's own (paging,
typing, Enter, Esc). Quitting keys are left out: a quit ends the app, it is not a crash (an app that leaves
on its own, e.g. through the palette's quit command, must leave cleanly, and the next app takes the rest
of the keys). Used by tests/test_tui_fuzz.py (a few hundred keys per screen) and benchmarks/fuzz_tui.py
(thousands, and ViT-B).

A run fails with :class:`FuzzCrash` (the seed, the step and the last keys) as soon as the app has raised
or its first screen has been popped (which leaves a blank app).
"""
from __future__ import annotations

import dataclasses
import random
import string

from textual import events

SIZES = [(160, 48), (120, 40), (100, 30), (80, 24), (60, 20), (40, 12), (20, 8)]
COMMON = [*string.ascii_lowercase, *string.ascii_uppercase, *string.digits,
          "up", "down", "left", "right", "pageup", "pagedown", "home", "end", "enter", "escape", "tab",
          "shift+tab", "backspace", "space", "ctrl+p"]
PALETTE = [*"abcdefghijklmnoprstuvwxyz", "pageup", "pagedown", "home", "end", "up", "down", "backspace", "enter",
           "escape", "escape", "pageup", "pagedown", "enter"]
QUIT = ("q", "ctrl+c", "ctrl+q")


class FuzzCrash(AssertionError):
    """The app raised: the message says how to replay it."""


@dataclasses.dataclass
class FuzzStats:
    keys: int = 0
    resizes: int = 0
    palettes: int = 0  # times the command palette was open when a key was pressed
    screens: set[str] = dataclasses.field(default_factory=set)  # screen classes met on top of the stack
    history: list[str] = dataclasses.field(default_factory=list)
    episodes: int = 0  # apps started (one more each time an app quit on its own, e.g. from the palette)


def alphabet(app, palette_weight: int = 1) -> list[str]:
    """The keys worth pressing now: the active screen's and the app's bindings plus the common keys;
    ``palette_weight`` copies of ctrl+p make the palette a more frequent guest."""
    from textual.command import CommandPalette
    from textual.widgets import Input

    if isinstance(app.screen, CommandPalette):
        return PALETTE
    typing = isinstance(app.focused, Input)
    keys = [*COMMON, *["ctrl+p"] * (palette_weight - 1), *app.active_bindings]
    # q quits unless the focused input takes it as a letter or the screen binds it (help closes on q)
    own_q = "q" in app.active_bindings and app.active_bindings["q"].node is not app
    return [k for k in keys if k not in QUIT or (k == "q" and (typing or own_q))]


async def burst(pilot, *keys: str) -> None:
    """Keys queued at once, as a terminal delivers a paste or a fast typist: none is handled before the
    next arrives (Pilot's press waits for each, and for the process to go idle, ~60 ms a key). Then one
    pass of the message queues and a paint, so a crash while drawing counts too."""
    driver = pilot.app._driver
    for key in keys:
        ev = events.Key(key, key_character(key))
        ev.set_sender(pilot.app)
        driver.send_message(ev)
    await pilot.pause(0)


def key_character(key: str) -> str | None:
    """The character a key types ("question_mark" -> "?", "pageup" -> None), as Pilot's press works it out."""
    import unicodedata

    from textual.keys import REPLACED_KEYS, _get_unicode_name_from_key

    try:
        return unicodedata.lookup(_get_unicode_name_from_key(REPLACED_KEYS.get(key, key)))
    except KeyError:
        return key if len(key) == 1 else None


def left(app) -> bool:
    return app._exit or app.return_code is not None


async def fuzz(pilot, seed: int, keys: int, resize_p: float = 0.03, pause_p: float = 0.03, burst_p: float = 0.05,
               palette_weight: int = 1, sizes: list[tuple[int, int]] = SIZES,
               stats: FuzzStats | None = None) -> FuzzStats:
    """Press ``keys`` random keys (seeded); stops early only if the app leaves on its own (then its return
    code must be 0). Raises FuzzCrash as soon as the app has raised."""
    from textual.command import CommandPalette

    app = pilot.app
    rng = random.Random(seed)
    st = stats or FuzzStats()
    base = app.screen_stack[:2]  # the default screen and the first vitscope screen: nothing may pop them
    step = 0
    while st.keys < keys:
        step += 1
        if left(app):
            break
        st.screens.add(type(app.screen).__name__)
        r = rng.random()
        if r < resize_p:
            w, h = rng.choice(sizes)
            st.history.append(f"resize {w}x{h}")
            await pilot.resize_terminal(w, h)
            st.resizes += 1
        elif r < resize_p + pause_p:  # let workers finish now and then, so their results meet keys too
            st.history.append("pause")
            await pilot.pause(rng.choice((0.05, 0.2, 0.5)))
        elif r < resize_p + pause_p + burst_p:  # keys that arrive together (Enter, Esc twice, ...)
            abc = alphabet(app, palette_weight)
            # no q: the screen under a closing modal would take it as quit
            keys_now = [rng.choice(["enter", "escape", *(k for k in abc if k != "q")]) for _ in range(rng.randint(2, 4))]
            st.history.append("burst " + " ".join(keys_now))
            await burst(pilot, *keys_now)
            st.keys += len(keys_now)
        else:
            if isinstance(app.screen, CommandPalette):
                st.palettes += 1
            key = rng.choice(alphabet(app, palette_weight))
            st.history.append(key)
            await burst(pilot, key)
            st.keys += 1
        if app._exception is not None:
            raise FuzzCrash(f"seed {seed}, step {step}: {type(app._exception).__name__}: {app._exception}; "
                            f"last keys: {st.history[-25:]}") from app._exception
        if not left(app) and app.screen_stack[:2] != base:
            raise FuzzCrash(f"seed {seed}, step {step}: the first screen was popped (stack "
                            f"{[type(s).__name__ for s in app.screen_stack]}); last keys: {st.history[-25:]}")
    if left(app) and app.return_code not in (0, None):
        raise FuzzCrash(f"seed {seed}: the app left with return code {app.return_code}; last keys: "
                        f"{st.history[-25:]}")
    return st


async def fuzz_app(make_app, seed: int, keys: int, size: tuple[int, int] = (120, 40), setup=None, teardown=None,
                   stats: FuzzStats | None = None, **kw) -> FuzzStats:
    """Fuzz fresh apps from ``make_app()`` until ``keys`` keys are sent: an app that leaves on its own (a
    palette command can quit) must leave cleanly, and the next one takes the rest of the keys. ``setup``
    (an async function of the pilot) runs first in each app, e.g. to wait until the screen is ready;
    ``teardown`` after the keys, in an app still running (to check its state)."""
    st = stats or FuzzStats()  # the caller's, to count the keys sent before a crash
    episode = 0
    while st.keys < keys:
        app = make_app()
        crash: FuzzCrash | None = None
        try:
            async with app.run_test(size=size) as pilot:
                if setup is not None:
                    await setup(pilot)
                try:
                    await fuzz(pilot, seed * 1000 + episode, keys, stats=st, **kw)
                    if teardown is not None and not left(app):
                        await teardown(pilot)
                except FuzzCrash as e:
                    crash = e
                    raise
        except Exception as e:  # Pilot re-raises the app's exception on the way out: say where it came from
            if crash is not None:
                raise crash from None
            import traceback

            where = traceback.extract_tb(e.__traceback__)[-1]
            raise FuzzCrash(f"seed {seed}: {type(e).__name__}: {e} (at {where.filename}:{where.lineno}); last keys: "
                            f"{st.history[-25:]}") from e
        if app.return_code not in (0, None):
            raise FuzzCrash(f"seed {seed}: the app left with return code {app.return_code}")
        episode += 1
    st.episodes = episode
    return st
