"""The misclassification browser: every image of a test split with its prediction, mistakes first.

The sweep runs in a thread worker and the table fills while it runs (partial results every half
second); a cached sweep, or a crossval directory, opens at once. Lists, filters and sorts are a
frozen :class:`~vitscope.browse.BrowseState` computed with numpy (``vitscope.browse``); the table
draws only its visible rows. Enter opens the image in the inspector with the TRUE class as target.
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
from textual.reactive import reactive
from textual.widgets import Footer, ProgressBar, Static

from ... import render
from ...browse import COLUMNS, DESCENDING_FIRST, Browse, BrowseState
from ..messages import DataReady, Progress, SweepUpdate, ThumbReady
from ..modals import ClassPicker
from ..widgets import HalfCellImage, TextLine
from ..widgets.confusion import ConfusionMatrix
from ..widgets.rowtable import RowTable
from .base import VitscopeScreen, cancellable


@dataclasses.dataclass
class BrowserOptions:
    """What to browse: a model over a dataset split (swept here, cached), or a crossval directory."""

    model: str = ""
    dataset: str = ""
    split: str = "test"
    data_dir: str | None = None
    split_train: int | None = None
    download: bool = False
    sweep_dir: str | None = None  # a `vitscope crossval` output directory
    load_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int = 256
    use_cache: bool = True
    save_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class BrowseItem:
    """One listed image, as the inspector needs it."""

    image: Any  # data.datasets.DatasetImage
    label: int
    pred: int
    p_pred: float
    model: str  # the checkpoint that predicted it (a crossval fold's model)
    loaded: Any


PROGRESS_EVERY = 0.5  # seconds between progress reports of the sweep
PARTIAL_EVERY = 2.0  # seconds between partial results listed while it runs
HINT = "keys 1-8 sort by the columns in order (again reverses) · t / p filter by true / predicted class · w wrong only"
SORT_BINDINGS = [Binding(str(i + 1), f"sort('{key}')", f"sort {header}", show=False,
                         tooltip=f"sort by {header} ({what}); again reverses")
                 for i, (key, header, what) in enumerate(COLUMNS)]


class BrowserScreen(VitscopeScreen):
    BINDINGS = [
        Binding("j,down", "move(1)", "down", show=False, tooltip="next row"),
        Binding("k,up", "move(-1)", "up", show=False, tooltip="previous row"),
        Binding("h,left", "side(-1)", "left", show=False, tooltip="confusion matrix: previous predicted class"),
        Binding("l,right", "side(1)", "right", show=False, tooltip="confusion matrix: next predicted class"),
        Binding("pagedown,space", "page(1)", "page down", show=False, tooltip="a page down"),
        Binding("pageup", "page(-1)", "page up", show=False, tooltip="a page up"),
        Binding("home", "edge(0)", "first", show=False, tooltip="first row"),
        Binding("end", "edge(1)", "last", show=False, tooltip="last row"),
        Binding("enter", "open", "inspect", tooltip="open the image in the inspector, target = its TRUE class "
                "(in the confusion matrix: list the cell's images)"),
        Binding("a", "list('all')", "all", tooltip="all images, misclassified first (highest loss first)"),
        Binding("m", "list('mistakes')", "mistakes", tooltip="most confident mistakes (highest p(pred) first)"),
        Binding("u", "list('unsure')", "unsure", show=False,
                tooltip="least confident correct images (lowest p(true) first)"),
        Binding("L", "list('loss')", "loss", show=False, tooltip="highest loss first"),
        Binding("i", "list('issues')", "label issues", tooltip="suspected label errors (confident learning on "
                "out-of-sample probabilities), most suspect first"),
        Binding("c", "confusion", "confusion", tooltip="confusion matrix (Enter on a cell lists its images)"),
        Binding("t", "filter_true", "true =", show=False, tooltip="filter: true class"),
        Binding("p", "filter_pred", "pred =", show=False, tooltip="filter: predicted class"),
        Binding("w", "wrong_only", "wrong only", show=False, tooltip="filter: misclassified only, on / off"),
        Binding("backspace,0", "clear", "clear", show=False, tooltip="clear the filters and the sort"),
        *SORT_BINDINGS,
        Binding("escape", "back", "back", show=False, tooltip="leave the confusion matrix or the cell's list; "
                "back to the inspector that opened this browser"),
        Binding("V", "projection_curves", "curves", show=False,
                tooltip="class-embedding curves across blocks (Vilas et al.) of this model on this split, from "
                        "`vitscope sweep ... --projections`"),
        Binding("S", "save_list", "save list", show=False, tooltip="save the listed rows as CSV (in --save-dir)"),
        Binding("x", "cancel", "cancel", show=False, tooltip="stop the sweep (the rows so far stay listed)"),
        Binding("question_mark", "help", "help", tooltip="every key"),
    ]
    state: reactive[BrowseState] = reactive(BrowseState, init=False)

    def __init__(self, options: BrowserOptions, loaded: Any = None) -> None:
        super().__init__()
        self.opts = options
        self.loaded = loaded  # the model (of a plain browse); crossval folds load on demand into _models
        self._models: dict[str, Any] = {}
        self.dataset: Any = None
        self.browse: Browse | None = None
        self.rows = np.zeros(0, dtype=np.int64)  # positions in the sweep, in display order
        self.final = False
        self.confusion_view = False
        self._list_before_cell: BrowseState | None = None
        self._sweep_t0 = 0.0
        self._thumb_timer: Any = None
        self._thumb_row = -1
        self._map_deferred = False
        self.timings: dict[str, float] = {"start": time.perf_counter()}

    # -- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        what = self.opts.sweep_dir or f"{Path(self.opts.model).name}  ·  {self.opts.dataset} {self.opts.split}"
        yield Static(f"vitscope browser  ·  {what}  ·  loading…", id="topbar")
        with Horizontal(id="progress-row"):
            yield Static("", id="progress-label")
            yield ProgressBar(id="progress", show_eta=False)
        with Horizontal(id="body"):
            with Vertical(id="browse-main"):
                yield TextLine("", id="list-title")
                yield RowTable(id="rows")
                yield ConfusionMatrix(id="confusion")
            with Vertical(id="browse-side"):
                yield TextLine("", id="thumb-title")
                yield HalfCellImage(id="thumb")
                yield TextLine("", id="details")
        yield TextLine("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(ConfusionMatrix).display = False
        self.query_one("#progress-row").display = False
        self.set_status("loading the model and the dataset…")
        self.prepare()

    # -- workers ---------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="open", exit_on_error=False)
    def prepare(self) -> None:
        with cancellable():
            from ...data.datasets import get_dataset
            from ...errors import VitscopeError
            from ...sweep import SweepResult

            o = self.opts
            if o.sweep_dir:
                path = Path(o.sweep_dir).expanduser() / "sweep.npz"
                try:
                    if (path.parent / "crossval.json").is_file():  # checks sweep.npz is the one it records
                        from ...crossval import load_crossval

                        res = load_crossval(path.parent)[0]
                    else:
                        res = SweepResult.from_npz(path)
                except FileNotFoundError:
                    raise VitscopeError("not a crossval directory (no sweep.npz)", path.parent) from None
                except (OSError, KeyError, ValueError) as e:
                    raise VitscopeError(f"cannot read the sweep ({e})", path) from None
                m = res.meta
                ds = get_dataset(m["dataset"], m.get("split", "test"), m.get("data_dir"),
                                 split_train=m.get("split_train"))
                self.post_message(DataReady(ds, None))
                self.post_message(SweepUpdate(res, True))
                return
            loaded = self.loaded
            if loaded is None:
                from ...loaders import load

                loaded = load(o.model, **{"allow_cnn": True, **o.load_kwargs})
            ds = get_dataset(o.dataset, o.split, o.data_dir, o.download, o.split_train)
            if len(ds.classes) != loaded.spec.num_classes:
                raise VitscopeError(f"the model has {loaded.spec.num_classes} classes, {o.dataset} has "
                                    f"{len(ds.classes)}: not a model of this dataset")
            self.post_message(DataReady(ds, loaded))
            from ...sweep import run_sweep

            t0 = time.perf_counter()
            last = [0.0]

            def progress(done: int, total: int) -> None:
                # a few reports a second: each one repaints, and the repaint shares the cores with the sweep
                now = time.perf_counter()
                if now - last[0] >= PROGRESS_EVERY or done == total:
                    last[0] = now
                    self.post_message(Progress("sweeping", done, total, t0))

            res = run_sweep(loaded, ds, o.batch_size, use_cache=o.use_cache, progress=progress,
                            partial=lambda r: self.post_message(SweepUpdate(r, False)), partial_every=PARTIAL_EVERY)
        self.post_message(SweepUpdate(res, True))

    @work(thread=True, exclusive=True, group="thumb", exit_on_error=False)
    def compute_thumb(self, item: BrowseItem, row: int, size: tuple[int, int] | None) -> None:
        with cancellable():
            from ...views import Session, ViewState

            loaded = item.loaded or self._load_model(item.model)
            se = Session.open(loaded, item.image)
            pane = "gradcam" if se.is_cnn else "grad_rollout"
            state = ViewState(pane=pane, target=item.pred, alpha=0.55)
            se.output(state)
            pic = se.picture(state, size)
        what = "Grad-CAM" if se.is_cnn else "gradient rollout"
        self.post_message(ThumbReady(row, pic, f"{what} for the predicted class, {se.class_name(item.pred)}", size))

    def _load_model(self, path: str) -> Any:
        got = self._models.get(path)
        if got is None:
            from ...loaders import load

            got = self._models[path] = load(path, **{"allow_cnn": True, **self.opts.load_kwargs})
        return got

    def worker_failed(self, worker, message: str, user_error: bool) -> None:
        if worker.group == "open" and self.browse is None:
            self.app.fail(message, user_error)  # nothing to show: leave with the message
            return
        self.query_one("#progress-row").display = False
        self.set_status(f"error: {message}", error=True)
        self.notify(message, severity="error", timeout=10)

    # -- messages --------------------------------------------------------------------------------
    def on_data_ready(self, msg: DataReady) -> None:
        self.timings["data"] = time.perf_counter()
        self.dataset = msg.dataset
        if msg.loaded is not None:
            self.loaded = msg.loaded
        self.set_status("sweeping the split in the background: rows appear as they are predicted (x stops)")
        self._sweep_t0 = time.perf_counter()

    def on_progress(self, msg: Progress) -> None:
        if self.final:
            return
        self.query_one("#progress-row").display = True
        self.query_one("#progress-label", Static).update(
            f"{msg.label}: {msg.done:,}/{msg.total:,} images, {msg.rate:,.0f} images/s{msg.eta()} (x stops) ")
        self.query_one("#progress", ProgressBar).update(total=msg.total, progress=msg.done)

    def on_sweep_update(self, msg: SweepUpdate) -> None:
        if self.final:  # a late partial after the final result
            return
        # the row a person moved to stays selected as rows arrive; untouched, the cursor stays on the top row
        keep = self.current_position() if self.query_one(RowTable).cursor > 0 else None
        self.browse = Browse(msg.result)
        self.final = msg.final
        if msg.final:
            self.query_one("#progress-row").display = False
            self.timings["final"] = time.perf_counter()
            self.set_status(HINT)
            for note in getattr(msg.result, "notes", ()):  # e.g. a damaged cache entry was recomputed
                self.notify(note, severity="warning", timeout=10)
            if self._map_deferred:
                self._thumb_row = -1  # drawn below, now that the model is free
        self._relist(keep_position=keep)
        self._describe()

    def on_thumb_ready(self, msg: ThumbReady) -> None:
        if msg.row != self._thumb_row:
            return
        if msg.size != self._thumb_size():  # laid out anew meanwhile: draw it at the size it has now
            item = self.item(msg.row)
            if item is not None:
                self._start_thumb(msg.row, item)
            return
        self.query_one("#thumb", HalfCellImage).set_image(msg.picture)
        self.query_one("#thumb-title", TextLine).update(msg.caption)

    # -- drawing ---------------------------------------------------------------------------------
    def set_status(self, text: str, error: bool = False) -> None:
        st = self.query_one("#status", TextLine)
        st.update(text)
        st.set_class(error, "error")

    def watch_state(self, old: BrowseState, new: BrowseState) -> None:
        self._relist(keep_position=self.current_position())

    def _describe(self) -> None:
        b = self.browse
        if b is None:
            return
        r = b.result
        src = r.meta.get("source", "sweep")
        what = f"crossval ({r.meta.get('folds')} folds, out-of-sample)" if src == "crossval" else \
            Path(self.opts.sweep_dir).name if self.opts.sweep_dir else Path(self.opts.model).stem
        issues = f"  ·  {int(b.issues.is_issue.sum()):,} label issues" if b.has_issues else ""
        state = "" if self.final else "  ·  sweeping…"
        cached = "  ·  cached sweep" if r.cached and src != "crossval" else ""
        self.query_one("#topbar", Static).update(
            f"{r.meta.get('dataset', self.opts.dataset)} {r.meta.get('split', self.opts.split)}  ·  {r.n:,} images  ·  "
            f"accuracy {r.accuracy:.2%}  ·  {int((~r.correct).sum()):,} wrong{issues}  ·  {what}{cached}{state}  ·  "
            "vitscope browser")

    def _relist(self, keep_position: int | None = None) -> None:
        b = self.browse
        if b is None:
            return
        s = self.state
        self.rows = b.rows(s)
        cursor = 0
        if keep_position is not None:
            hit = np.flatnonzero(self.rows == keep_position)
            cursor = int(hit[0]) if len(hit) else 0
        table = self.query_one(RowTable)
        wide = self.size.width >= 100
        headers = [" "] + [f"{i + 1}:{h}" if wide else h for i, (_, h, _) in enumerate(COLUMNS)]
        cw = min(12 if self.size.width >= 100 else 10, max(len(c) for c in b.result.classes) + 1)
        iw = max(5, len(str(int(b.result.index.max()))) + 1 if b.result.n else 5)
        widths = [1, iw, cw, cw, 9, 9, 7, 8, 7] if wide else [1, iw, cw, cw, 7, 7, 5, 6, 5]
        right = [False, True, False, False, True, True, True, True, True]
        keys = [k for k, _, _ in COLUMNS]
        correct = b.result.correct
        rows = self.rows

        def cells(i: int) -> list[str]:
            pos = int(rows[i])
            return ["✗" if not correct[pos] else " "] + [b.cell_text(pos, k) for k in keys]

        table.set_source(len(rows), headers, widths, right, cells, lambda i: not correct[int(rows[i])], cursor)
        n = len(rows)
        shown = f"{n:,} listed" if n != b.result.n else f"all {n:,}"
        note = ""
        if s.list == "issues" and not b.has_issues:
            note = "  ·  no label issues: this sweep lacks every class's probability"
        elif s.list == "issues" and b.result.meta.get("out_of_sample") is False:
            note = "  ·  CAUTION: the model trained on these images; label issues need out-of-sample probabilities"
        self.query_one("#list-title", TextLine).update(f"{b.describe(s)}  ·  {shown}{note}")
        if self.confusion_view:
            self.query_one(ConfusionMatrix).set_counts(b.result.confusion(), b.result.classes)
        self._selected_changed()

    def current_position(self) -> int | None:
        """The sweep position of the row under the cursor."""
        if not len(self.rows):
            return None
        return int(self.rows[min(self.query_one(RowTable).cursor, len(self.rows) - 1)])

    def item(self, pos: int) -> BrowseItem | None:
        from ...data.datasets import DatasetImage, position_of

        b = self.browse
        if b is None or self.dataset is None:
            return None
        r = b.result
        model, loaded = self.opts.model, self.loaded
        if r.fold is not None and r.meta.get("models"):
            model = str(Path(self.opts.sweep_dir or ".").expanduser() / r.meta["models"][int(r.fold[pos])])
            loaded = self._models.get(model)
        position = position_of(self.dataset, int(r.index[pos]))
        return BrowseItem(DatasetImage(self.dataset, position), int(r.label[pos]), int(r.pred[pos]),
                          float(r.p_pred[pos]), model, loaded)

    def _selected_changed(self) -> None:
        pos = self.current_position()
        details = self.query_one("#details", TextLine)
        if pos is None:
            details.update("no image in this list")
            self.query_one("#thumb", HalfCellImage).set_image(None)
            self._thumb_row = -1
            return
        b = self.browse
        r = b.result
        cls = r.classes
        lines = [f"#{int(r.index[pos])}  true {cls[int(r.label[pos])]}  ·  predicted {cls[int(r.pred[pos])]}"
                 f"  {'✓' if r.correct[pos] else '✗'}",
                 "top 5: " + ", ".join(f"{cls[int(c)]} {p:.2f}" for c, p in zip(r.topk_idx[pos], r.topk_prob[pos])),
                 f"loss {float(r.loss[pos]):.3f}  ·  margin {float(r.margin[pos]):+.3f}"]
        if b.has_issues:
            flag = "SUSPECTED LABEL ERROR" if b.issues.is_issue[pos] else "label looks fine"
            lines.append(f"{flag}: score {float(b.issues.score[pos]):.3f}, suggested "
                         f"{cls[int(b.issues.suggested[pos])]}")
        if r.fold is not None:
            lines.append(f"predicted by fold {int(r.fold[pos])}'s model (never trained on it)")
        lines.append("Enter inspects it (target: TRUE class)")
        details.update("\n".join(lines))
        item = self.item(pos)
        if pos != self._thumb_row and item is not None:
            self._thumb_row = pos
            self._show_plain(item)
            if self._thumb_timer is not None:
                self._thumb_timer.stop()
            self._thumb_timer = self.set_timer(0.08, lambda: self._start_thumb(pos, item))

    def _show_plain(self, item: BrowseItem) -> None:
        """The image at once (no model needed); the map follows from the worker."""
        a = np.asarray(item.image.pil().convert("RGB"))
        self.query_one("#thumb", HalfCellImage).set_image(_fit(a, self._thumb_size()))
        self.query_one("#thumb-title", TextLine).update("computing the predicted class's map…")

    def _thumb_size(self) -> tuple[int, int] | None:
        """The thumbnail's size for the model's input (the dataset's image size without a model)."""
        w = self.query_one("#thumb")
        cw, ch = w.size.width, w.size.height
        if cw < 2 or ch < 1 or self.dataset is None:
            return None
        if self.loaded is not None:
            ih, iw = self.loaded.spec.data_config["input_size"][1:]
        else:
            ih, iw = self.dataset.size
        h, w, _ = render.whole_pixel_size(int(ih), int(iw), 2 * ch, cw)
        return h, w

    def _start_thumb(self, pos: int, item: BrowseItem) -> None:
        if pos != self._thumb_row:
            return
        self._map_deferred = not self.final and self.query_one(RowTable).cursor == 0
        if self._map_deferred:
            # the top row changes with every partial result: a map each time took a seventh of the sweep's
            # speed (the model is shared); a row a person moves to gets its map at once
            self.query_one("#thumb-title", TextLine).update("the map follows when the sweep ends (or move to a row)")
            return
        if item.loaded is not None or item.model:
            self.compute_thumb(item, pos, self._thumb_size())
        else:
            self.query_one("#thumb-title", TextLine).update("no model recorded for this sweep: the image only")

    def on_resize(self) -> None:
        """New widths: the table's columns and the thumbnail's size follow."""
        self._thumb_row = -1
        if self.browse is not None and not self.confusion_view:
            self.call_after_refresh(self._relist, self.current_position())

    # -- actions ---------------------------------------------------------------------------------
    def _ready(self) -> bool:
        if self.browse is None:
            self.notify("the sweep has not listed any image yet", timeout=2)
        return self.browse is not None

    def action_move(self, d: int) -> None:
        if self.confusion_view:
            self.query_one(ConfusionMatrix).move(d, 0)
        else:
            t = self.query_one(RowTable)
            t.move_to(t.cursor + d)

    def action_side(self, d: int) -> None:
        if self.confusion_view:
            self.query_one(ConfusionMatrix).move(0, d)

    def action_page(self, d: int) -> None:
        t = self.query_one(RowTable)
        t.move_to(t.cursor + d * t.page)

    def action_edge(self, end: int) -> None:
        t = self.query_one(RowTable)
        t.move_to(t.n - 1 if end else 0)

    def on_row_table_highlighted(self, msg: RowTable.Highlighted) -> None:
        self._selected_changed()

    def on_row_table_chosen(self, msg: RowTable.Chosen) -> None:
        self.action_open()

    def action_open(self) -> None:
        if not self._ready():
            return
        if self.confusion_view:
            self._list_cell(*self.query_one(ConfusionMatrix).cursor)
            return
        pos = self.current_position()
        if pos is None:
            return
        item = self.item(pos)
        if item is None:
            self.notify("the dataset is still loading", timeout=2)
            return
        if not item.model and item.loaded is None:
            self.notify("no model recorded for this sweep: nothing to inspect it with", severity="warning")
            return
        from .inspector import InspectorScreen, Options

        opts = Options(model=item.model, image=item.image.name, load_kwargs=dict(self.opts.load_kwargs),
                       save_dir=self.opts.save_dir, trace_cache=False,
                       truecolor_missing=getattr(self.app.opts, "truecolor_missing", False))
        self.app.push_screen(InspectorScreen(opts, loaded=item.loaded, browser=self, item=item))

    def step(self, d: int) -> BrowseItem | None:
        """The next (d=1) or previous (d=-1) image of the current list; the cursor follows."""
        t = self.query_one(RowTable)
        if not t.n or not 0 <= t.cursor + d < t.n:
            return None
        t.move_to(t.cursor + d)
        pos = self.current_position()
        return self.item(pos) if pos is not None else None

    def position_label(self) -> str:
        t = self.query_one(RowTable)
        return f"{t.cursor + 1:,} of {t.n:,} in the list"

    def action_list(self, name: str) -> None:
        if not self._ready():
            return
        if name == "issues" and not self.browse.has_issues:
            self.notify("no label issues: this sweep has no probabilities for every class", severity="warning")
        self._leave_confusion()
        self.state = self.state.with_(list=name, sort="", cell=None)

    def action_sort(self, key: str) -> None:
        if not self._ready():
            return
        s = self.state
        desc = (not s.descending) if s.sort == key else key in DESCENDING_FIRST
        self.state = s.with_(sort=key, descending=desc)

    def action_filter_true(self) -> None:
        self._pick_filter("true_class", "show only true class")

    def action_filter_pred(self) -> None:
        self._pick_filter("pred_class", "show only predicted class")

    def _pick_filter(self, field: str, title: str) -> None:
        if not self._ready():
            return
        classes = self.browse.result.classes

        def chosen(idx: int | None) -> None:
            if idx is not None:
                self.state = self.state.with_(**{field: idx})

        self.app.push_screen(ClassPicker(classes, getattr(self.state, field) or 0, title), chosen)

    def action_wrong_only(self) -> None:
        if self._ready():
            self.state = self.state.with_(wrong_only=not self.state.wrong_only)

    def action_clear(self) -> None:
        if self._ready():
            self.state = self.state.with_(true_class=None, pred_class=None, wrong_only=False, sort="")

    def action_confusion(self) -> None:
        if not self._ready():
            return
        self.confusion_view = not self.confusion_view
        cm = self.query_one(ConfusionMatrix)
        cm.display = self.confusion_view
        self.query_one(RowTable).display = not self.confusion_view
        self.query_one("#browse-side").display = not self.confusion_view  # the matrix takes the width
        if self.confusion_view:
            r = self.browse.result
            cm.set_counts(r.confusion(), r.classes)
            self.query_one("#list-title", TextLine).update(
                "confusion matrix: rows are true classes, columns predicted  ·  arrows move, Enter lists the "
                "cell's images, c or Esc back")
        else:
            self._relist(self.current_position())

    def _leave_confusion(self) -> None:
        if self.confusion_view:
            self.confusion_view = False
            self.query_one(ConfusionMatrix).display = False
            self.query_one(RowTable).display = True
            self.query_one("#browse-side").display = True

    def on_confusion_matrix_chosen(self, msg: ConfusionMatrix.Chosen) -> None:
        self._list_cell(msg.true, msg.pred)

    def on_confusion_matrix_moved(self, msg: ConfusionMatrix.Moved) -> None:
        r = self.browse.result
        n = int(r.confusion()[msg.true, msg.pred])
        self.set_status(f"true {r.classes[msg.true]}, predicted {r.classes[msg.pred]}: {n:,} images")

    def _list_cell(self, true: int, pred: int) -> None:
        if self.state.list != "cell":
            self._list_before_cell = self.state
        self._leave_confusion()
        self.state = BrowseState(list="cell", cell=(true, pred))
        self.set_status("")

    def action_back(self) -> None:
        if self.confusion_view:
            self.action_confusion()
        elif self.state.list == "cell":
            self.state = self._list_before_cell or BrowseState()
        else:
            from .inspector import InspectorScreen

            stack = self.app.screen_stack
            if len(stack) > 1 and isinstance(stack[-2], InspectorScreen):  # opened with b from an inspector
                self.app.pop_screen()

    def action_cancel(self) -> None:
        running = [w for w in self.workers if w.is_running and w.group == "open"]
        for w in running:
            w.cancel()
        if running and self.browse is not None:
            self.final = True
            self.query_one("#progress-row").display = False
            self.set_status(f"sweep stopped: {self.browse.result.n:,} images listed (nothing cached)")
            self._describe()

    def action_save_list(self) -> None:
        if not self._ready():
            return
        from ...atomic import atomic_write_text, unused_path

        b, s = self.browse, self.state
        folder = Path(self.opts.save_dir or Path.cwd()).expanduser().resolve()
        ds = str(b.result.meta.get("dataset", "sweep")).replace("/", "_").replace(":", "-")
        path = unused_path(folder / f"vitscope-{ds}-{s.list}.csv")
        try:
            atomic_write_text(path, b.to_csv(self.rows))
        except OSError as e:
            self.notify(f"could not save: {e}", severity="error")
            return
        self.app.last_saved = path
        self.notify(f"saved {len(self.rows):,} rows to {path}")
        self.set_status(f"saved {path}")

    def action_projection_curves(self) -> None:
        from ...sweep import load_projection_curves, projection_curves_file

        if self.browse is None or not self.final:
            self.notify("the curves open once this split's sweep has finished", severity="warning")
            return
        key = self.browse.result.key  # empty for random weights and crossvals: never kept
        rec = load_projection_curves(projection_curves_file(key)) if key else None
        if rec is None:
            o = self.opts
            self.notify("no projection sweep of this model on this split" + (
                f": run `vitscope sweep {o.model} --dataset {o.dataset} --split {o.split} --projections --probes`"
                if key else " (random weights and crossvals are not kept)"), severity="warning", timeout=8)
            return
        from .projection_curves import ProjectionCurvesScreen

        self.app.push_screen(ProjectionCurvesScreen(rec, f"{Path(str(rec['model_source'])).name} on {rec['dataset']} "
                                                          f"{rec['split']}"))

    def action_help(self) -> None:
        self.show_help("browser", ["| ctrl+p | command palette |", "| q, ctrl+c | quit |", "",
                  "In the inspector opened from here: `]` / `[` next / previous image of this list, `P` flips the "
                  "target between the true and the predicted class, `b` comes back to this row.", "",
                  "Label issues (column 8): score = 1 - p(given label) from out-of-sample probabilities; flagged "
                  "when another class is confidently predicted (confident learning, Northcutt et al. 2021). "
                  "A model that trained on these images makes every label look right: use `vitscope crossval`."])



def _fit(a: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return a
    from PIL import Image

    return np.asarray(Image.fromarray(a).resize((size[1], size[0]), Image.NEAREST))
