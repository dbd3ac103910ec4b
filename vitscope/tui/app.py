"""`vitscope inspect`: a keyboard-driven Textual app over an :class:`~vitscope.inspection.Inspection`.

The first paint needs no torch: the model is imported, loaded and traced in a thread worker, then
the views fill in. Every picture comes from the Inspection's cache, so keys never re-run the model.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Static

from ..inspection import VIEWS, ViewState
from ..render import COLORMAP_NAMES
from .screens import ClassPicker, HelpScreen, OpenImage
from .widgets import HalfCellImage, HeadGrid, PredictionPanel

STATS = ("entropy", "distance", "prefix", "importance")
STAT_NAMES = {"entropy": "entropy of the query row", "distance": "mean attention distance (patches)",
              "prefix": "attention to prefix tokens",
              "importance": "head importance: target-logit drop when zero-ablated"}


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


class InspectorApp(App):
    CSS_PATH = Path(__file__).with_name("vitscope.tcss")  # absolute: subclasses elsewhere keep the styles
    TITLE = "vitscope"
    BINDINGS = [
        Binding("h,left", "left", "head ←", show=False),
        Binding("l,right", "right", "head →", show=False),
        Binding("k,up", "up", "layer ↑", show=False),
        Binding("j,down", "down", "layer ↓", show=False),
        Binding("pageup", "layer_page(-1)", "prev layer", show=False),
        Binding("pagedown", "layer_page(1)", "next layer", show=False),
        Binding("a", "mean", "mean"),
        Binding("o", "overview", "overview"),
        Binding("t", "token_mode", "token"),
        Binding("enter", "pick_token", "pick", show=False),
        Binding("escape", "leave_token_mode", "leave", show=False),
        Binding("c", "cls", "CLS", show=False),
        Binding("r", "rollout", "rollout"),
        Binding("g", "pane('gradcam')", "grad-cam"),
        Binding("e", "pane('chefer')", "relevance"),
        Binding("G", "pane('grad_rollout')", "grad rollout", show=False),
        Binding("p", "pane('projection')", "projection"),
        Binding("left_square_bracket", "opacity(-0.1)", "opacity-", show=False),
        Binding("right_square_bracket", "opacity(0.1)", "opacity+", show=False),
        Binding("m", "colormap", "cmap", show=False),
        Binding("v", "view", "view", show=False),
        Binding("n", "statistic", "stat", show=False),
        Binding("C", "choose_class", "class"),
        Binding("O", "open_image", "open", show=False),
        Binding("s", "save", "save"),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, options: Options, inspection=None) -> None:
        super().__init__()
        self.opts = options
        self.insp = inspection  # filled by the loader worker unless given (tests)
        self.view_state = ViewState()
        self.token_mode = False
        self.patch_cursor = (0, 0)
        self.stat = "entropy"
        self.timings: dict[str, float] = {"start": time.perf_counter()}
        self.last_saved: Path | None = None
        self.error: str | None = None

    # -- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(f"vitscope  {Path(self.opts.model).name}  ·  {Path(self.opts.image).name}  ·  loading…",
                     id="topbar")
        with Horizontal(id="body"):
            with Vertical(id="sidebar"):
                yield Static(f"grid: {STAT_NAMES[self.stat]}", id="stat-label")
                with VerticalScroll(id="grid-scroll"):
                    yield HeadGrid(id="grid")
                yield PredictionPanel("prediction: …", id="prediction")
                yield Static("", id="projection")
            with Vertical(id="main"):
                yield Static("", id="view-title")
                yield self._picture_widget()
                yield Static("", id="status")
        yield Footer(compact=True)

    def _picture_widget(self):
        if self.opts.render in ("kitty", "sixel", "unicode", "textual-image-halfcell"):
            from textual_image.widget import HalfcellImage, SixelImage, TGPImage, UnicodeImage

            cls = {"kitty": TGPImage, "sixel": SixelImage, "unicode": UnicodeImage,
                   "textual-image-halfcell": HalfcellImage}[self.opts.render]
            return cls(id="picture")
        return HalfCellImage(id="picture")

    def on_mount(self) -> None:
        self.timings["first_paint"] = time.perf_counter()
        if self.opts.truecolor_missing:
            self.notify("256 colours only: heat maps will band. Set COLORTERM=truecolor or pass --truecolor.",
                        severity="warning", timeout=8)
        if self.insp is not None:
            self.show_inspection(self.insp)
        else:
            self.set_status("importing torch and loading the model…")
            self.load_model()

    # -- loading (worker thread) -----------------------------------------------------------------
    @work(thread=True, exclusive=True, group="load")
    def load_model(self) -> None:
        from ..errors import VitscopeError

        try:
            from ..inspection import Inspection
            from ..loaders import load

            self.call_from_thread(self.set_status, f"loading {self.opts.model}…")
            loaded = load(self.opts.model, **self.opts.load_kwargs)
            self.timings["loaded"] = time.perf_counter()
            self.call_from_thread(self.set_status, f"tracing {self.opts.image}…")
            insp = Inspection.open(loaded, self.opts.image)
            insp.head_stats(None)
            self.call_from_thread(self.show_inspection, insp)
        except VitscopeError as e:
            self.call_from_thread(self.show_failure, str(e))
        except Exception as e:  # show bugs in the app, never a traceback on screen
            self.call_from_thread(self.show_failure, f"internal error: {type(e).__name__}: {e}")

    def show_failure(self, message: str) -> None:
        self.error = message
        self.set_status(f"error: {message}", error=True)
        self.query_one("#topbar", Static).update(f"vitscope  ·  could not open: {message}")

    def show_inspection(self, insp) -> None:
        from ..cli import parse_class, parse_token
        from ..errors import VitscopeError

        self.insp = insp
        s = insp.spec
        L, H = s.num_layers, s.num_heads
        try:
            token = parse_token(self.opts.token, insp.layout)
            if self.opts.target is not None:
                insp.target = parse_class(self.opts.target, s.classes)
        except VitscopeError as e:
            token = None
            self.notify(str(e), severity="error")
        layer = min(max(self.opts.layer or 0, 0), L - 1)
        head: int | str = "mean"
        if self.opts.head not in (None, "mean"):
            head = min(max(int(self.opts.head), 0), H - 1)
        self.view_state = dataclasses.replace(self.view_state, layer=layer, head=head, token=token)
        warn = "  ·  RANDOM WEIGHTS: maps mean nothing" if s.random_weights else ""
        top = self.query_one("#topbar", Static)
        top.update(f"vitscope  {Path(s.source).name}  ·  {s.family}  ·  {L} layers x {H} heads  ·  patch "
                   f"{s.patch_size[0]}  ·  grid {s.layout.grid[0]}x{s.layout.grid[1]}  ·  {s.num_classes} classes"
                   f"  ·  {Path(insp.image_path).name}{warn}")
        top.set_class(s.random_weights, "random")
        self._fit_sidebar()
        self.set_status("")
        self.refresh_view()
        self.timings["ready"] = time.perf_counter()

    def _fit_sidebar(self) -> None:
        """Compact grid cells on narrow terminals or many heads; the sidebar follows the grid's width."""
        if self.insp is None:
            return
        grid = self.query_one(HeadGrid)
        H = self.insp.spec.num_heads
        grid.compact = self.size.width < 100 or H > 12
        self.query_one("#sidebar").styles.width = max(36 if self.size.width >= 100 else 26,
                                                      4 + grid.cell * (H + 1) + 4)
        grid.refresh(layout=True)

    def on_resize(self) -> None:
        self._fit_sidebar()

    # -- drawing ---------------------------------------------------------------------------------
    def set_status(self, text: str, error: bool = False) -> None:
        st = self.query_one("#status", Static)
        st.update(text)
        st.set_class(error, "error")

    def refresh_view(self) -> None:
        if self.insp is None:
            return
        insp, s = self.insp, self.view_state
        cur = self.patch_cursor if self.token_mode else None
        st = dataclasses.replace(s, cursor=cur)
        if insp.needs_gradients(st):
            self.compute_gradients(st)
            return
        pic = insp.picture(st)
        w = self.query_one("#picture")
        if isinstance(w, HalfCellImage):
            w.set_image(pic)
        else:
            from PIL import Image

            w.image = Image.fromarray(pic)
        title = insp.title(st)
        if self.token_mode:
            title += f"  ·  TOKEN MODE: cursor patch {self.patch_cursor} (Enter picks, Esc leaves)"
        if s.pane != "overview":
            title += f"  ·  {s.view}, {s.cmap}, opacity {s.alpha:.1f}"
        self.query_one("#view-title", Static).update(title)
        grid = self.query_one(HeadGrid)
        if self.stat == "importance":
            if insp.has_cached("importance", insp.target_class):
                grid.set_values(insp.head_importance())
            else:
                self.compute_importance()
        else:
            grid.set_values(insp.head_stats(s.token)[self.stat])
        grid.select(s.layer, s.head)
        scroll = self.query_one("#grid-scroll")
        rows_visible = max(1, scroll.size.height - 1)
        if not (scroll.scroll_y <= s.layer + 1 < scroll.scroll_y + rows_visible):  # keep the selection in view
            scroll.scroll_to(y=max(0, s.layer + 1 - rows_visible // 2), animate=False)
        t = insp.target_class
        bar = max(2, self.query_one("#sidebar").size.width - 27)
        self.query_one(PredictionPanel).show(insp.top_k(5), t, insp.spec.classes[t], width=bar)
        self._show_projection_panel()
        prefix = insp.prefix_attention(s.layer, s.head, s.token)
        if len(prefix) and s.pane == "attention":
            names = insp.layout.prefix_names
            self.set_status("to prefix tokens: " + ", ".join(f"{n} {v:.2f}" for n, v in zip(names, prefix)))
            self._prefix_status = True
        elif getattr(self, "_prefix_status", False):  # that line belongs to the attention pane only
            self.set_status("")
            self._prefix_status = False

    def _show_projection_panel(self) -> None:
        """Top classes of the query token's hidden state at this layer (Vilas et al. 2023), when computed."""
        insp, s = self.insp, self.view_state
        panel = self.query_one("#projection", Static)
        if not insp.has_cached("projections", insp.target_class):
            panel.update("projection: press p" if s.pane != "projection" else "")
            return
        rows = insp.projection_top(s.layer, s.token)
        lines = [f"L{s.layer} {insp.describe_query(s.token)[:18]} projects to:"]
        lines += [f" {name[:16]:<16} {p:6.1%}" for name, p in rows]
        panel.update("\n".join(lines))

    @work(thread=True, exclusive=True, group="gradients")
    def compute_gradients(self, st: ViewState) -> None:
        self.call_from_thread(self.set_status, "computing (one backward pass)…")
        try:
            if st.pane == "projection":
                self.insp.projections()
            else:
                self.insp.gradient_maps(st.token)
        except ValueError as e:  # e.g. a backbone without a classifier has no projections
            self.call_from_thread(self.notify, str(e), severity="error")
            self.call_from_thread(self._update, pane="attention")
            return
        self.call_from_thread(self.set_status, "")
        self.call_from_thread(self.refresh_view)

    def action_pane(self, pane: str) -> None:
        if self.insp is not None:
            self._update(pane="attention" if self.view_state.pane == pane else pane)

    def _update(self, **changes) -> None:
        self.view_state = dataclasses.replace(self.view_state, **changes)
        self.refresh_view()

    # -- actions ---------------------------------------------------------------------------------
    def _dims(self) -> tuple[int, int]:
        return self.insp.spec.num_layers, self.insp.spec.num_heads

    def _move_cursor(self, dr: int, dc: int) -> None:
        rows, cols = self.insp.layout.grid
        r, c = self.patch_cursor
        self.patch_cursor = (min(max(r + dr, 0), rows - 1), min(max(c + dc, 0), cols - 1))
        self.refresh_view()

    def _move_head(self, d: int) -> None:
        L, H = self._dims()
        cols = [*range(H), "mean"]
        i = cols.index(self.view_state.head)
        self._update(head=cols[(i + d) % len(cols)], pane="attention" if self.view_state.pane == "rollout"
                     else self.view_state.pane)

    def _move_layer(self, d: int) -> None:
        L, _ = self._dims()
        self._update(layer=min(max(self.view_state.layer + d, 0), L - 1))

    def action_left(self) -> None:
        if self.insp is None:
            return
        self._move_cursor(0, -1) if self.token_mode else self._move_head(-1)

    def action_right(self) -> None:
        if self.insp is None:
            return
        self._move_cursor(0, 1) if self.token_mode else self._move_head(1)

    def action_up(self) -> None:
        if self.insp is None:
            return
        self._move_cursor(-1, 0) if self.token_mode else self._move_layer(-1)

    def action_down(self) -> None:
        if self.insp is None:
            return
        self._move_cursor(1, 0) if self.token_mode else self._move_layer(1)

    def action_layer_page(self, d: int) -> None:
        if self.insp is not None:
            self._move_layer(d)

    def action_mean(self) -> None:
        if self.insp is not None:
            self._update(head=0 if self.view_state.head == "mean" else "mean")

    def action_overview(self) -> None:
        if self.insp is not None:
            self._update(pane="attention" if self.view_state.pane == "overview" else "overview")

    def action_rollout(self) -> None:
        if self.insp is not None:
            self._update(pane="attention" if self.view_state.pane == "rollout" else "rollout")

    def action_token_mode(self) -> None:
        if self.insp is None:
            return
        self.token_mode = not self.token_mode
        if self.token_mode:
            pos = self.insp.layout.patch_position(self.view_state.token) if self.view_state.token is not None else None
            self.patch_cursor = pos or (self.insp.layout.grid[0] // 2, self.insp.layout.grid[1] // 2)
        self.refresh_view()

    def action_pick_token(self) -> None:
        if self.insp is None or not self.token_mode:
            return
        self.token_mode = False
        self._update(token=self.insp.layout.patch_token(*self.patch_cursor))

    def action_leave_token_mode(self) -> None:
        if self.token_mode:
            self.token_mode = False
            self.refresh_view()

    def action_cls(self) -> None:
        if self.insp is not None:
            self.token_mode = False
            self._update(token=None)

    def action_opacity(self, d: float) -> None:
        if self.insp is not None:
            self._update(alpha=round(min(max(self.view_state.alpha + d, 0.0), 1.0), 1))

    def action_colormap(self) -> None:
        if self.insp is not None:
            names = list(COLORMAP_NAMES)
            self._update(cmap=names[(names.index(self.view_state.cmap) + 1) % len(names)])

    def action_view(self) -> None:
        if self.insp is not None:
            self._update(view=VIEWS[(VIEWS.index(self.view_state.view) + 1) % len(VIEWS)])

    def action_statistic(self) -> None:
        if self.insp is None:
            return
        self.stat = STATS[(STATS.index(self.stat) + 1) % len(STATS)]
        self.query_one("#stat-label", Static).update(f"grid: {STAT_NAMES[self.stat]}")
        self.refresh_view()

    @work(thread=True, exclusive=True, group="importance")
    def compute_importance(self) -> None:
        self.call_from_thread(self.set_status, "ablating every head (head importance)…")
        self.insp.head_importance()
        self.call_from_thread(self.set_status, "")
        self.call_from_thread(self.refresh_view)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_choose_class(self) -> None:
        if self.insp is None:
            return

        def chosen(idx: int | None) -> None:
            if idx is not None:
                self.insp.target = idx
                self.notify(f"target class: {self.insp.spec.classes[idx]}")
                self.refresh_view()

        self.push_screen(ClassPicker(self.insp.spec.classes, self.insp.target_class), chosen)

    def action_open_image(self) -> None:
        if self.insp is None:
            return

        def chosen(path: str | None) -> None:
            if path:
                self.open_image(path)

        self.push_screen(OpenImage(str(Path(self.insp.image_path).parent) + os.sep), chosen)

    @work(thread=True, exclusive=True, group="load")
    def open_image(self, path: str) -> None:
        from ..errors import VitscopeError
        from ..inspection import Inspection

        try:
            insp = Inspection.open(self.insp.loaded, path)
            insp.head_stats(None)
        except VitscopeError as e:
            self.call_from_thread(self.notify, str(e), severity="error", timeout=8)
            return
        self.opts.image = path
        self.call_from_thread(self.show_inspection, insp)

    def action_save(self) -> None:
        if self.insp is None:
            return
        s = self.view_state
        stem = Path(self.insp.image_path).stem
        what = s.pane if s.pane != "attention" else f"L{s.layer}-{'mean' if s.head == 'mean' else f'h{s.head}'}"
        path = Path.cwd() / f"vitscope-{stem}-{what}.png"
        k = 1
        while path.exists():  # never overwrite: a new name instead
            path = Path.cwd() / f"vitscope-{stem}-{what}-{k}.png"
            k += 1
        try:
            self.insp.save_view(dataclasses.replace(s, cursor=None), path)
        except OSError as e:
            self.notify(f"could not save: {e}", severity="error")
            return
        self.last_saved = path
        self.notify(f"saved {path}")
        self.set_status(f"saved {path}")

    # -- mouse -----------------------------------------------------------------------------------
    def on_head_grid_selected(self, msg: HeadGrid.Selected) -> None:
        self._update(layer=msg.cell_layer, head=msg.cell_head, pane="attention" if self.view_state.pane != "overview"
                     else "overview")

    def on_half_cell_image_clicked(self, msg: HalfCellImage.Clicked) -> None:
        if self.insp is None or self.view_state.pane == "overview":
            return
        h, w = self.insp.image.shape[:2]
        rows, cols = self.insp.layout.grid
        r, c = min(int(msg.image_y * rows / h), rows - 1), min(int(msg.image_x * cols / w), cols - 1)
        self.token_mode = False
        self.patch_cursor = (r, c)
        self._update(token=self.insp.layout.patch_token(r, c))

    # -- command palette: every action -----------------------------------------------------------
    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        for b in self.BINDINGS:
            name = b.action.split("(")[0]
            if name in ("quit", "help"):
                continue
            yield SystemCommand(f"{b.description} ({b.key.split(',')[0]})", f"vitscope: {name.replace('_', ' ')}",
                                lambda a=b.action: self.run_action(a))
