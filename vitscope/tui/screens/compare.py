"""The split view: two models on one image, the same pane, layer, head and query on both sides.

Each side is a Session of its own and shows its own prediction; the shared ViewState is adapted per side
where a model cannot follow (a CNN has no attention: its Grad-CAM stands in; fewer layers or heads: the
nearest), and the side says so. ``d`` adds a third picture, B - A (on the grid when both grids match,
else both resampled to the image). For two ViTs with the same layers, heads and tokens, the grid under
the pictures is the per-head change (``head_js``, :mod:`vitscope.compare`). Slow panes compute in thread
workers per side and post their results.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Static

from ... import render
from ...views import PANES, ViewState
from ..messages import CompareReady, FaithfulnessReady, PaneReady
from ..widgets import HalfCellImage, TextLine
from ..widgets.curves import Curves
from .base import VitscopeScreen, cancellable, key_label

SPLIT_PANES = ("attention", "rollout", "gradcam", "chefer", "grad_rollout")


def _pane_bindings() -> list[Binding]:
    """The panes' keys and help; a pane's own keys (the rollout's f, d/D, </>) work only in the inspector, and
    the split view shows such a pane as the inspector first does."""
    out = []
    for name in SPLIT_PANES[1:]:
        p = PANES[name]
        text = p.help  # without its keys_hint: here d is B - A and f faithfulness
        if p.keys:
            text += (f"; as the inspector first shows it (its keys {', '.join(key_label(k.key) for k in p.keys)} "
                     "work in the inspector only)")
        out.append(Binding(p.key, f"pane('{name}')", p.title, tooltip=f"{text} (again: back to attention)"))
    return out


class CompareScreen(VitscopeScreen):
    BINDINGS = [
        Binding("j,down", "move(1,0)", "layer ↓", show=False, tooltip="next layer, on both sides"),
        Binding("k,up", "move(-1,0)", "layer ↑", show=False, tooltip="previous layer, on both sides"),
        Binding("l,right", "move(0,1)", "head →", show=False, tooltip="next head (then the mean), on both sides"),
        Binding("h,left", "move(0,-1)", "head ←", show=False, tooltip="previous head, on both sides"),
        Binding("a", "mean", "mean", show=False, tooltip="the mean over heads on / off"),
        *_pane_bindings(),
        Binding("d", "difference", "B - A", tooltip="a third picture: B - A (each map min-max scaled; resampled "
                "to the image where the grids differ)"),
        Binding("L", "layer_charts", "per layer", tooltip="charts: attention entropy and mean attention distance "
                "(input pixels) per layer, mean over heads, both models"),
        Binding("f", "faithfulness", "faithfulness", tooltip="deletion/insertion scores of every map of both "
                "models in one table, best first (computed in the background)"),
        Binding("s", "save", "save", tooltip="save what both sides show (and B - A) as one PNG (in --save-dir, "
                "else the current directory; never overwrites)"),
        Binding("escape", "back", "back", show=False, tooltip="back to attention, or to the inspector that "
                "opened this view"),
        Binding("question_mark", "help", "help", tooltip="every key"),
    ]

    def __init__(self, model_a: str, model_b: str, image: str, load_kwargs: dict[str, Any] | None = None,
                 session_a: Any = None, names: tuple[str, str] = ("A", "B"), loaded: list[Any] | None = None,
                 dataset: Any = None, limit: int | None = None, state: ViewState | None = None,
                 parent_link: str | None = None) -> None:
        """``loaded``: both models already loaded (the CLI loads them to find a parent); ``session_a``: the
        inspector's Session when `M` adds a second model to it."""
        super().__init__()
        self.refs = (model_a, model_b)
        self.image = image
        self.load_kwargs = dict(load_kwargs or {})
        self.sessions: list[Any] = [session_a, None]
        self.loaded = list(loaded) if loaded else [None, None]
        self.dataset, self.limit = dataset, limit  # head_js averaged over the first `limit` images of it
        self.js_on = "this image"
        self.names = names
        # the shared view (from the inspector that opened it: its pane, layer, head and query token, which is
        # in A's token layout and mapped onto B's where they differ); each side explains its own prediction
        self.state = (state or ViewState()).with_(target=None, view="overlay")
        self._js_cache: dict[Any, np.ndarray] = {}
        self.show_diff = False
        self.head_js: np.ndarray | None = None
        self.parent_link: str = parent_link or ""
        self._parent_known = parent_link is not None  # the CLI found it already: not hashed twice
        self.ready = False
        self._computing: set[tuple[int, Any]] = set()  # (side, analysis key) being computed in a worker
        self._rows_worker: tuple[int, Any] | None = None  # (query token, worker) computing both models' rows

    def compose(self) -> ComposeResult:
        yield TextLine(f"vitscope compare  ·  {Path(self.refs[0]).name}  vs  {Path(self.refs[1]).name}  ·  "
                       "loading…", id="topbar")
        with Horizontal(id="cmp-body"):
            for side in ("a", "b", "d"):
                with Vertical(id=f"side-{side}", classes="cmp-side"):
                    yield TextLine("", id=f"title-{side}", classes="cmp-title")
                    yield HalfCellImage(id=f"pic-{side}", classes="cmp-pic")
                    yield TextLine("", id=f"scale-{side}", classes="cmp-scale")
        with Horizontal(id="cmp-charts"):
            yield Curves("entropy per layer (nats)", id="chart-entropy")
            yield Curves("mean attention distance per layer (px)", id="chart-distance")
        yield Static("", id="faith")
        yield Static("", id="js-grid")
        yield TextLine("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#side-d").display = False
        self.query_one("#js-grid").display = False
        self.query_one("#cmp-charts").display = False
        self.query_one("#faith").display = False
        self.query_one("#status", TextLine).update("loading both models…")
        self.open_models()

    # -- workers -------------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="open", exit_on_error=False)
    def open_models(self) -> None:
        with cancellable():
            from ...compare import recorded_parent
            from ...loaders import load
            from ...views import Session

            sessions = list(self.sessions)
            for i in range(2):
                if sessions[i] is None:
                    loaded = self.loaded[i] or load(self.refs[i], **{"allow_cnn": True, **self.load_kwargs})
                    sessions[i] = Session.open(loaded, self.image)
            parent = self.parent_link
            for i, j in () if self._parent_known else ((0, 1), (1, 0)):
                sha = recorded_parent(sessions[j].loaded) if sessions[j].loaded is not None else None
                if sha and Path(self.refs[i]).is_file():
                    from ...loaders.checkpoint import file_hash

                    if file_hash(self.refs[i]) == sha:
                        parent = "finetune of its parent (sha256)" if self.names == ("parent", "finetuned") \
                            else f"{self.names[j]} finetuned from {self.names[i]} (sha256)"
            js = None
            a, b = sessions
            from ...compare import head_js, same_attention_shape

            if same_attention_shape(a, b):
                js = head_js(a.query_rows(None), b.query_rows(None))
                if self.dataset is not None:
                    from ...compare import dataset_head_js

                    self.app.call_from_thread(self.query_one("#status", TextLine).update,
                                              f"averaging head_js over {self.limit} images of {self.dataset.name}…")
                    js, n, acc = dataset_head_js(a.loaded, b.loaded, self.dataset, self.limit)
                    self.js_on = (f"mean over {n} images of {self.dataset.name} {self.dataset.split}; accuracy "
                                  f"{self.names[0]} {acc[0]:.1%}, {self.names[1]} {acc[1]:.1%}")
        self.post_message(CompareReady(sessions, js, parent))

    @work(thread=True, group="pane", exit_on_error=False)
    def compute_side(self, side: int, state: ViewState) -> None:
        with cancellable():
            out = self.sessions[side].output(state)
        self.post_message(PaneReady((side, state), out))

    @work(thread=True, exclusive=True, group="rows", exit_on_error=False)
    def compute_rows(self, token: int) -> None:
        with cancellable():
            for se in self.sessions:
                se.query_rows(token)
        self.app.call_from_thread(self._show_js)

    def on_compare_ready(self, msg: CompareReady) -> None:
        self.sessions, self.head_js, self.parent_link = msg.sessions, msg.head_js, msg.parent
        self.ready = True
        self.query_one("#status", TextLine).update("")
        self._topbar()
        self.refresh_view()

    def on_pane_ready(self, msg: PaneReady) -> None:
        side, state = msg.state
        self._computing.discard((side, state.analysis_key()))
        self.refresh_view()

    # -- per side ------------------------------------------------------------------------------------
    def side_state(self, i: int) -> tuple[ViewState, str]:
        """The shared state as side ``i`` can show it, and what had to change (said on that side)."""
        se, s = self.sessions[i], self.state
        notes = []
        pane = s.pane
        if PANES[pane].unavailable(se) is not None:
            pane = "gradcam" if se.is_cnn else se.home_pane
            notes.append(f"no {PANES[s.pane].title}: {PANES[pane].title} shown")
        if se.is_cnn:
            return s.with_(pane=pane, token=None, layer=0, head="mean", target=None), "; ".join(notes)
        token = s.token
        ref = self.sessions[0].layout if not self.sessions[0].is_cnn else se.layout
        if token is not None and se.layout != ref:
            pos = ref.patch_position(token)
            if pos is None:  # a prefix token: the same one if B has it, else CLS
                name = ref.prefix_names[token]
                token = se.layout.prefix_names.index(name) if name in se.layout.prefix_names else None
            else:  # the patch over the same place of the image
                rows, cols = se.layout.grid
                r = min(int((pos[0] + 0.5) * rows / ref.grid[0]), rows - 1)
                c = min(int((pos[1] + 0.5) * cols / ref.grid[1]), cols - 1)
                token = se.layout.patch_token(r, c)
                notes.append(f"query patch {pos} mapped to ({r}, {c})")
        L, H = se.spec.num_layers, se.spec.num_heads
        layer = min(s.layer, L - 1)
        head = s.head if s.head == "mean" else min(int(s.head), H - 1)
        if layer != s.layer or head != s.head:
            notes.append(f"{L} layers x {H} heads: layer {layer}, head {head} shown")
        return s.with_(pane=pane, layer=layer, head=head, token=token, target=None), "; ".join(notes)

    def _topbar(self) -> None:
        parts = ["vitscope compare"]
        for i, se in enumerate(self.sessions):
            best = se.top_k(1)
            pred = f"{best[0][1]} {best[0][2]:.0%}" if best else "no classifier"
            parts.append(f"{self.names[i]}: {Path(se.name).stem} → {pred}")
        held = sorted({se.spec.weights_held for se in self.sessions if se.spec.weights_held})
        if held:  # as in the inspector's bar: it qualifies every number on the screen
            parts.insert(1, f"weights {'/'.join(held)}")
        if self.parent_link:  # before the image's name: the top bar is cut at the right
            parts.append(self.parent_link)
        parts.append(Path(getattr(self.image, "name", self.image)).name)
        self.query_one("#topbar", TextLine).update("  ·  ".join(parts))

    def _pic_size(self, side: str, image: np.ndarray) -> tuple[int, int] | None:
        w = self.query_one(f"#pic-{side}", HalfCellImage).size
        if w.width < 2 or w.height < 1:
            return None
        h, wd, _ = render.whole_pixel_size(*image.shape[:2], 2 * w.height, w.width)
        return h, wd

    def refresh_view(self) -> None:
        if not self.ready:
            return
        outs = []
        waiting = False
        for i, side in enumerate(("a", "b")):
            se = self.sessions[i]
            ss, note = self.side_state(i)
            if not se.ready(ss):
                waiting = True
                self.query_one(f"#title-{side}", TextLine).update(f"{self.names[i]}: {PANES[ss.pane].title}: "
                                                                  "computing…")
                if (i, ss.analysis_key()) not in self._computing:
                    self._computing.add((i, ss.analysis_key()))
                    self.compute_side(i, ss)
                outs.append(None)
                continue
            out = se.output(ss)
            outs.append(out)
            pic = se.picture(ss, self._pic_size(side, se.image))
            self.query_one(f"#pic-{side}", HalfCellImage).set_image(pic)
            self.query_one(f"#title-{side}", TextLine).update(f"{self.names[i]} {se.name}: {out.title}")
            scale = out.scale.label + (f"  ·  {note}" if note else "")
            self.query_one(f"#scale-{side}", TextLine).update(scale)
        self._show_diff(outs)
        self._show_js()
        if not waiting:
            self.query_one("#status", TextLine).update(self._hint())

    def _hint(self) -> str:
        s = self.state
        head = "mean of heads" if s.head == "mean" else f"head {s.head}"
        return (f"{PANES[s.pane].title} · layer {s.layer} · {head}"
                "  ·  j/k layers, h/l heads, r rollout, g Grad-CAM, e relevance, d B - A, ? keys")

    def _show_diff(self, outs: list[Any]) -> None:
        box = self.query_one("#side-d")
        box.display = self.show_diff
        if not self.show_diff:
            return
        title = self.query_one("#title-d", TextLine)
        if any(o is None or o.grid is None for o in outs):
            title.update(f"{self.names[1]} - {self.names[0]}: waiting for both maps")
            return
        ga, gb = (render.normalise(o.grid) for o in outs)
        img = self.sessions[0].image
        if ga.shape == gb.shape:
            diff, how = gb - ga, "on the patch grid"
        else:
            h, w = img.shape[:2]
            diff = render.upsample(gb, h, w) - render.upsample(ga, h, w)
            how = "resampled to the image (grids differ)"
        size = self._pic_size("d", img) or img.shape[:2]
        pic = render.upsample(render.colorize(np.clip(diff / 2 + 0.5, 0, 1), "turbo", scaled=True), *size)
        self.query_one("#pic-d", HalfCellImage).set_image(pic)
        title.update(f"{self.names[1]} - {self.names[0]} ({how})")
        self.query_one("#scale-d", TextLine).update(f"maps min-max scaled; blue −, red + · {diff.min():+.2f}.."
                                                    f"{diff.max():+.2f}")

    def _show_js(self) -> None:
        box = self.query_one("#js-grid", Static)
        js = self.head_js
        token = self.state.token
        if js is not None and token is not None and self.dataset is None:  # the chosen query's rows, not CLS's
            a, b = self.sessions
            if token not in self._js_cache and a.rows_ready(token) and b.rows_ready(token):
                from ...compare import head_js

                self._js_cache[token] = head_js(a.query_rows(token), b.query_rows(token))
            elif token not in self._js_cache:  # a big-token trace: one attention pass per model, in a worker
                if self._rows_worker is None or self._rows_worker[0] != token or self._rows_worker[1].is_finished:
                    self._rows_worker = (token, self.compute_rows(token))
                box.display = True
                box.update(f"change per head for {a.layout.token_name(token)}: computing…")
                return
            js = self._js_cache[token]
        box.display = js is not None
        if js is None:
            return
        L, H = js.shape
        s = self.state
        rows_of = "the CLS rows" if token is None else f"the rows of {self.sessions[0].layout.token_name(token)}"
        lines = [f"change per head (Jensen-Shannon distance of {rows_of}, base 2, 0..1), {self.js_on}: "
                 f"mean {js.mean():.3f}",
                 "      " + "".join(f"{f'h{h}':>7}" for h in range(H)) + "   mean"]
        for layer in range(L):
            cells = []
            for h in range(H):
                v = f"{js[layer, h]:.3f}"
                cells.append(f"[{v}]" if (layer == s.layer and s.head == h) else f" {v} ")
            mean = f"{js[layer].mean():.3f}"
            cells.append(f"[{mean}]" if (layer == s.layer and s.head == "mean") else f" {mean} ")
            lines.append(f"  L{layer:<3}" + "".join(f"{c:>7}" for c in cells))
        box.update("\n".join(lines))

    # -- keys ------------------------------------------------------------------------------------------
    def _limits(self) -> tuple[int, int]:
        vits = [se for se in self.sessions if se is not None and not se.is_cnn]
        if not vits:
            return 1, 0
        return max(se.spec.num_layers for se in vits), max(se.spec.num_heads for se in vits)

    def action_move(self, dl: int, dh: int) -> None:
        if not self.ready:
            return
        L, H = self._limits()
        s = self.state
        col = H if s.head == "mean" else int(s.head)
        layer = min(max(s.layer + dl, 0), L - 1)
        col = min(max(col + dh, 0), H)
        self.state = s.with_(layer=layer, head="mean" if col == H else col)
        self.refresh_view()

    def action_mean(self) -> None:
        if self.ready:
            self.state = self.state.with_(head=0 if self.state.head == "mean" else "mean")
            self.refresh_view()

    def action_pane(self, name: str) -> None:
        if self.ready:
            self.state = self.state.with_(pane="attention" if self.state.pane == name else name)
            self.refresh_view()

    def action_difference(self) -> None:
        self.show_diff = not self.show_diff
        self.call_after_refresh(self.refresh_view)  # the pictures are sized once the third one is laid out

    def action_layer_charts(self) -> None:
        if not self.ready:
            return
        box = self.query_one("#cmp-charts")
        vits = [(i, se) for i, se in enumerate(self.sessions) if not se.is_cnn]
        if not vits:
            self.notify("no attention in either model: nothing per layer", timeout=3)
            return
        box.display = not box.display
        if not box.display:
            return
        from ...compare import layer_stats

        colours = ("blue", "orange")
        marks = ("•", "×")
        series: dict[str, list] = {"entropy": [], "distance_px": []}
        for i, se in vits:
            st = layer_stats(se)
            for key in series:
                ys = st[key].mean(1)
                series[key].append((self.names[i], np.arange(len(ys), dtype=float), ys, colours[i], marks[i]))
        L = max(len(x[1]) for x in series["entropy"])
        self.query_one("#chart-entropy", Curves).set_series(series["entropy"], xlim=(0, max(1, L - 1)),
                                                            title="entropy (nats) by layer")
        self.query_one("#chart-distance", Curves).set_series(series["distance_px"], xlim=(0, max(1, L - 1)),
                                                             title="attention distance (px) by layer")

    def action_faithfulness(self) -> None:
        if not self.ready:
            return
        box = self.query_one("#faith", Static)
        if box.display:
            box.display = False
            return
        box.display = True
        box.update("deletion / insertion of every map of both models: computing in the background…")
        self.compute_faithfulness()

    @work(thread=True, exclusive=True, group="faith", exit_on_error=False)
    def compute_faithfulness(self) -> None:
        from ...compare import _maps
        from ...export import faithfulness_table

        rows = []
        with cancellable():
            for i, se in enumerate(self.sessions):
                if se.loaded is None or not se.has_classifier:
                    continue
                target = int(np.argmax(se.logits))
                for method, r in faithfulness_table(se, _maps(se, target), target).items():
                    rows.append((self.names[i], "random (baseline)" if method == "random" else method,
                                 r["deletion_auc"], r["insertion_auc"]))
        self.post_message(FaithfulnessReady(sorted(rows, key=lambda r: r[2] - r[3])))

    def on_faithfulness_ready(self, msg: FaithfulnessReady) -> None:
        lines = ["faithfulness, best first (deletion AUC: lower is better; insertion: higher; each model's own "
                 "prediction)", f"  {'model':<10} {'map':<28} {'deletion':>9} {'insertion':>10} {'ins - del':>10}"]
        for name, method, d, ins in msg.rows:
            lines.append(f"  {name:<10} {method:<28} {d:>9.3f} {ins:>10.3f} {ins - d:>+10.3f}")
        self.query_one("#faith", Static).update("\n".join(lines))

    def action_save(self) -> None:
        if not self.ready:
            return
        from ...atomic import unused_path

        tiles, labels, notes = [], [], []
        for i, se in enumerate(self.sessions):
            ss, note = self.side_state(i)
            if not se.ready(ss):
                self.notify("still computing: save when both sides are shown", severity="warning")
                return
            tiles.append(se.picture(ss))
            labels.append(f"{self.names[i]}: {Path(se.name).stem}")
            notes.append(f"{self.names[i]} {se.output(ss).title}" + (f" ({note})" if note else ""))
        h = max(t.shape[0] for t in tiles)
        tiles = [render.upsample(t, h, int(t.shape[1] * h / t.shape[0])) for t in tiles]
        if self.show_diff and self.query_one("#pic-d", HalfCellImage)._image is not None:
            d = self.query_one("#pic-d", HalfCellImage)._image
            tiles.append(render.upsample(d, h, int(d.shape[1] * h / d.shape[0])))
            labels.append(f"{self.names[1]} - {self.names[0]}")
        width = max(t.shape[1] for t in tiles)
        tiles = [np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0))) for t in tiles]
        s = self.state
        head = "mean" if s.head == "mean" else f"h{s.head}"
        folder = Path(getattr(getattr(self.app, "opts", None), "save_dir", None) or Path.cwd()).expanduser()
        path = unused_path(folder / f"vitscope-compare-{s.pane}-L{s.layer}-{head}.png")
        pic = render.small_multiples([tiles], [], labels, title=" | ".join(notes), min_tile=160)
        try:
            render.save_png(pic, path)
        except OSError as e:
            self.notify(f"could not save: {e}", severity="error")
            return
        self.app.last_saved = path
        self.notify(f"saved {path}")

    def action_back(self) -> None:
        if self.state.pane != "attention":
            self.action_pane("attention")
        elif len(self.app.screen_stack) > 2:
            self.app.pop_screen()

    def on_resize(self) -> None:
        self.call_after_refresh(self.refresh_view)

    def action_help(self) -> None:
        self.show_help("compare", ["| q, ctrl+c | quit |", "",
                  "Both sides show the same pane, layer and head, each with its own prediction as the target. "
                  "A side that cannot follow (a CNN has no attention; fewer layers or heads) shows the closest "
                  "and says so under its picture. `vitscope compare A B IMAGE --out DIR` writes all of it."])
