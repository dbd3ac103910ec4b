"""The inspector screen: one model and one image, every pane of the registry, the layer x head grid.

State is the frozen :class:`~vitscope.views.ViewState` held in a reactive; its watcher redraws.
Slow panes and head ablation run in thread workers that post their results (``messages``); the
screen's one worker error handler (``VitscopeScreen``) shows failures in the app.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import reactive
from textual.widgets import DataTable, Footer, ProgressBar, Static

from ... import render
from ...views import FUSIONS, PANES, VIEWS, ViewState
from ..messages import HeadValuesReady, PaneReady, Progress, SessionReady
from ..modals import ClassPicker, HelpScreen, OpenImage
from ..widgets import ColorBar, HalfCellImage, HeadGrid, OverviewGrid, PredictionPanel, TextLine
from .base import VitscopeScreen, cancellable, key_label

STATS = ("entropy", "distance", "prefix", "ablation")
STAT_NAMES = {"entropy": "entropy (nats)",
              "distance": "mean attention distance",
              "prefix": "attention to prefix tokens",
              "ablation": "head ablation: Δ target logit"}
FOOTER_PANES = ("overview", "gradcam")  # the footer keeps ? help and q quit at 80 columns

NAV_BINDINGS = [
    Binding("h,left", "move(0,-1)", "head ←", show=False, tooltip="previous head (stops at the first)"),
    Binding("l,right", "move(0,1)", "head →", show=False, tooltip="next head (stops at the mean column)"),
    Binding("k,up", "move(-1,0)", "layer ↑", show=False, tooltip="previous layer (stops at the first)"),
    Binding("j,down", "move(1,0)", "layer ↓", show=False, tooltip="next layer (stops at the last)"),
    Binding("pageup", "move(-1,0)", "layer ↑", show=False, tooltip="previous layer"),
    Binding("pagedown", "move(1,0)", "layer ↓", show=False, tooltip="next layer"),
    Binding("a", "mean", "mean", tooltip="the mean over heads on / off (back to the head you were on)"),
    Binding("t", "token_mode", "token", show=False, tooltip="token mode: move a cursor over the patches, Enter picks the query"),
    Binding("enter", "pick_token", "pick", show=False, tooltip="token mode: make the patch under the cursor the query"),
    Binding("escape", "back", "back", show=False, tooltip="leave token mode, or go back to the attention pane"),
    Binding("c", "cls", "CLS", show=False, tooltip="query back to the CLS token (or the mean of patch queries)"),
]
VIEW_BINDINGS = [
    Binding("minus", "opacity(-0.1)", "opacity -", show=False, tooltip="overlay opacity down (more image)"),
    Binding("plus,equals_sign", "opacity(0.1)", "opacity +", show=False, tooltip="overlay opacity up (more map)"),
    Binding("m", "colormap", "colormap", show=False, tooltip="next colormap (viridis, inferno, magma, plasma, "
            "turbo, gray)"),
    Binding("v", "view", "view", show=False, tooltip="overlay / raw map / image only"),
    Binding("n", "statistic", "statistic", show=False, tooltip="grid colours: entropy, mean attention distance, "
            "attention to prefix tokens, head ablation (change of the target logit when a head is zeroed)"),
    Binding("number_sign", "values", "numbers", show=False, tooltip="numbers in the grid cells on / off"),
    Binding("z", "zoom(1)", "zoom in", show=False, tooltip="overview: bigger tiles (fewer per page)"),
    Binding("Z", "zoom(-1)", "zoom out", show=False, tooltip="overview: smaller tiles (down to one pixel per patch)"),
    Binding("C", "choose_class", "class", tooltip="choose the target class the class-dependent panes explain"),
    Binding("O", "open_image", "open", show=False, tooltip="open another image (path completion, Tab accepts)"),
    Binding("M", "compare_model", "compare", show=False, tooltip="add a second model: the split view, the same "
            "pane, layer and head on both (a checkpoint path, or timm:NAME)"),
    Binding("s", "save", "save", tooltip="save the view as PNG with its colour bar, prediction and settings"),
    Binding("x", "cancel", "cancel", show=False, tooltip="cancel background work (head ablation, gradient panes)"),
    Binding("question_mark", "help", "help", tooltip="every key, generated from the pane registry"),
]
BROWSE_BINDINGS = [
    Binding("b", "browser", "browser", tooltip="the misclassification browser of the attached dataset (back to "
            "the same row when the image came from it); back to the training screen that opened it"),
    Binding("right_square_bracket", "step(1)", "next image", show=False,
            tooltip="next image of the browser's list (from the browser only)"),
    Binding("left_square_bracket", "step(-1)", "previous image", show=False,
            tooltip="previous image of the browser's list (from the browser only)"),
    Binding("P", "flip_target", "true/pred", show=False,
            tooltip="target: the image's TRUE class or the PREDICTED class (from the browser only)"),
]


def pane_bindings() -> list[Binding]:
    """One binding per pane key, and the keys a pane adds while it is shown, from the registry."""
    out = []
    for p in PANES.values():
        if p.key:
            out.append(Binding(p.key, f"pane('{p.name}')", p.title, show=p.name in FOOTER_PANES,
                               tooltip=p.help_with_keys))
        for k in p.keys:
            out.append(Binding(k.key, f"pane_key('{p.name}', '{k.action}')", k.description, show=False,
                               tooltip=f"{k.description} (in {p.title})"))
    return out


@dataclasses.dataclass
class Options:
    model: str
    image: str
    load_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    render: str = "halfcell"
    token: str | None = None
    target: str | None = None
    layer: int | None = None
    head: str | None = None
    truecolor_missing: bool = False
    save_dir: str | None = None
    trace_cache: bool = True  # reopen from (and write to) the trace cache
    browse: Any = None  # BrowserOptions of the attached dataset (`b` opens the browser), or None


class InspectorScreen(VitscopeScreen):
    BINDINGS = NAV_BINDINGS + pane_bindings() + VIEW_BINDINGS + BROWSE_BINDINGS
    state: reactive[ViewState] = reactive(ViewState, init=False)

    def __init__(self, options: Options, session: Any = None, loaded: Any = None, browser: Any = None,
                 item: Any = None, back_to: Any = None) -> None:
        """``item`` (a browser's BrowseItem) opens a dataset image with ``loaded``, the browser's model;
        ``browser`` is the screen it came from (`b` returns to it, `]`/`[` step through its list)."""
        super().__init__()
        self.opts = options
        self.session = session
        self.loaded = loaded
        self.browser = browser
        self.item = item
        self.back_to = back_to  # a screen under this one that b (and Esc at the top) return to: the training screen
        self.target_mode = "true"  # for a browser image: explain its TRUE class, or the PREDICTED one
        self.token_mode = False
        self.cursor = (0, 0)
        self.stat = "entropy"
        self.head_values: dict[tuple, Any] = {}
        self.last_saved: Path | None = None
        self.timings: dict[str, float] = {"start": time.perf_counter()}
        self._pending: ViewState | None = None
        self._table_key: Any = None
        self._status_kind = ""
        self._ablating: tuple | None = None
        self._stats_pending: tuple | None = None  # ((session id, token), worker) computing head statistics

    # -- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(f"vitscope  {Path(self.opts.model).name}  ·  {Path(self.opts.image).name}  ·  loading…",
                     id="topbar")
        yield Static("", id="banner")
        with Horizontal(id="body"):
            with Vertical(id="sidebar"):
                yield Static(f"grid: {STAT_NAMES[self.stat]}", id="stat-label")
                with VerticalScroll(id="grid-scroll"):
                    yield HeadGrid(id="grid")
                yield TextLine("", id="cell-value")
                yield PredictionPanel("prediction: …", id="prediction")
            with Vertical(id="main"):
                yield TextLine("", id="view-title")
                yield self._picture_widget()
                yield OverviewGrid(id="overview")
                yield ColorBar(id="colorbar")
                yield DataTable(id="table", cursor_type="row", zebra_stripes=True, show_cursor=False)
                with Horizontal(id="progress-row"):
                    yield Static("", id="progress-label")
                    yield ProgressBar(id="progress", show_eta=False)  # the label says the ETA
                yield TextLine("", id="status")
        yield Footer(compact=True)

    def _picture_widget(self):
        if self.opts.render in ("kitty", "sixel", "unicode"):
            from textual_image.widget import SixelImage, TGPImage, UnicodeImage

            return {"kitty": TGPImage, "sixel": SixelImage, "unicode": UnicodeImage}[self.opts.render](id="picture")
        return HalfCellImage(id="picture")

    def on_mount(self) -> None:
        self.timings["first_paint"] = time.perf_counter()
        for wid in ("#overview", "#table", "#progress-row", "#banner"):
            self.query_one(wid).display = False
        if self.opts.truecolor_missing:
            self.notify("256 colours only (COLORTERM is not truecolor): colours are coarse, overlay opacity starts "
                        "at 0.8. Pass --truecolor if your terminal has 24-bit colour.", severity="warning", timeout=5)
        if self.session is not None:
            self.post_message(SessionReady(self.session))
            return
        if self.item is not None:
            self.set_status("tracing the image…" if self.loaded is not None else "loading the model…")
            self.open_session(self.opts.model, self.item.image, self.loaded)
            return
        cached = self._cached_session()
        if cached is not None:  # drawn at once; the model loads after the first paint
            self.post_message(SessionReady(cached))
            return
        self.set_status("importing torch and loading the model…")
        self.open_session(self.opts.model, self.opts.image)

    def _cached_session(self):
        if not self.opts.trace_cache:
            return None
        from ...trace_cache import cache_key, entry_path
        from ...views import Session

        key = cache_key(self.opts.model, self.opts.image, self.opts.load_kwargs)
        if key is None or not entry_path(key).is_file():
            return None
        return Session.from_cache(entry_path(key), self.opts.image)

    # -- workers ---------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="open", exit_on_error=False)
    def open_session(self, model: str, image: Any, loaded: Any = None) -> None:
        with cancellable():
            from ...views import Session

            if loaded is None:
                from ...loaders import load

                loaded = load(model, **{"allow_cnn": True, **self.opts.load_kwargs})
                self.timings["loaded"] = time.perf_counter()
            session = Session.open(loaded, image)
            if not session.is_cnn:
                session.head_stats(None)
        self.post_message(SessionReady(session))
        if self.opts.trace_cache and not session.is_cnn:
            self._store_trace(session, image)

    def _store_trace(self, session: Any, image: str) -> None:
        from ...trace_cache import cache_key, entry_path, store

        key = cache_key(self.opts.model, image, self.opts.load_kwargs)
        if key is None or entry_path(key).is_file():
            return
        try:
            norms = [session.token_norms(i) for i in range(session.spec.num_layers)]
            store(key, session.spec, session.trace, norms)
        except OSError:  # a read-only or full cache folder only costs the next reopen its head start
            pass

    @work(thread=True, exclusive=True, group="pane", exit_on_error=False)
    def compute_pane(self, session: Any, state: ViewState) -> None:
        with cancellable():
            out = session.output(state)
        self.post_message(PaneReady(state, out))

    @work(thread=True, exclusive=True, group="stats", exit_on_error=False)
    def compute_stats(self, session: Any, token: int | None) -> None:
        with cancellable():
            session.head_stats(token)
        self.app.call_from_thread(self.refresh_view)

    @work(thread=True, exclusive=True, group="heads", exit_on_error=False)
    def compute_ablation(self, session: Any, target: int) -> None:
        t0 = time.perf_counter()

        def progress(done: int, total: int) -> None:
            self.post_message(Progress("ablating every head", done, total, t0))

        self.post_message(Progress("ablating every head", 0, session.spec.num_layers, t0))
        self.app.call_from_thread(self._clear_note)
        with cancellable():
            values = session.head_ablation(target, progress)
        self.post_message(HeadValuesReady(("ablation", id(session), target), values))

    def worker_failed(self, worker, message: str, user_error: bool) -> None:
        self._hide_progress()
        if worker.group == "open" and self.session is None:
            self.app.fail(message, user_error)  # nothing to show: leave with the message
            return
        if worker.group == "pane":
            self._pending = None
            self.state = self.state.with_(pane=self.session.home_pane)
        self.set_status(f"error: {message}", error=True)
        self.notify(message, severity="error", timeout=10)

    # -- messages from workers -------------------------------------------------------------------
    def on_session_ready(self, msg: SessionReady) -> None:
        from ...errors import VitscopeError
        from ...spec import parse_class, parse_token

        first = self.session is None or msg.session is self.session
        old = self.session
        se = self.session = msg.session
        self.head_values.clear()
        # over 256 colours a 0.6 blend with a dark image turns the map's low end navy (the bar's is purple):
        # start at 0.8, where the quantised blend keeps the colour bar's hues
        s = ViewState(pane=se.home_pane, alpha=0.8 if self.opts.truecolor_missing else 0.6) if first else self.state
        if first and not se.is_cnn:
            try:
                token = parse_token(self.opts.token, se.layout)
                target = parse_class(self.opts.target, se.spec.classes)
            except VitscopeError as e:  # a bad --token/--class: leave with the one line, as for a bad file
                self.app.fail(str(e))
                return
            L, H = se.spec.num_layers, se.spec.num_heads
            head: int | str = "mean"
            if self.opts.head not in (None, "mean"):
                head = min(max(int(self.opts.head), 0), H - 1)
            s = s.with_(layer=min(max(self.opts.layer or 0, 0), L - 1), head=head, token=token, target=target)
        if self.item is not None and se.has_classifier:
            s = s.with_(target=self.item.label if self.target_mode == "true" else None)
        if not first:
            if se.is_cnn or (old is not None and old.layout != se.layout):
                s = s.with_(token=None)
            if PANES[s.pane].unavailable(se, loading_ok=True):
                s = s.with_(pane=se.home_pane)
        self._describe_model()
        self.query_one("#grid-scroll").display = not se.is_cnn
        self._fit_sidebar(self.size.width)
        self.set_status("")
        if se.from_cached_trace:
            self.set_status("cached trace shown; loading the model for exact numbers and the gradient panes…",
                            kind="note")
            self.call_after_refresh(self.open_session, self.opts.model, se.image_path)
        self.set_reactive(InspectorScreen.state, s)
        self.refresh_view()
        self.timings["ready"] = time.perf_counter()
        if not se.from_cached_trace:
            # torch and the model leave ~10^6 long-lived objects; a full collection walking them
            # paused the UI for 150 ms every few keys. Move them out of the collector's way.
            import gc

            gc.freeze()

    def on_pane_ready(self, msg: PaneReady) -> None:
        if self._pending is not None and msg.state == self._pending.analysis_key():
            self._pending = None
            self._hide_progress()
            self.set_status("")
        self.refresh_view()

    def on_head_values_ready(self, msg: HeadValuesReady) -> None:
        v = msg.values  # [L, H]; the "mean" column shows the mean effect over heads
        self.head_values[msg.key] = np.concatenate([v, v.mean(1, keepdims=True)], 1)
        self._ablating = None
        self._hide_progress()
        self.refresh_view()

    def on_progress(self, msg: Progress) -> None:
        if self._ablating is None:  # cancelled or done: a late report from the worker
            return
        row = self.query_one("#progress-row")
        row.display = True
        self.query_one("#progress-label", Static).update(f"{msg.label}: {msg.done}/{msg.total}{msg.eta()} (x cancels) ")
        self.query_one("#progress", ProgressBar).update(total=msg.total, progress=msg.done)

    def _clear_note(self) -> None:
        if self._status_kind == "note":
            self.set_status("")

    def _hide_progress(self) -> None:
        self.query_one("#progress-row").display = False

    # -- drawing ---------------------------------------------------------------------------------
    def watch_state(self, old: ViewState, new: ViewState) -> None:
        self.refresh_view()

    def set_status(self, text: str, error: bool = False, kind: str = "") -> None:
        st = self.query_one("#status", TextLine)
        st.update(text)
        st.set_class(error, "error")
        self._status_kind = kind

    def _describe_model(self) -> None:
        se = self.session
        s = se.spec
        name, img = se.name, Path(se.image_path).name
        if se.is_cnn:
            parts = [name, img, f"CNN {s.arch}", f"feature grid {s.layout.grid[0]}x{s.layout.grid[1]}",
                     f"{s.num_classes} classes"]
        else:
            parts = [name, img, s.family, f"{s.num_layers} layers x {s.num_heads} heads", f"patch {s.patch_size[0]}",
                     f"grid {s.layout.grid[0]}x{s.layout.grid[1]}",
                     f"{s.num_classes} classes" if se.has_classifier else "backbone (no classifier)"]
        if self.item is not None:
            it, cls = self.item, s.classes
            which = f"target: TRUE class {cls[it.label]}" if self.target_mode == "true" else \
                f"target: PREDICTED class {cls[it.pred]}"
            parts = [img, f"true {cls[it.label]}, predicted {cls[it.pred]} {'✓' if it.label == it.pred else '✗'}",
                     f"{which} (P flips)"]
            if self.browser is not None:
                parts.append(f"{self.browser.position_label()} (] next, [ previous, b back)")
            parts.append(name)
        if s.weights_held:  # first: it qualifies every number on the screen, and shows at 80 columns
            parts.insert(0, f"weights {s.weights_held}")
        self.query_one("#topbar", Static).update("vitscope  " + "  ·  ".join(parts))
        banner = self.query_one("#banner", Static)
        banner.display = s.random_weights
        banner.update("RANDOM WEIGHTS: no trained weights were loaded, these maps mean nothing "
                      "(pass --weights FILE or --pretrained)")

    def _fit_sidebar(self, width: int) -> None:
        """Compact grid cells on narrow terminals or many heads; the sidebar follows the grid's width."""
        if self.session is None or self.session.is_cnn:
            self.query_one("#sidebar").styles.width = 30 if width >= 100 else 24
            return
        grid = self.query_one(HeadGrid)
        H = self.session.spec.num_heads
        # compact cells when the full grid (4 columns a cell) would not fit in half the screen
        grid.set_compact(width < 100 or 4 + 4 * (H + 1) + 7 > width // 2)
        need = 4 + grid.cell * (H + 1) + 7  # padding, border and room for the grid's scrollbar
        self.query_one("#sidebar").styles.width = max(36 if width >= 100 else 26, need)

    def on_resize(self, event) -> None:
        self._fit_sidebar(event.size.width)
        if self.session is not None:
            self.call_after_refresh(self.refresh_view)

    def refresh_view(self) -> None:
        se, s = self.session, self.state
        if se is None:
            return
        if not se.ready(s) and se.from_cached_trace:
            self.set_status(f"{PANES[s.pane].title} waits for the model, which is still loading…", kind="pending")
            self.query_one("#view-title", TextLine).update(f"{PANES[s.pane].title}: waiting for the model…")
            self._update_sidebar()
            return
        if not se.ready(s):
            if self._pending != s.analysis_key():
                self._pending = s.analysis_key()
                what = PANES[s.pane].title
                self.set_status(f"computing {what} in the background (x cancels)…", kind="pending")
                self.query_one("#view-title", TextLine).update(f"{what}: computing…")
                self.compute_pane(se, s.analysis_key())
            self._update_sidebar()
            return
        out = se.output(s)
        self._show_output(s, out)
        self._update_sidebar()

    def _picture_size(self) -> tuple[int, int] | None:
        w = self.query_one("#picture")
        cw, ch = w.size.width, w.size.height
        if cw < 2 or ch < 1 or not isinstance(w, HalfCellImage):
            return None
        ih, iw = self.session.image.shape[:2]
        h, w, whole = render.whole_pixel_size(ih, iw, 2 * ch, cw)
        if whole:
            return h, w
        rows, cols = self.session.layout.grid  # smaller than the image: whole patches at least
        return max(rows, h // rows * rows), max(cols, w // cols * cols)

    def _show_output(self, s: ViewState, out) -> None:
        se = self.session
        overview, picture = self.query_one(OverviewGrid), self.query_one("#picture")
        overview.display, picture.display = out.tiles is not None, out.tiles is None
        title = out.title
        if out.tiles is not None:
            col = s.head if s.head != "mean" else se.spec.num_heads
            min_px = max(4, *se.layout.grid)  # one pixel per patch at least
            overview.show((s.analysis_key(), s.alpha, s.cmap), out.tiles, out.tile_labels,
                          lambda g, size: se.tile(g, s, size), (s.layer, col), min_px)
            (r0, nr), (c0, nc) = overview.window
            L, H1 = len(out.tiles), len(out.tiles[0])
            label = out.scale.label
            if nr and (nr < L or nc < H1):  # said beside the colour bar: the title's height must not depend on it
                label += f"  ·  showing layers {r0}-{r0 + nr - 1}, columns {c0}-{c0 + nc - 1} (moves page)"
            self.query_one(ColorBar).show(s.cmap, 0.0, 1.0, label)
        else:
            cur = self.cursor if self.token_mode else None
            pic = se.picture(s, self._picture_size(), cur)
            if "first_picture" not in self.timings:
                import sys

                self.timings["first_picture"] = time.perf_counter()
                self.timings["torch_before_first_picture"] = float("torch" in sys.modules)
            if isinstance(picture, HalfCellImage):
                picture.set_image(pic)
            else:
                from PIL import Image

                picture.image = Image.fromarray(pic)
            label = f"{out.scale.label}  ·  {s.cmap}, opacity {s.alpha:.1f}" if s.view == "overlay" else \
                f"{out.scale.label}  ·  {s.cmap}"
            self.query_one(ColorBar).show(None if out.grid is None or s.view == "image" else s.cmap,
                                          out.scale.lo, out.scale.hi, label, self._value_text(s, out))
            if s.view != "overlay":
                title += f"  ·  {s.view}"
        if self.token_mode:
            title += f"  ·  TOKEN MODE: cursor {self.cursor} (Enter picks, Esc leaves)"
        self.query_one("#view-title", TextLine).update(title)
        self._show_table(out.table)
        if out.text and self._status_kind in ("", "pane"):
            self.set_status("  ".join(out.text), kind="pane")
        elif not out.text and self._status_kind == "pane":
            self.set_status("")

    def _value_text(self, s: ViewState, out) -> str:
        if out.grid is None:
            return ""
        if self.token_mode:
            r, c = self.cursor
            return f"cursor ({r}, {c}): {render.format_value(out.value_at(r, c))}"
        pos = self.session.layout.patch_position(s.token) if s.token is not None else None
        if pos is not None:
            return f"query patch {pos}: {render.format_value(out.value_at(*pos))}"
        r, c = np.unravel_index(int(np.argmax(out.grid)), out.grid.shape)
        return f"max at ({r}, {c}): {render.format_value(float(out.grid[r, c]))}"

    def _show_table(self, table) -> None:
        dt = self.query_one(DataTable)
        dt.display = table is not None
        if table is None:
            return
        if self._table_key != (table.headers, table.rows):
            self._table_key = (table.headers, table.rows)
            dt.clear(columns=True)
            dt.add_columns(*table.headers)
            dt.add_rows(table.rows)
        if table.highlight is not None and table.highlight < dt.row_count:
            dt.show_cursor = True
            dt.move_cursor(row=table.highlight, animate=False)

    def _update_sidebar(self) -> None:
        se, s = self.session, self.state
        t = se.target_of(s)
        pred = self.query_one(PredictionPanel)
        if se.has_classifier:
            bar = max(0, self.query_one("#sidebar").content_size.width - 24)
            pred.show(se.top_k(5), t, se.class_name(t), width=bar)
        else:
            pred.update(f"backbone: no classifier head\n(outputs are {se.spec.embed_dim}-dim features;\n"
                        "class panes are off)")
        if se.is_cnn:
            self.query_one("#stat-label", Static).update("CNN: no attention heads; Grad-CAM on its last stage")
            self.query_one("#cell-value", TextLine).update("")
            return
        grid = self.query_one(HeadGrid)
        values = self._grid_values(t, s)
        grid.set_values(values)
        grid.select(s.layer, s.head)
        scroll = self.query_one("#grid-scroll")
        rows_visible = max(1, scroll.size.height - 1)
        if not scroll.size.height:  # not laid out yet: nothing to keep in view
            pass
        elif s.layer + 2 <= scroll.size.height:  # on the first page: keep the head labels in view
            if scroll.scroll_y:
                scroll.scroll_to(y=0, animate=False)
        elif not (scroll.scroll_y <= s.layer + 1 < scroll.scroll_y + rows_visible):  # keep the selection in view
            scroll.scroll_to(y=max(0, s.layer + 1 - rows_visible // 2), animate=False)
        head = "mean" if s.head == "mean" else f"h{s.head}"
        v = grid.value(s.layer, s.head) if values is not None else None
        self.query_one("#cell-value", TextLine).update(
            f"L{s.layer} {head} = {v:.3f}" if v is not None else f"L{s.layer} {head}")

    def _grid_values(self, target: int | None, s: ViewState):
        se = self.session
        if self.stat == "ablation":
            key = ("ablation", id(se), target)
            if key not in self.head_values:
                if self._ablating != key:
                    self._ablating = key
                    self.compute_ablation(se, target)
                return None
            return self.head_values[key]
        if not se.is_cached(("stats", s.token)) and not se.rows_ready(s.token):
            key = (id(se), s.token)  # a big-token trace: the query's rows cost an attention pass
            pending = self._stats_pending
            if pending is None or pending[0] != key or pending[1].is_finished:  # (a cancelled one: again)
                self._stats_pending = (key, self.compute_stats(se, s.token))
            return None
        return se.head_stats(s.token)[self.stat]  # [L, H + 1]: the mean column is the mean map's

    # -- actions ---------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "pane_key" and len(parameters) == 2:  # a pane's own keys work only while it is shown
            return self.state.pane == parameters[0]
        if action == "browser":  # shown (in the footer too) only with a dataset attached, or a screen to go back to
            return self.browser is not None or self.opts.browse is not None or self.back_to is not None
        if action in ("step", "flip_target"):  # only for an image that came from the browser
            return self.item is not None and (action == "flip_target" or self.browser is not None)
        return True

    # -- the browser -----------------------------------------------------------------------------
    def action_browser(self) -> None:
        if self.browser is not None or self.back_to is not None:  # it stays under this screen: back to it, on the row of this image
            self.app.pop_screen()
            return
        if self.opts.browse is None:
            self.notify("no dataset attached: start with  vitscope inspect MODEL --dataset NAME  to browse a "
                        "test split", severity="warning", timeout=6)
            return
        from .browser import BrowserScreen

        self.app.push_screen(BrowserScreen(self.opts.browse, self.session.loaded if self.session else None))

    def action_step(self, d: int) -> None:
        if self.browser is None or self.item is None:
            return
        item = self.browser.step(d)
        if item is None:
            self.notify("the first image of the list" if d < 0 else "the last image of the list", timeout=2)
            return
        self.item = item
        # the same checkpoint (a crossval list changes model with the image's fold): no reload
        loaded = self.session.loaded if self.session is not None and item.model == self.opts.model else item.loaded
        self.opts.model = item.model
        self.opts.image = item.image.name
        self.set_status(f"opening {item.image.name}…", kind="note")
        self.open_session(item.model, item.image, loaded)

    def action_flip_target(self) -> None:
        if self.item is None or self.session is None:
            return
        self.target_mode = "pred" if self.target_mode == "true" else "true"
        self._describe_model()
        self.state = self.state.with_(target=self.item.label if self.target_mode == "true" else None)
        self.notify(f"target: {'TRUE' if self.target_mode == 'true' else 'PREDICTED'} class "
                    f"{self.session.class_name(self.item.label if self.target_mode == 'true' else self.item.pred)}",
                    timeout=3)

    def _ready(self) -> bool:
        if self.session is None:
            self.notify("the model is still loading; keys work once the picture is shown", timeout=2)
        return self.session is not None

    def _vit(self) -> bool:
        if self.session is None:
            return False
        if self.session.is_cnn:
            self.notify("a CNN has no layers x heads or tokens: its map is Grad-CAM", severity="warning")
            return False
        return True

    def action_move(self, dr: int, dc: int) -> None:
        if not self._ready() or self.session.is_cnn:
            return
        if self.token_mode:
            rows, cols = self.session.layout.grid
            r, c = self.cursor
            self.cursor = (min(max(r + dr, 0), rows - 1), min(max(c + dc, 0), cols - 1))
            self.refresh_view()
            return
        s = self.state
        L, H = self.session.spec.num_layers, self.session.spec.num_heads
        cols = [*range(H), "mean"]
        i = min(max(cols.index(s.head) + dc, 0), len(cols) - 1)  # both axes stop at the edges
        pane = "attention" if s.pane == "rollout" and dc else s.pane
        self.state = s.with_(layer=min(max(s.layer + dr, 0), L - 1), head=cols[i], pane=pane)

    def action_mean(self) -> None:
        if self._vit():
            s = self.state
            if s.head != "mean":
                self._head_before_mean = s.head
            self.state = s.with_(head=getattr(self, "_head_before_mean", 0) if s.head == "mean" else "mean")

    def action_pane(self, name: str) -> None:
        if not self._ready():
            return
        p = PANES[name]
        why = p.unavailable(self.session, loading_ok=True)  # a loading model: the pane waits for it
        if why:
            self.notify(why, severity="warning")
            return
        home = self.session.home_pane
        self.state = self.state.with_(pane=home if self.state.pane == name else name)

    async def action_pane_key(self, pane: str, action: str, open_it: bool = False) -> None:
        if open_it and self.state.pane != pane:
            self.action_pane(pane)
        if self.state.pane == pane:
            await self.run_action(action)

    def action_cycle_fusion(self) -> None:
        self.state = self.state.with_(fusion=FUSIONS[(FUSIONS.index(self.state.fusion) + 1) % len(FUSIONS)])

    def action_discard(self, d: float) -> None:
        self.state = self.state.with_(discard=round(min(max(self.state.discard + d, 0.0), 0.9), 1))

    def action_start_layer(self, d: int) -> None:
        L = self.session.spec.num_layers
        self.state = self.state.with_(start_layer=min(max(self.state.start_layer + d, 0), L - 1))

    def action_back(self) -> None:
        if self.token_mode:
            self.token_mode = False
            self.refresh_view()
        elif self._ready() and self.state.pane != self.session.home_pane:
            self.state = self.state.with_(pane=self.session.home_pane)
        elif self.back_to is not None:  # nothing left to back out of: the screen that opened this one
            self.app.pop_screen()

    def action_token_mode(self) -> None:
        if not self._vit():
            return
        if self.state.pane == "overview":  # the cursor lives on one map: leave the small multiples
            self.set_reactive(InspectorScreen.state, self.state.with_(pane="attention"))
        self.token_mode = not self.token_mode
        if self.token_mode:
            lay = self.session.layout
            pos = lay.patch_position(self.state.token) if self.state.token is not None else None
            self.cursor = pos or (lay.grid[0] // 2, lay.grid[1] // 2)
        self.refresh_view()

    def action_pick_token(self) -> None:
        if not self._ready() or not self.token_mode:
            return
        self.token_mode = False
        self.state = self.state.with_(token=self.session.layout.patch_token(*self.cursor))
        self.refresh_view()

    def action_cls(self) -> None:
        if self._vit():
            self.token_mode = False
            self.state = self.state.with_(token=None)
            self.refresh_view()

    def action_opacity(self, d: float) -> None:
        if self._ready():
            self.state = self.state.with_(alpha=round(min(max(self.state.alpha + d, 0.0), 1.0), 1))

    def action_colormap(self) -> None:
        if self._ready():
            names = list(render.COLORMAP_NAMES)
            self.state = self.state.with_(cmap=names[(names.index(self.state.cmap) + 1) % len(names)])

    def action_view(self) -> None:
        if self._ready():
            self.state = self.state.with_(view=VIEWS[(VIEWS.index(self.state.view) + 1) % len(VIEWS)])

    def action_statistic(self) -> None:
        if not self._vit():
            return
        stats = [st for st in STATS if st != "ablation" or self.session.has_classifier]
        self.stat = stats[(stats.index(self.stat) + 1) % len(stats)] if self.stat in stats else stats[0]
        self.query_one("#stat-label", Static).update(f"grid: {STAT_NAMES[self.stat]}")
        self.refresh_view()

    def action_values(self) -> None:
        if self._vit():
            grid = self.query_one(HeadGrid)
            grid.set_show_values(not grid.show_values)
            self._fit_sidebar(self.size.width)

    def action_zoom(self, d: int) -> None:
        if self._ready() and self.state.pane == "overview":
            ov = self.query_one(OverviewGrid)
            ov.zoom = min(max(ov.zoom + d, -2), 3)
            self.refresh_view()

    def action_cancel(self) -> None:
        running = [w for w in self.workers if w.is_running and w.group in ("pane", "heads")]
        for w in running:
            w.cancel()
        self._hide_progress()
        if running:
            self.set_status("cancelled", kind="note")
            if self._pending is not None:
                self._pending = None
                self.state = self.state.with_(pane=self.session.home_pane)
            if self.stat == "ablation":
                self._ablating = None
                self.notify("head ablation cancelled: the grid shows entropy again (n cycles back to it)")
                self.stat = "entropy"
                self.query_one("#stat-label", Static).update(f"grid: {STAT_NAMES[self.stat]}")
                self.refresh_view()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self.help_text()))

    def help_text(self) -> str:
        lines = ["# vitscope keys", "", "| key | action |", "| --- | --- |"]
        lines += [f"| (home) | {p.title}: {p.help_with_keys} |" for p in PANES.values() if not p.key]
        for b in self.BINDINGS:
            if b.action.startswith("pane("):
                p = PANES[b.action[6:-2]]
                lines.append(f"| {key_label(b.key)} | {p.title}: {p.help_with_keys} |")
            elif not b.action.startswith("pane_key"):
                lines.append(f"| {key_label(b.key)} | {b.tooltip or b.description} |")
        for p in PANES.values():
            for k in p.keys:
                lines.append(f"| {key_label(k.key)} | {k.description} (in {p.title}) |")
        lines += ["| ctrl+p | command palette (every action) |", "| q, ctrl+c | quit |", "",
                  "Esc, q or ? closes this help; j/k, arrows, PgUp/PgDn scroll it.", "",
                  "Mouse: click a grid cell or an overview tile to select it; click a patch to make it the query.",
                  "", "Maps are coloured over their own min..max unless the colour bar says otherwise (e.g. 0..1); "
                  "the colour bar under the picture gives the range and the value under the cursor. Models "
                  "without a CLS token use the mean over patch queries. Rollout: 0.5*A + 0.5*I, rows renormalised."]
        return "\n".join(lines)

    def action_choose_class(self) -> None:
        if not self._ready():
            return
        if not self.session.has_classifier:
            self.notify("a backbone without a classifier has no classes to choose", severity="warning")
            return

        def chosen(idx: int | None) -> None:
            if idx is not None:
                self.state = self.state.with_(target=idx)
                self.notify(f"target class: {self.session.spec.classes[idx]}")

        self.app.push_screen(ClassPicker(self.session.spec.classes, self.session.target_of(self.state)), chosen)

    def action_open_image(self) -> None:
        if not self._ready():
            return

        def chosen(path: str | None) -> None:  # read_image accepted it in the prompt
            if not path:
                return
            self.opts.image = path
            self.open_session(self.opts.model, path, self.session.loaded)

        from ...data.images import read_image

        self.app.push_screen(OpenImage(str(Path(self.session.image_path).parent) + os.sep, check=read_image), chosen)

    def action_compare_model(self) -> None:
        if not self._ready():
            return
        if self.session.loaded is None:  # a cached trace is shown while the model loads
            self.notify("the model is still loading: M works once it is open", timeout=4)
            return

        def chosen(ref: str | None) -> None:  # check_model_ref accepted it in the prompt
            if not ref:
                return
            from .compare import CompareScreen

            image = self.item.image if self.item is not None else self.session.image_path
            kw = {k: v for k, v in self.opts.load_kwargs.items() if k in ("trust_checkpoint", "device", "weight_dtype")}
            self.app.push_screen(CompareScreen(self.opts.model, ref, image, kw, session_a=self.session,
                                               state=self.state))

        start = str(Path(self.opts.model).expanduser().parent) + os.sep if Path(self.opts.model).exists() else ""
        from ...preflight import check_model_ref

        self.app.push_screen(OpenImage(start, "second model to compare with", check=check_model_ref), chosen)

    def action_save(self) -> None:
        if not self._ready():
            return
        s = self.state
        if not self.session.ready(s):
            self.notify("this view is still being computed; save when it is shown", severity="warning")
            return
        folder = Path(self.opts.save_dir or Path.cwd()).expanduser().resolve()
        stem = Path(self.session.image_path).stem
        what = s.pane if s.pane != "attention" else f"L{s.layer}-{'mean' if s.head == 'mean' else f'h{s.head}'}"
        from ...atomic import unused_path

        path = unused_path(folder / f"vitscope-{stem}-{what}.png")
        try:
            self.session.save(s, path)
        except OSError as e:
            self.notify(f"could not save: {e}", severity="error")
            return
        self.last_saved = self.app.last_saved = path
        self.notify(f"saved {path}")
        self.set_status(f"saved {path}", kind="saved")

    # -- mouse -----------------------------------------------------------------------------------
    def on_head_grid_selected(self, msg: HeadGrid.Selected) -> None:
        pane = self.state.pane if self.state.pane in ("overview", "attention") else "attention"
        self.state = self.state.with_(layer=msg.cell_layer, head=msg.cell_head, pane=pane)

    def on_overview_grid_selected(self, msg: OverviewGrid.Selected) -> None:
        self.state = self.state.with_(layer=msg.cell_layer, head=msg.cell_head)

    def on_overview_grid_window_changed(self, msg: OverviewGrid.WindowChanged) -> None:
        self.refresh_view()

    def on_half_cell_image_clicked(self, msg: HalfCellImage.Clicked) -> None:
        if not self._ready() or self.session.is_cnn:
            return
        h, w = self.session.image.shape[:2]
        img = self.query_one(HalfCellImage)._image
        if img is not None:
            h, w = img.shape[:2]
        rows, cols = self.session.layout.grid
        r, c = min(int(msg.image_y * rows / h), rows - 1), min(int(msg.image_x * cols / w), cols - 1)
        self.token_mode = False
        self.cursor = (r, c)
        self.state = self.state.with_(token=self.session.layout.patch_token(r, c))
        self.refresh_view()

    def palette_entries(self) -> list[tuple[str, str, str]]:
        """(name, what it does, action) for the command palette, from the bindings and the registry."""
        out = []
        for b in self.BINDINGS:
            if b.action.startswith("pane_key"):
                continue
            if b.action.startswith("pane("):
                p = PANES[b.action[6:-2]]
                out.append((f"{p.title} ({key_label(b.key)})", p.help_with_keys, b.action))
            else:
                out.append((f"{b.tooltip or b.description} ({key_label(b.key)})", b.tooltip or b.description,
                            b.action))
        for p in PANES.values():
            for k in p.keys:  # from the palette: opens the pane first
                out.append((f"{k.description} ({key_label(k.key)})", f"opens {p.title} if needed",
                            f"pane_key('{p.name}', '{k.action}', True)"))
        return out

