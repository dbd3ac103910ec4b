"""The training screen: a run's curves, speed, epochs and attention forming, live, from its directory.

The run trains in another process (started here with ``vitscope.train.monitor.start_run``, or anywhere
else: headless, under torchrun); this screen only reads the run directory through a
:class:`~vitscope.train.monitor.RunMonitor`, polled four times a second in a thread worker that posts what
changed, and talks to the run through ``control.json`` (pause, resume, stop). So the UI stays responsive
whatever the run does, a crash of the run is reported (with its last lines) instead of taking the UI down,
and leaving the UI can leave the run training. No torch is imported here.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, ProgressBar, Static

from ...train.monitor import LIVE_STATES, RunMonitor, decimate, smooth, start_run
from ..messages import RunPolled
from ..modals import Confirm
from ..widgets import HalfCellImage, TextLine
from ..widgets.curves import Curves
from ..widgets.rowtable import RowTable
from .base import VitscopeScreen

POLL_EVERY = 1.0  # seconds between reads of the run directory (a death is seen within this, plus a poll)
REDRAW_EVERY = 5.0  # the step curves are rebuilt at most this often while steps arrive (TensorBoard: 30 s)
# Every millisecond the screen computes is taken from training on the same cores, and with PyTorch's threads on
# every core it costs training about twice that (a thread held up stalls the others at the next sync): a chart
# costs ~15 ms, a relayout ~35 ms (hence TextLines, a RowTable and fixed heights below), a poll ~2 ms.
MAX_POINTS = 300  # per series drawn (decimated): a chart is at most ~150 cells wide, braille doubles that
THUMB = 56  # probe images are shown at most this many pixels a side (the tiles are a few cells wide)
WIDE = 120  # narrower than this, the probes and the curves share the body in turn (v switches)

STATE_WORDS = {"starting": "STARTING", "running": "RUNNING", "paused": "PAUSED", "evaluating": "EVALUATING",
               "finished": "FINISHED", "stopped": "STOPPED", "error": "ERROR", "died": "DIED", "lost": "LOST",
               "unknown": "NOT STARTED"}


def _duration(s: float | None) -> str:
    if s is None or not np.isfinite(s):
        return "?"
    if s < 10:
        return f"{s:.1f}s"
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class TrainingScreen(VitscopeScreen):
    BINDINGS = [
        Binding("space", "pause", "pause/resume", tooltip="pause the run, or resume a paused one (between steps)"),
        Binding("s", "stop", "stop", tooltip="stop the run: it saves state.pt and last.safetensors (asks first)"),
        Binding("r", "resume_run", "resume run", tooltip="continue a stopped or dead run from its last saved state "
                "(vitscope train --resume), in the background"),
        Binding("i", "inspect", "inspect", tooltip="open the best checkpoint so far (else the last) in the "
                "inspector, on the selected probe image"),
        Binding("c", "compare", "parent", show=False, tooltip="the parent checkpoint of a finetune (for the "
                "before/after comparison)"),
        Binding("left", "scrub(-1)", "epoch -", show=False, tooltip="probes: the previous recorded epoch"),
        Binding("right", "scrub(1)", "epoch +", show=False, tooltip="probes: the next recorded epoch"),
        Binding("home", "scrub_edge(0)", "first epoch", show=False, tooltip="probes: epoch 0 (before training)"),
        Binding("end", "scrub_edge(1)", "latest", show=False, tooltip="probes: the latest epoch, and follow it"),
        Binding("h", "head(1)", "head", show=False, tooltip="probes: next head (mean over heads, then each head)"),
        Binding("H", "head(-1)", "head -", show=False, tooltip="probes: previous head"),
        Binding("j,down", "probe(1)", "probe", show=False, tooltip="select the next probe image"),
        Binding("k,up", "probe(-1)", "probe -", show=False, tooltip="select the previous probe image"),
        Binding("v", "switch_view", "curves/probes", show=False, tooltip="narrow terminals: curves or probes"),
        Binding("a", "smoothing", "smoothing", show=False, tooltip="smooth the step loss: off, 0.6, 0.9, 0.99 "
                "(TensorBoard's debiased moving average; the epoch points stay exact)"),
        Binding("escape", "back", "back", show=False, tooltip="back to the screen that opened this one"),
        Binding("question_mark", "help", "help", tooltip="every key"),
    ]

    def __init__(self, run_dir: str | Path, process: Any = None) -> None:
        super().__init__()
        self.run_dir = Path(run_dir).expanduser()
        self.monitor = RunMonitor(self.run_dir, process)
        self.steps = _Steps()
        self.epoch_rows: list[dict[str, Any]] = []
        self.status: dict[str, Any] = {}
        self.verdict, self.reason = "unknown", ""
        self.probes: Any = None  # vitscope.train.probes.Probes, images shrunk to THUMB
        self.probe_epochs: list[int] = []
        self.probe_epoch: int | None = None  # None: follow the latest
        self.head: int | None = None  # None: mean over heads
        self.sel = 0
        self.smoothing = 0.0  # of the step loss curve (a key cycles it)
        self._mosaics: dict[tuple[int, int | None, int | None], np.ndarray] = {}
        self._labels: list[str] = []
        self._arrays: dict[int, dict[str, np.ndarray]] = {}
        self._polling = False
        self._dirty_curves = False
        self._drawn_at = 0.0
        self._narrow_view = "curves"
        self.stop_sent = False
        self.polls = 0
        self._log_text = ""
        self._acc_rows = -1  # the accuracy chart changes only with a new epoch row
        self._lr_at = 0.0
        self._note_until = 0.0  # a note from a key stays this long before the run's state replaces it

    # -- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        # TextLines, not Statics: updated twice a second, a Static would relayout the whole screen each time
        yield TextLine(f"vitscope training  ·  {self.run_dir}  ·  reading…", id="topbar")
        with Horizontal(id="progress-row"):
            yield TextLine("", id="run-progress")
            yield ProgressBar(id="epoch-bar", show_eta=False)
        with Horizontal(id="train-body"):
            with Vertical(id="curves-col"):
                yield Curves("loss", id="loss-plot")
                yield Curves("accuracy", id="acc-plot")
                yield Curves("learning rate", id="lr-plot")
            with Vertical(id="probes-col"):
                yield TextLine("", id="probes-title")
                yield TextLine("", id="probes-cols")
                yield HalfCellImage(id="probes")
                yield Static("", id="probe-captions")
        yield RowTable(id="epochs")
        yield Static("", id="run-log")
        yield TextLine("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#probes", HalfCellImage).on_built = self._place_labels
        self.query_one("#run-log").display = False
        self._layout()
        cfg = self.monitor.config
        if cfg:
            self._set_topbar()
        self.action_poll()
        self.set_interval(POLL_EVERY, self.action_poll)

    def _layout(self) -> None:
        narrow = self.size.width < WIDE
        self.query_one("#curves-col").display = not narrow or self._narrow_view == "curves"
        probes = self.query_one("#probes-col")
        probes.display = not narrow or self._narrow_view == "probes"
        probes.set_class(narrow, "alone")  # the whole width when it is shown alone
        self.query_one("#lr-plot").display = self.size.height >= 36
        self.query_one("#epoch-bar").styles.width = 48 if self.size.width >= WIDE else 20
        self.query_one("#epochs").styles.height = 7 if self.size.height >= 36 else 4

    def on_resize(self) -> None:
        self._layout()
        self.call_after_refresh(self._show_probes)  # the column names follow the picture's new size

    # -- polling ---------------------------------------------------------------------------------
    def action_poll(self) -> None:
        if not self._polling:
            self._polling = True
            self.poll_run()

    @work(thread=True, group="poll", exit_on_error=False)
    def poll_run(self) -> None:
        try:
            update = self.monitor.poll()
            probes = None
            if update.new_probes and update.probe_epochs and self.probes is None:
                from ...train.probes import load_probes

                probes = load_probes(self.run_dir)
                if probes is not None:
                    probes = dataclasses.replace(probes, images=_shrink(probes.images))
            log = self.monitor.log_tail(8) if update.verdict in ("died", "error", "lost", "starting") else []
        finally:
            self._polling = False
        self.post_message(RunPolled(update, probes, log))

    def on_run_polled(self, msg: RunPolled) -> None:
        up = msg.update
        self.polls += 1
        if up.reset:
            self.steps.clear()
            self.epoch_rows.clear()
            self._show_epochs()
            self._acc_rows = -1
            self._arrays.clear()
            self._mosaics.clear()
        self.steps.extend(up.steps)
        for row in up.epochs:
            self._add_epoch(row)
        if up.steps or up.epochs or up.reset:
            self._dirty_curves = True
        if msg.probes is not None:
            self.probes = msg.probes
        if up.new_probes:
            self.probe_epochs = up.probe_epochs
            self._show_probes()
            self.call_after_refresh(self._show_probes)  # once laid out, the column names follow the picture
        self.status, self.verdict, self.reason = up.status, up.verdict, up.reason
        self._set_topbar()
        self._set_progress()
        self._set_log(msg.log)
        now = time.monotonic()
        if self._dirty_curves and (now - self._drawn_at >= REDRAW_EVERY or not self.monitor.live):
            self.draw_curves()

    # -- drawing ---------------------------------------------------------------------------------
    def _add_epoch(self, row: dict[str, Any]) -> None:
        self.epoch_rows.append(row)
        self._show_epochs()

    def _show_epochs(self) -> None:
        rows = self.epoch_rows
        accs = [r.get("accuracy") if isinstance(r.get("accuracy"), (int, float)) else -1.0 for r in rows]
        best = int(np.argmax(accs)) if rows else -1

        def pct(v: Any) -> str:
            return f"{v:.2%}" if isinstance(v, (int, float)) else "-"

        def num(v: Any, f: str) -> str:
            return format(v, f) if isinstance(v, (int, float)) else "-"

        def cells(i: int) -> list[str]:
            r = rows[i]
            return [str(r.get("epoch", "?")), num(r.get("loss"), ".4f"), num(r.get("test_loss"), ".4f"),
                    pct(r.get("train_accuracy")), pct(r.get("accuracy")), num(r.get("lr"), ".2e"),
                    num(r.get("images_per_s"), ".0f"), _duration(r.get("time")), "best" if i == best else ""]

        # a RowTable, not a DataTable: a new row repaints the table only, where DataTable relayouts the screen
        self.query_one("#epochs", RowTable).set_source(
            len(rows), ["epoch", "train loss", "test loss", "train acc", "test acc", "lr", "img/s", "time", ""],
            [5, 10, 9, 9, 8, 8, 6, 6, 4], [True, True, True, True, True, True, True, True, False], cells,
            lambda i: False, cursor=len(rows) - 1)

    def draw_curves(self) -> None:
        self._dirty_curves = False
        self._drawn_at = time.monotonic()
        ex = [float(r.get("epoch", 0)) for r in self.epoch_rows]
        # x spans the data (as TensorBoard's does), not the planned run: 3 epochs of 30 fill the width
        last = max([*ex, float(self.steps["x"][-1]) if self.steps.n else 0.0, 1.0])
        xlim = (0.0, last)
        sx, sl = decimate(smooth(self.steps["loss"], self.smoothing), self.steps["x"], MAX_POINTS)

        def col(key: str) -> list[float]:
            return [float(r.get(key, np.nan)) for r in self.epoch_rows]

        self.query_one("#loss-plot", Curves).set_series(
            [("train steps", sx, sl, "cyan", "braille"), ("train epoch", ex, col("loss"), "blue", "•"),
             ("test", ex, col("test_loss"), "orange", "×")], xlim=xlim,
            title=f"loss  ·  {len(self.steps['loss']):,} steps" + (f" (drawn as {len(sx)})" if len(sx) <
                                                                   len(self.steps["loss"]) else "")
            + (f", smoothed {self.smoothing}" if self.smoothing else ""))
        new_epoch = self._acc_rows != len(ex)
        if new_epoch:
            self._acc_rows = len(ex)
            self.query_one("#acc-plot", Curves).set_series(
                [("train", ex, col("train_accuracy"), "blue", "•"), ("test", ex, col("accuracy"), "orange", "×")],
                xlim=xlim, title="accuracy by epoch" + (f"  ·  best {max(col('accuracy')):.2%}" if ex else ""))
        lr_plot = self.query_one("#lr-plot", Curves)
        if lr_plot.display and (new_epoch or time.monotonic() - self._lr_at > 10 or not self.monitor.live):
            self._lr_at = time.monotonic()  # the schedule's shape changes slowly: a redraw per epoch or 10 s
            lx, ll = decimate(self.steps["lr"], self.steps["x"], MAX_POINTS)
            lr_plot.set_series([("lr", lx, ll, "green", "braille")], xlim=xlim, title="learning rate (x: epochs)")

    def _set_topbar(self) -> None:
        cfg, st = self.monitor.config, self.status
        word = STATE_WORDS.get(self.verdict, self.verdict.upper())
        parts = [f"training  ·  {word}"]  # the numbers first: at 80 columns the names are what gets cut
        epochs = st.get("epochs") or cfg.get("epochs")
        if st:
            ep = min(int(st.get("epoch", 0)) + (0 if self.verdict in ("finished",) else 1), int(epochs or 1))
            parts.append(f"epoch {ep}/{epochs}")
            if self.monitor.live and st.get("images_per_s"):
                parts.append(f"{st['images_per_s']:.0f} img/s")
            if self.monitor.live and st.get("eta_s") is not None and self.verdict != "paused":
                parts.append(f"ETA {_duration(st['eta_s'])}")
            if st.get("best_accuracy") is not None and st["best_accuracy"] >= 0:
                parts.append(f"best {st['best_accuracy']:.2%}")
            if st.get("world_size", 1) > 1:
                parts.append(f"{st['world_size']} processes")
        if cfg:
            model = cfg.get("model", "?")
            if cfg.get("finetune"):
                model += f" finetuned from {Path(str(cfg['finetune'])).name}"
            parts.append(f"{model} on {cfg.get('dataset', '?')}")
        parts.append(str(self.run_dir))
        self.query_one("#topbar", TextLine).update("  ·  ".join(parts))

    def _set_progress(self) -> None:
        st = self.status
        bar = self.query_one("#epoch-bar", ProgressBar)
        spe = int(st.get("steps_per_epoch") or 0)
        if not spe:
            self.query_one("#run-progress", TextLine).update("waiting for the run to start…")
            return
        batch = int(st.get("batch", 0))
        epochs = int(st.get("epochs") or 1)
        done = int(st.get("step", 0))
        state = self.verdict
        loss = f"  ·  loss {st['loss']:.4f}" if isinstance(st.get("loss"), (int, float)) else ""
        if state == "finished":
            text = f"finished: {done:,} steps in {epochs} epoch{'s' if epochs != 1 else ''}{loss}  "
        else:
            label = {"evaluating": "evaluating on the test split", "paused": "paused"}.get(
                state, f"epoch {int(st.get('epoch', 0)) + 1}")
            text = f"{label}: step {batch}/{spe}  ·  run {done:,}/{spe * epochs:,}{loss}  "
        self.query_one("#run-progress", TextLine).update(text)
        progress = spe if state == "finished" else batch
        if (bar.total, bar.progress) != (spe, progress):
            bar.update(total=spe, progress=progress)

    def _set_log(self, lines: list[str]) -> None:
        box = self.query_one("#run-log", Static)
        show = self.verdict in ("died", "error", "lost")
        if box.display != show:
            box.display = show
        status = self.query_one("#status", TextLine)
        if show:
            from rich.text import Text

            head = {"died": "the run DIED", "error": "the run stopped with an ERROR",
                    "lost": "the run is not responding"}[self.verdict]
            hint = ("  ·  r resumes from its last saved state" + self._saved_position()) if self.verdict != "lost" \
                else ""
            text = Text(f"{head}: {self.reason}{hint}\n", style="bold red")
            if lines:
                text.append("\n".join(f"  {ln}" for ln in lines[-6:]), style="dim")
            elif (self.run_dir / "train.log").is_file():
                text.append("  (train.log is empty)")
            else:
                text.append("  (no train.log: the run was started elsewhere, its output went to that terminal)")
            if text.plain != self._log_text:  # a Static update relayouts: only when it says something new
                self._log_text = text.plain
                box.update(text)
            status.update("")
        elif self.verdict == "stopped":
            status.update(f"stopped: state saved{self._saved_position()}; r resumes it")
        elif self.verdict == "finished":
            status.update("finished: i opens the best checkpoint in the inspector")
        elif self.verdict == "paused":
            status.update("paused between two steps: space resumes")
        elif time.monotonic() > self._note_until:
            status.update("")

    def note(self, text: str, seconds: float = 4.0) -> None:
        self.query_one("#status", TextLine).update(text)
        self._note_until = time.monotonic() + seconds

    def _saved_position(self) -> str:
        """When state.pt was last written (the UI cannot read it without torch; its age says enough)."""
        try:
            mtime = (self.run_dir / "state.pt").stat().st_mtime
        except OSError:
            return " (no state.pt yet)"
        return f" (state.pt of {time.strftime('%H:%M:%S', time.localtime(mtime))}, " \
               f"{_duration(max(0.0, time.time() - mtime))} ago)"

    # -- probes ------------------------------------------------------------------------------------
    def shown_epoch(self) -> int | None:
        if not self.probe_epochs:
            return None
        if self.probe_epoch is None or self.probe_epoch not in self.probe_epochs:
            return self.probe_epochs[-1]
        return self.probe_epoch

    def epoch_arrays(self, epoch: int) -> dict[str, np.ndarray]:
        if epoch not in self._arrays:
            self._arrays[epoch] = self.probes.epoch(epoch)
        return self._arrays[epoch]

    def _show_probes(self) -> None:
        title = self.query_one("#probes-title", TextLine)
        pic = self.query_one("#probes", HalfCellImage)
        epoch = self.shown_epoch()
        if self.probes is None or epoch is None:
            title.update("attention forming: no probes recorded yet" if self.monitor.config.get("model", "").find(
                "cnn") < 0 else "attention forming: a CNN records no attention")
            return
        from ...views.probes import column_labels, mosaic, probe_caption, probe_tiles

        arrays = self.epoch_arrays(epoch)
        n_heads = arrays["attn"].shape[2]
        if self.head is not None and self.head >= n_heads:
            self.head = None
        one = self._one_probe(arrays["attn"].shape[1] + 2)
        key = (epoch, self.head, self.sel if one else None)
        if key not in self._mosaics:
            rows = probe_tiles(self.probes, arrays, self.head)
            self._mosaics[key] = mosaic([rows[self.sel]] if one else rows, gap=2)
        pic.set_image(self._mosaics[key])
        self._labels = column_labels(arrays["attn"].shape[1])
        what = "mean of heads" if self.head is None else f"head {self.head}"
        pos = self.probe_epochs.index(epoch)
        follow = " (latest)" if self.probe_epoch is None else ""
        title.update(f"attention forming · epoch {epoch}{follow} [{pos + 1}/{len(self.probe_epochs)}] · {what}")
        if one:
            title.update(title.text + f" · probe {self.sel} (j/k)")
        lines = [("▶ " if p == self.sel else "  ") + f"{p}. " + probe_caption(self.probes, arrays, p)
                 for p in range(self.probes.n)]  # numbered as the files are: probes/image-K.png, probe-K.png
        captions = self.query_one("#probe-captions", Static)
        fixed = captions.styles.height is not None and captions.styles.height.value == len(lines)
        if not fixed:
            captions.styles.height = len(lines)
        captions.update("\n".join(lines), layout=not fixed)  # a relayout costs more than the rest of a key

    def _one_probe(self, cols: int) -> bool:
        """Too little room for every probe's row at a readable size (under 10 pixels a tile): the selected
        probe's row alone."""
        size = self.query_one("#probes", HalfCellImage).size
        if not size.width or self.probes is None:
            return False
        th, tw = self.probes.images.shape[1:3]
        n = self.probes.n
        scale = min(size.width / (cols * (tw + 2)), 2 * size.height / (n * (th + 2)))
        return scale * th < 10 and n > 1

    def _place_labels(self, box: tuple[int, int, int, int]) -> None:
        """The column names over the picture's tiles, where HalfCellImage drew it."""
        labels = self._labels
        if not labels:
            return
        x0, _, tw, _ = box
        width = self.query_one("#probes-cols", TextLine).size.width or (x0 + tw)
        cols = len(labels)
        room = max(1, tw // cols - 1)  # a space stays between two names
        line = [" "] * max(width, x0 + tw)
        for j, lab in enumerate(labels):
            lab = lab if len(lab) <= room else {"rollout": "roll", "image": "img"}.get(lab, lab)[:room]
            start = max(0, x0 + int((j + 0.5) * tw / cols) - len(lab) // 2)
            for k, ch in enumerate(lab):
                if start + k < len(line):
                    line[start + k] = ch
        self.query_one("#probes-cols", TextLine).update("".join(line).rstrip())

    def action_scrub(self, d: int) -> None:
        if not self.probe_epochs:
            self.notify("no probe epochs recorded yet", timeout=2)
            return
        pos = self.probe_epochs.index(self.shown_epoch()) + d
        pos = max(0, min(len(self.probe_epochs) - 1, pos))
        self.probe_epoch = None if pos == len(self.probe_epochs) - 1 and d > 0 else self.probe_epochs[pos]
        self._show_probes()

    def action_scrub_edge(self, end: int) -> None:
        if self.probe_epochs:
            self.probe_epoch = None if end else self.probe_epochs[0]
            self._show_probes()

    def action_head(self, d: int) -> None:
        epoch = self.shown_epoch()
        if self.probes is None or epoch is None:
            return
        n = self.epoch_arrays(epoch)["attn"].shape[2]
        order = [None, *range(n)]
        self.head = order[(order.index(self.head) + d) % len(order)]
        self._show_probes()

    def action_probe(self, d: int) -> None:
        if self.probes is not None:
            self.sel = (self.sel + d) % self.probes.n
            self._show_probes()

    def action_smoothing(self) -> None:
        steps = (0.0, 0.6, 0.9, 0.99)
        self.smoothing = steps[(steps.index(self.smoothing) + 1) % len(steps)]
        self.draw_curves()
        self.note(f"step loss smoothing {self.smoothing or 'off'}")

    def action_switch_view(self) -> None:
        self._narrow_view = "probes" if self._narrow_view == "curves" else "curves"
        if self.size.width >= WIDE:
            self.notify("both are shown at this width; v switches on terminals narrower than "
                        f"{WIDE} columns", timeout=3)
        self._layout()
        self.call_after_refresh(self._show_probes)  # the column names follow the picture's new size

    # -- run control ---------------------------------------------------------------------------------
    def action_pause(self) -> None:
        if self.verdict == "paused":
            self.monitor.send("resume")
            self.note("resume sent")
        elif self.monitor.live:
            self.monitor.send("pause")
            self.note("pause sent: the run pauses after its current step")
        else:
            self.notify(f"the run is not running ({STATE_WORDS.get(self.verdict, self.verdict)})", timeout=3)

    def action_stop(self) -> None:
        if not self.monitor.live:
            self.notify(f"the run is not running ({STATE_WORDS.get(self.verdict, self.verdict)})", timeout=3)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.send_stop()

        self.app.push_screen(Confirm("Stop the run? It saves state.pt and last.safetensors after its current "
                                     "step; r (or vitscope train --resume) continues it.", "stop", "keep training"),
                             answer)

    def send_stop(self) -> None:
        self.monitor.send("stop")
        self.stop_sent = True
        self.note("stop sent: the run saves and stops after its current step", 60)

    def action_resume_run(self) -> None:
        if self.monitor.live:
            self.notify("the run is still running", timeout=3)
            return
        if self.verdict == "lost":
            self.notify(f"the run may still be alive on {self.status.get('host', 'another host')}: resume it there",
                        severity="warning")
            return
        if self.verdict == "finished":
            self.notify("the run has finished: nothing to resume", timeout=3)
            return
        if not (self.run_dir / "state.pt").is_file():
            self.notify("no state.pt: the run saved no state to resume from", severity="error")
            return
        if RunMonitor(self.run_dir).poll().verdict in LIVE_STATES:  # resumed meanwhile from another terminal
            self.notify("the run is training again (another process resumed it)", severity="warning")
            return
        self.monitor.process = start_run(["--resume", str(self.run_dir)], self.run_dir, append_log=True)
        self.monitor.status = {}
        self.stop_sent = False
        self.note("resuming from the last saved state…", 4)

    def action_inspect(self) -> None:
        ckpt = next((self.run_dir / n for n in ("best.safetensors", "last.safetensors")
                     if (self.run_dir / n).is_file()), None)
        if ckpt is None:
            self.notify("no checkpoint yet", timeout=3)
            return
        from ...train.probes import image_file

        image = image_file(self.run_dir, self.sel)
        if not image.is_file():
            self.notify("no probe image to open it on (a CNN run, or none recorded yet): use vitscope inspect "
                        f"{ckpt} IMAGE", severity="warning")
            return
        from .inspector import InspectorScreen, Options

        app_opts = getattr(self.app, "opts", None)
        opts = Options(model=str(ckpt), image=str(image), trace_cache=False,
                       save_dir=getattr(app_opts, "save_dir", None),
                       truecolor_missing=getattr(app_opts, "truecolor_missing", False))
        self.app.push_screen(InspectorScreen(opts, back_to=self))
        self.notify(f"{ckpt.name} on probe {self.sel} ({image.name}); b or Esc comes back to the run", timeout=4)

    def action_compare(self) -> None:
        cfg = self.monitor.config
        if not cfg.get("finetune"):
            self.notify("not a finetune: there is no parent checkpoint to compare with", timeout=3)
            return
        parent = self._parent_record()
        self.notify(f"finetuned from {cfg['finetune']} (sha256 {parent[:12] if parent else '?'}…, recorded in "
                    "the checkpoints' `parent`); before/after: vitscope compare", timeout=8)

    def _parent_record(self) -> str | None:
        import json

        for name in ("best.safetensors", "last.safetensors"):
            path = self.run_dir / name
            try:
                with open(path, "rb") as f:
                    n = int.from_bytes(f.read(8), "little")
                    header = json.loads(f.read(min(n, 1 << 24)))
                return json.loads(header["__metadata__"]["vitscope"]).get("parent")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):  # a list or a string as metadata
                continue
        return None

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()

    def action_help(self) -> None:
        self.show_help("training", ["| T | start a new run (a form) |", "| ctrl+p | command palette |",
                  "| q, ctrl+c | quit (while the run trains: stop it, leave it training, or cancel) |", "",
                  "The run trains in its own process and writes everything to its directory; this screen reads "
                  "it. `vitscope watch RUN_DIR` attaches to any run (headless, under torchrun, finished). "
                  "State is saved at the start, after every epoch, every 10 minutes within an epoch and on stop: "
                  "a killed run resumes losing at most the current epoch's work.", "",
                  "Attention forming: after every epoch the run traces a few fixed test images (probes/); "
                  "each row is one image: the image, each layer's attention from CLS (mean of heads or the "
                  "chosen head), and rollout, each map scaled to its own range."])


class _Steps:
    """The per-step history as growing numpy columns (capacity doubles): a redraw decimates arrays, never
    converts a Python list of 100,000 floats."""

    def __init__(self) -> None:
        self._a = np.zeros((3, 1024))
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def extend(self, rows: list[dict[str, Any]]) -> None:
        vals = []
        for row in rows:
            try:
                vals.append((float(row["epoch"]), float(row["loss"]), float(row["lr"])))
            except (KeyError, TypeError, ValueError):
                continue
        if not vals:
            return
        while self.n + len(vals) > self._a.shape[1]:
            self._a = np.concatenate([self._a, np.zeros_like(self._a)], 1)
        self._a[:, self.n:self.n + len(vals)] = np.array(vals).T
        self.n += len(vals)

    def __getitem__(self, key: str) -> np.ndarray:
        return self._a[("x", "loss", "lr").index(key), :self.n]


def _shrink(images: np.ndarray) -> np.ndarray:
    """Probe images at most THUMB pixels a side (nearest): the tiles are a few cells wide on screen."""
    h, w = images.shape[1:3]
    k = max(1, -(-max(h, w) // THUMB))
    return images[:, ::k, ::k] if k > 1 else images
