"""The projection-curves screen: a `sweep --projections` result (Vilas et al. 2023) as charts across blocks.

Opened by `V` in the browser when a projection sweep of the model on that split is kept (see
``sweep.save_projection_curves``), and by ``vitscope sweep ... --projections --tui``. It shows only
numbers computed elsewhere (no model, no torch): the trained model's curves beside its random-init
copy's, the update rates, the residual match and, when the sweep ran ``--probes``, the linear probes'
accuracy beside the projection's. ``v`` switches to a table of every block's numbers.
"""
from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.widgets import Footer, Static

from ..widgets.curves import Curves
from .base import VitscopeScreen

# (key in the sweep's result, short name) of the table's columns, trained model first
NARROW_BELOW = 120  # columns
DODGE = 0.06  # blocks between the series of one chart at a block
TABLE_COLUMNS = (("cls_identifiability", "CLS id"), ("image_identifiability", "img id"),
                 ("image_identifiability_r", "img r"), ("attn_update_rate", "attn+"),
                 ("mlp_update_rate", "MLP+"), ("block_change_rate", "block+"))


class ProjectionCurvesScreen(VitscopeScreen):
    BINDINGS = [
        Binding("v", "toggle_view", "charts / table", tooltip="charts or a table of every block's numbers"),
        Binding("c", "next_chart", "next chart", tooltip="the next chart (under 120 columns, one chart is shown at "
                                                         "a time)"),
        Binding("escape,b", "back", "back", tooltip="back to the screen that opened this one (quit when alone)"),
        Binding("question_mark", "help", "help", tooltip="every key"),
    ]
    DEFAULT_CSS = """
    ProjectionCurvesScreen #pc-charts { grid-size: 2; grid-gutter: 0 1; height: 1fr; }
    ProjectionCurvesScreen #pc-title, ProjectionCurvesScreen #pc-last { height: auto; }
    ProjectionCurvesScreen #pc-table { height: 1fr; display: none; }
    ProjectionCurvesScreen.table #pc-table { display: block; }
    ProjectionCurvesScreen.table #pc-charts { display: none; }
    ProjectionCurvesScreen.narrow #pc-charts { grid-size: 1; }
    """

    def __init__(self, curves: dict[str, Any], title: str) -> None:
        super().__init__()
        self.curves = curves
        self.heading = title
        self.chart_index = 0  # the chart shown on a narrow terminal

    def compose(self) -> ComposeResult:
        # Statics that wrap, not one-line TextLines: at 80 columns the read point and the last block's
        # numbers would be cut off mid-word
        yield Static(self._title_line(), id="pc-title", markup=False)
        yield Static(self._last_block_line(), id="pc-last", markup=False)
        with Grid(id="pc-charts"):
            yield Curves("identifiability", id="pc-ident")
            yield Curves("image tokens' r", id="pc-r")
            yield Curves("update rates", id="pc-rates")
            yield Curves("residual match", id="pc-match")
            if "probes" in self.curves:
                yield Curves("probe vs projection", id="pc-probes")
        with VerticalScroll(id="pc-table"):
            yield Static(self._table(), id="pc-table-text")
        yield Footer()

    def on_mount(self) -> None:
        m, r = self.curves["model"], self.curves["random_init"]
        L = len(m["image_identifiability"])
        xs = list(range(L))
        # each chart's series sit side by side around their block (dodged, as seaborn does for categories), so
        # two series with the same value at a block show both markers instead of one hiding the other
        xlim, ylim = (-DODGE * 2, max(L - 1, 1) + DODGE * 2), (0.0, 1.0)

        def dodged(i: int, n: int) -> list[float]:
            return [x + DODGE * (i - (n - 1) / 2) for x in xs]

        def chart(widget: str, parts: list, title: str) -> None:
            parts = [p for p in parts if p]
            self.query_one(widget, Curves).set_series(
                [(label, dodged(i, len(parts)), ys, colour, marker)
                 for i, (label, _, ys, colour, marker) in enumerate(parts)], xlim, ylim, title)

        def series(src: dict, key: str, label: str, colour: str, marker: str):
            return (label, xs, src[key], colour, marker) if key in src else None

        chart("#pc-ident", [series(m, "cls_identifiability", "CLS", "blue", "•"),
                            series(m, "image_identifiability", "img", "orange", "×"),
                            series(r, "cls_identifiability", "CLS rand", "gray", "o"),
                            series(r, "image_identifiability", "img rand", "gray", "+")], "identifiability")
        chart("#pc-r", [series(m, "image_identifiability_r", "trained", "orange", "×"),
                        series(r, "image_identifiability_r", "rand", "gray", "+")], "image tokens' r")
        chart("#pc-rates", [series(m, "attn_update_rate", "attn", "blue", "•"),
                            series(m, "mlp_update_rate", "MLP", "orange", "×"),
                            series(m, "block_change_rate", "block", "green", "o")], "update rates")
        match = m.get("residual_match") or []
        sources = m.get("residual_match_sources", ["previous", "attn", "mlp", "none"])
        marks = (("blue", "•"), ("orange", "×"), ("green", "o"), ("gray", "+"))
        chart("#pc-match", [(s, xs, [row[i] for row in match], *marks[i]) for i, s in enumerate(sources) if match],
              "residual match")
        if "probes" in self.curves:
            q = self.curves["probes"]
            shown = []
            for t, (m1, m2) in zip(q["tokens"], ((("blue", "•"), ("cyan", "×")), (("orange", "o"), ("red", "+")))):
                name = "CLS" if t == "cls" else "img"
                shown += [(f"{name} probe", xs, q[f"{t}_probe_accuracy"], *m1),
                          (f"{name} proj", xs, q[f"{t}_projection_accuracy"], *m2)]
            chart("#pc-probes", shown, f"probe / proj, {self._shots()}")

    # -- text -------------------------------------------------------------------------------------
    def _shots(self) -> str:
        q = self.curves["probes"]
        return f"{q['shots']}-shot" if q.get("shots") else f"{q['n_train']} train"

    def _title_line(self) -> str:
        c = self.curves
        return (f"class-embedding curves · {self.heading} · {c['model']['n']:,} images "
                f"(random init {c['random_init']['n']:,}) · {c['convention']} convention, updates read at "
                f"{c['read_point']} · target = label")

    def _last_block_line(self) -> str:
        m, r = self.curves["model"], self.curves["random_init"]
        b = len(m["image_identifiability"]) - 1
        parts = []
        if "cls_identifiability" in m:
            parts.append(f"CLS id {m['cls_identifiability'][b]:.2f} (random {r['cls_identifiability'][b]:.2f})")
        parts.append(f"img id {m['image_identifiability'][b]:.2f} (random {r['image_identifiability'][b]:.2f})")
        parts.append(f"attn+ {m['attn_update_rate'][b]:.2f} MLP+ {m['mlp_update_rate'][b]:.2f}")
        if "probes" in self.curves:
            q = self.curves["probes"]
            t = q["tokens"][0]
            parts.append(f"{'CLS' if t == 'cls' else 'img'} probe {q[t + '_probe_accuracy'][b]:.2f} "
                         f"/ projection {q[t + '_projection_accuracy'][b]:.2f}")
        return f"block {b}: " + " · ".join(parts)

    def _table(self) -> str:
        m, r = self.curves["model"], self.curves["random_init"]
        cols = [(k, n) for k, n in TABLE_COLUMNS if k in m]
        lines = ["trained / random init, per block:", "block " + "".join(f"{n:>14}" for _, n in cols)]
        for b in range(len(m["image_identifiability"])):
            lines.append(f"{b:>5} " + "".join(f"{m[k][b]:>8.2f} /{r[k][b]:>4.2f}" for k, _ in cols))
        match = m.get("residual_match")
        if match:
            sources = m.get("residual_match_sources", [])
            lines += ["", "residual match (trained), top-1 class from:",
                      "block " + "".join(f"{s:>10}" for s in sources)]
            lines += [f"{b:>5} " + "".join(f"{v:>10.2f}" for v in row) for b, row in enumerate(match)]
        if "probes" in self.curves:
            q = self.curves["probes"]
            lines += ["", f"linear probes ({q['kind']}, {self._shots()}; tested on {q['n_test']:,}) / projection top-1:",
                      "block " + "".join(f"{('CLS' if t == 'cls' else 'img') + ' probe / proj':>22}" for t in q["tokens"])]
            for b in range(len(q[q["tokens"][0] + "_probe_accuracy"])):
                lines.append(f"{b:>5} " + "".join(
                    f"{q[t + '_probe_accuracy'][b]:>15.2f} / {q[t + '_projection_accuracy'][b]:.2f}" for t in q["tokens"]))
        return "\n".join(lines)

    # -- layout and actions -----------------------------------------------------------------------
    def on_resize(self) -> None:
        # under 120 columns five charts side by side are too small to read (titles dropped, three y ticks):
        # one chart at a time, full size, `c` for the next
        self.set_class(self.size.width < NARROW_BELOW, "narrow")
        self._show_charts()

    def _show_charts(self) -> None:
        charts = list(self.query(Curves))
        narrow = self.has_class("narrow")
        for i, c in enumerate(charts):
            c.display = not narrow or i == self.chart_index % len(charts)

    def action_next_chart(self) -> None:
        self.chart_index += 1
        self._show_charts()

    def action_toggle_view(self) -> None:
        self.toggle_class("table")

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.dismiss()
        else:
            self.app.exit()

    def action_help(self) -> None:
        self.show_help("projection curves", [
            "", "Charts across blocks (x: block). Identifiability: the share of images whose CLS token (or of",
            "image tokens) ranks the label first when projected with the model's own norm and head; grey marks",
            "are the random-init copy. Update rates: the share of image tokens whose attention / MLP update (or",
            "block output) scores the label higher than the previous block's output. Residual match: the share",
            "of tokens whose top-1 class is that of the previous output, the attention update, the MLP update,",
            "or none. Probe vs projection: a linear probe trained per block against the projection's top-1",
            "accuracy on the same test images (`vitscope sweep ... --projections --probes`)."])
