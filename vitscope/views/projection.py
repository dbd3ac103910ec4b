"""Class-embedding projections (Vilas et al. 2023): per patch, how identifiable the target class is
from the token at the selected layer; per layer, the top classes the query token projects onto."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .panes import ATTENTION, CLASSIFIER, Pane, PaneOutput, Scale, Table

if TYPE_CHECKING:
    from .session import Session
    from .state import ViewState


def _top(session: Session, idx, prob, layer: int, token: int | None, k: int) -> list[tuple[str, float]]:
    """Top classes of one token at one layer; with no CLS and no token, the mean over patch tokens."""
    lay = session.layout
    tok = token if token is not None else lay.cls_index
    if tok is None:
        acc: dict[int, float] = {}
        i, p = idx[layer, lay.num_prefix:], prob[layer, lay.num_prefix:]
        for c, v in zip(i.flatten().tolist(), p.flatten().tolist()):
            acc[c] = acc.get(c, 0.0) + v / i.shape[0]
        top = sorted(acc.items(), key=lambda kv: -kv[1])[:k]
    else:
        top = list(zip(idx[layer, tok].tolist(), prob[layer, tok].tolist()))[:k]
    return [(session.spec.classes[c], float(v)) for c, v in top]


def _cell(items: list[tuple[str, float]], width: int = 10) -> str:
    return "  ".join(f"{name[:width]} {p:.0%}" if p >= 0.01 else f"{name[:width]} {p:.1%}" for name, p in items)


SOURCE_WORDS = {"label": "the dataset label", "prediction": "the prediction", "chosen": "chosen"}


def compute(session: Session, s: ViewState) -> PaneOutput:
    t, source = session.projection_target(s)
    P = session.projections(t, "paper", source)
    lay = session.layout
    grid = P.r[s.layer, lay.num_prefix:].reshape(lay.grid).numpy()
    tok = s.token if s.token is not None else lay.cls_index
    rows = []
    for layer in range(session.spec.num_layers):
        rank = "-" if tok is None else str(int(P.rank[layer, tok]) + 1)
        rows.append((f"L{layer}", _cell(_top(session, P.topk_idx, P.topk_prob, layer, s.token, 2)),
                     _cell(_top(session, P.attn_topk_idx, P.attn_topk_prob, layer, s.token, 1)),
                     _cell(_top(session, P.mlp_topk_idx, P.mlp_topk_prob, layer, s.token, 1)), rank,
                     f"{float(P.identifiability[layer]):.0%}", f"{float(P.attn_update_rate[layer]):.0%}",
                     f"{float(P.mlp_update_rate[layer]):.0%}"))
    q = session.describe_query(s.token)
    table = Table(("layer", "block output: top 2", "attn update", "MLP update", f"rank of {session.class_name(t)[:10]}",
                   "ident", "attn+", "MLP+"),
                  tuple(rows), highlight=s.layer,
                  caption=f"{q} projected onto the classes (paper convention: final norm + head; updates read at "
                          f"{P.read_point}); rank 1 = top; target {session.class_name(t)} ({SOURCE_WORDS[source]}); ident = share of "
                          "patches ranking it first, attn+ / MLP+ = share whose update scores it above the previous block")
    share = float(np.mean(grid == 1.0))
    return PaneOutput(grid, Scale(0.0, 1.0, "r = 1 - (rank-1)/C of the target (1 = ranked first)", fixed=True),
                      f"layer {s.layer}: identifiability of {session.class_name(t)} per patch (paper convention"
                      + (f"; {P.read_point_short})" if P.read_point_short else ")"),
                      (f"{share:.0%} of patches rank {session.class_name(t)} first at layer {s.layer}",), table)


def _slow_key(session: Session, s: ViewState) -> tuple:
    target, source = session.projection_target(s)
    return ("projections", target, "paper", source)  # Session.projections' cache key


PANE = Pane("projection", "p", "projection", "class-embedding projections (Vilas et al. 2023): identifiability of "
            "the target per patch at this layer, and the query token's top classes at every layer",
            compute, frozenset({ATTENTION, CLASSIFIER}), slow=True,
            slow_key=_slow_key, export_name="projection.png")
