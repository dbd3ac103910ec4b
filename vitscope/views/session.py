"""A Session: one model, one image, and every array and picture the views show, computed once.

The TUI and ``vitscope export`` ask a Session for a pane's output under a :class:`ViewState`; the
pane registry (``views.panes``) says how each pane is computed. Arrays are cached by what they
depend on (layer, head, token, target, settings), pictures by the whole state, so moving around the
grid never re-runs the model. The cache is guarded for worker threads; model access itself is
serialised by ``analysis.hooks`` (one lock per model). No Textual here.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .. import render
from ..spec import ModelSpec, TokenLayout
from . import panes as registry
from .panes import ATTENTION, CLASSIFIER, CNN, FINITE, MODEL, Pane, PaneOutput
from .state import ViewState

if TYPE_CHECKING:
    import torch

    from ..data.datasets import DatasetImage
    from ..trace_cache import CachedTrace

    from ..loaders import Loaded
    from ..tracing import Capture, Trace

MAX_PICTURES = 256  # at 160x48 a picture is ~60 KB: about 15 MB at most

Progress = Callable[[int, int], None]


class Session:
    """One model and one image. ``trace`` is None for a CNN (it has no tokens to trace)."""

    def __init__(self, loaded: "Loaded | None", trace: "Trace | CachedTrace | None" = None,
                 shown: np.ndarray | None = None, input: "torch.Tensor | None" = None, image_path: str = "",
                 logits: "torch.Tensor | None" = None, spec: ModelSpec | None = None) -> None:
        self.loaded = loaded  # None while a cached trace is shown and the model still loads
        self._spec = spec if spec is not None else loaded.spec
        self.trace = trace
        self.image_path = str(image_path)
        self._shown = shown if shown is not None else (trace.image if trace is not None else None)
        self.input = input if input is not None else (trace.input if trace is not None else None)
        self._logits = trace.logits if trace is not None else logits
        self._cache: dict[tuple, Any] = {}
        self._pictures: OrderedDict[tuple, np.ndarray] = OrderedDict()  # the most recent only: display-sized
        self._lock = threading.Lock()
        self.label: int | None = None  # the dataset's label, when the image came from a dataset

    @classmethod
    def open(cls, loaded: "Loaded", image_path: "str | Path | DatasetImage", capture: "Capture | None" = None) -> "Session":
        """Read the image as the model expects it; trace a ViT (``capture``: what the trace keeps), run a CNN
        once. ``image_path`` may also be a dataset image (``data.datasets.DatasetImage``), prepared exactly
        as a file would be."""
        from ..data.datasets import DatasetImage
        from ..data.images import load_image, prepare

        label = None
        if isinstance(image_path, DatasetImage):
            prep = prepare(image_path.pil(), loaded.spec.data_config, image_path.name)
            label = image_path.label
            image_path = image_path.name
        else:
            prep = load_image(image_path, loaded.spec.data_config)
        if loaded.spec.kind == "cnn":
            import torch

            from ..analysis.hooks import device_of, using

            with using(loaded.model), torch.inference_mode():
                logits = loaded.model(prep.input[None].to(device_of(loaded.model)))[0].float().cpu()
            return cls(loaded, None, prep.shown, prep.input, str(image_path), logits)
        from ..tracing import trace

        session = cls(loaded, trace(loaded, prep, capture=capture), image_path=str(image_path))
        session.label = label
        return session

    @classmethod
    def from_cache(cls, path: str | Path, image_path: str | Path) -> "Session | None":
        """A session on a cached trace (no model, no torch): the fast panes draw at once."""
        from ..trace_cache import load

        got = load(Path(path))
        if got is None:
            return None
        spec, tr = got
        return cls(None, tr, image_path=str(image_path), spec=spec)

    @property
    def from_cached_trace(self) -> bool:
        return self.loaded is None

    # -- what the model is ---------------------------------------------------------------------------
    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def layout(self) -> TokenLayout:
        return self.spec.layout

    @property
    def name(self) -> str:
        return Path(self.spec.source).name or self.spec.source

    @property
    def capabilities(self) -> frozenset[str]:
        caps = {CNN} if self.spec.kind == "cnn" else {ATTENTION}
        if self.spec.num_classes > 0:
            caps.add(CLASSIFIER)
            if np.isfinite(self.logits).all():
                caps.add(FINITE)
        if self.loaded is not None:
            caps.add(MODEL)
        return frozenset(caps)

    @property
    def is_cnn(self) -> bool:
        return self.spec.kind == "cnn"

    @property
    def has_classifier(self) -> bool:
        return CLASSIFIER in self.capabilities

    @property
    def home_pane(self) -> str:
        return "gradcam" if self.is_cnn else "attention"

    def available_panes(self) -> list[Pane]:
        return [p for p in registry.PANES.values() if p.unavailable(self) is None]

    # -- the prediction ------------------------------------------------------------------------------
    @property
    def logits(self) -> np.ndarray:
        from ..analysis.attention import as_array

        return self._cached(("logits",), lambda: as_array(self._logits, np.float64))

    @property
    def probs(self) -> np.ndarray:
        def compute():
            z = self.logits - self.logits.max()
            e = np.exp(z)
            return e / e.sum()
        return self._cached(("probs",), compute)

    @property
    def prediction(self) -> int | None:
        return int(self.logits.argmax()) if self.has_classifier else None

    def target_of(self, s: ViewState) -> int | None:
        """The class the class-dependent panes explain: the state's target, else the prediction."""
        if not self.has_classifier:
            return None
        return self.prediction if s.target is None else s.target

    def class_name(self, i: int | None) -> str:
        return "-" if i is None else self.spec.classes[i]

    def top_k(self, k: int = 5) -> list[tuple[int, str, float]]:
        if not self.has_classifier:
            return []
        p = self.probs
        idx = np.argsort(-p, kind="stable")[:k]
        return [(int(i), self.spec.classes[int(i)], float(p[i])) for i in idx]

    def describe_query(self, token: int | None) -> str:
        if self.is_cnn:
            return "image"
        from ..analysis.attention import describe_query

        return describe_query(self.layout, token)

    @property
    def image(self) -> np.ndarray:
        img = self._shown
        return img if img is not None else np.zeros((*self.spec.img_size, 3), np.uint8)

    # -- cache ---------------------------------------------------------------------------------------
    def _cached(self, key: tuple, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = fn()  # outside the lock: slow work must not block the UI thread's cache hits
        with self._lock:
            return self._cache.setdefault(key, value)

    def is_cached(self, key: tuple) -> bool:
        with self._lock:
            return key in self._cache

    # -- arrays (each cached by what it depends on) --------------------------------------------------
    @property
    def holds_all_attention(self) -> bool:
        """False for a trace that keeps only its digest (a big-token model): other queries' rows and other
        rollout settings then cost one more attention pass of the model."""
        return getattr(self.trace, "digest", None) is None or self.trace.holds_all_attention

    def attention_pass(self, sink: Callable[[int, Any], None]) -> None:
        """Run the model on the image once more, handing every layer's attention [1, H, N, N] to ``sink``
        (nothing else is kept)."""
        from ..analysis.hooks import Recorder
        from ..tracing import run_traced

        model = self.loaded.model
        run_traced(model, self.input[None].to(self.loaded.device),
                   recorder=Recorder(model, keep_attention=False, attention_sinks=[sink], keep_stream=False,
                                     heads_one_at_a_time=True))

    def query_rows(self, token: int | None) -> np.ndarray:
        """[L, H, N]: the query's attention row at every layer and head."""
        from ..analysis.attention import as_array, query_weights

        def compute():
            if self.holds_all_attention:
                return np.einsum("n,lhnm->lhm", query_weights(self.layout, token), as_array(self.trace.attn))
            if token is None:
                return self.trace.digest.rows
            rows: list[np.ndarray] = []
            self.attention_pass(lambda _i, a: rows.append(as_array(a[0, :, token])))
            return np.stack(rows)
        return self._cached(("rows", token), compute)

    def rows_ready(self, token: int | None) -> bool:
        """Whether :meth:`query_rows` answers without running the model (a big-token trace: only the default
        query's rows, or rows already computed)."""
        return self.holds_all_attention or token is None or self.is_cached(("rows", token))

    def _row(self, layer: int, head: int | str, token: int | None) -> np.ndarray:
        from ..analysis.attention import fuse_heads

        return fuse_heads(self.query_rows(token)[layer][:, None, :], head)[0]  # [N]: rows fuse as the maps do

    def attention_grid(self, layer: int, head: int | str, token: int | None) -> np.ndarray:
        from ..analysis.attention import attention_map

        if not self.holds_all_attention:
            return self._cached(("attn", layer, head, token), lambda: self._row(layer, head, token)[
                self.layout.num_prefix:].reshape(self.layout.grid))
        return self._cached(("attn", layer, head, token), lambda: attention_map(
            self.trace.attn, self.layout, layer, head, token).grid)

    def prefix_attention(self, layer: int, head: int | str, token: int | None) -> np.ndarray:
        from ..analysis.attention import attention_map

        if not self.holds_all_attention:
            return self._cached(("prefix", layer, head, token), lambda: self._row(layer, head, token)[
                :self.layout.num_prefix])
        return self._cached(("prefix", layer, head, token), lambda: attention_map(
            self.trace.attn, self.layout, layer, head, token).prefix)

    def head_stats(self, token: int | None) -> dict[str, np.ndarray]:
        from ..analysis.attention import head_statistics

        def compute():
            """[L, H + 1]: each head, then the mean-of-heads map (what the "mean" column shows)."""
            from ..analysis.attention import as_array

            if not self.holds_all_attention:
                return self.trace.digest.statistics(self.query_rows(token), self.layout, token)
            a = as_array(self.trace.attn)
            return head_statistics(np.concatenate([a, a.mean(1, keepdims=True)], 1), self.layout, token)

        return self._cached(("stats", token), compute)

    def rollout_matrix(self, fusion: str = "mean", discard: float = 0.0, start_layer: int = 0) -> np.ndarray:
        """[N, N] rollout from ``start_layer`` to the last layer."""
        from ..analysis.digest import DEFAULT_ROLLOUT
        from ..analysis.rollout import RolloutProduct, attention_rollout

        def compute():
            if self.holds_all_attention:
                return attention_rollout(self.trace.attn, fusion, discard, start_layer)
            if (fusion, discard, start_layer) == DEFAULT_ROLLOUT:
                return self.trace.digest.rollout
            product = RolloutProduct(fusion, discard)  # a running product over one more pass
            self.attention_pass(lambda i, a: product.add(a[0]) if i >= start_layer else None)
            return product.matrix
        return self._cached(("rollout_matrix", fusion, discard, start_layer), compute)

    def rollout_grid(self, token: int | None, fusion: str = "mean", discard: float = 0.0,
                     start_layer: int = 0) -> np.ndarray:
        from ..analysis.rollout import rollout_map

        R = self.rollout_matrix(fusion, discard, start_layer)
        return self._cached(("rollout", token, fusion, discard, start_layer),
                            lambda: rollout_map(R, self.layout, token))

    def gradcam(self, target: int) -> np.ndarray:
        from ..analysis.gradients import gradcam

        return self._cached(("gradcam", target), lambda: gradcam(
            self.loaded.model, self.input, target, None if self.is_cnn else self.layout).numpy())

    def attention_gradients(self, target: int):
        from ..analysis.gradients import attention_gradients

        return self._cached(("attn_grads", target), lambda: attention_gradients(self.loaded.model, self.input, target))

    def relevance(self, method: str, target: int, token: int | None) -> np.ndarray:
        """``chefer`` (Chefer et al. 2021) or ``grad_rollout`` map of the query for the target."""
        from ..analysis.gradients import chefer_relevance, gradient_rollout, relevance_map

        fn = {"chefer": chefer_relevance, "grad_rollout": gradient_rollout}[method]

        def matrix():
            return fn(*self.attention_gradients(target))

        R = self._cached((method + "_matrix", target), matrix)
        return self._cached((method, target, token), lambda: relevance_map(R, self.layout, token))

    def projection_target(self, s: ViewState) -> tuple[int | None, str]:
        """The class the paper's analyses score, and where it comes from: the state's target
        ("chosen"), else the dataset's label when known ("label", as the paper does), else the
        prediction."""
        if not self.has_classifier:
            return None, "none"
        if s.target is not None:
            return s.target, "chosen"
        if self.label is not None:
            return self.label, "label"
        return self.prediction, "prediction"

    def projections(self, target: int, convention: str = "paper", source: str | None = None):
        """Class projections for ``target``; ``source`` says where it came from (see projection_target)."""
        from ..analysis.projection import project_trace

        source = source or ("prediction" if target == self.prediction else "chosen")
        return self._cached(("projections", target, convention, source),
                            lambda: project_trace(self.trace, self.loaded.model, target, convention,
                                                  target_source=source))

    def head_ablation(self, target: int, progress: Progress | None = None) -> np.ndarray:
        """[L, H] target logit with the head zero-ablated minus the original (trace.npz ``head_ablation``):
        negative = the head supports the target."""
        from ..analysis.ablation import head_ablation

        return self._cached(("head_ablation", target), lambda: head_ablation(
            self.loaded.model, self.trace, target, progress=progress).logit_delta.numpy())

    def memories(self, target: int, source: str | None = None):
        """Key-value memory analyses (analysis/memories.py) for ``target``, with the class-value
        agreement of a randomly initialised copy of the same architecture as the baseline."""
        from ..analysis.memories import memories, random_init_copy

        def compute():
            P = self.projections(target, "paper", source)
            top = {"attn": P.attn_topk_idx[..., 0], "mlp": P.mlp_topk_idx[..., 0]}
            baseline = random_init_copy(self.spec.arch, self.spec.kwargs)
            return memories(self.trace, self.loaded.model, target, top, random_model=baseline)
        return self._cached(("memories", target, source), compute)

    def class_maps(self, target: int, token: int | None = None) -> np.ndarray:
        """[L, H, rows, cols] per-block, per-head class maps (analysis/class_maps.py) for the query token."""
        from ..analysis.class_maps import class_attention_maps

        return self._cached(("class_maps", target, token), lambda: class_attention_maps(
            self.loaded.model, self.input, target, self.layout, token).numpy())

    def context_perturbation(self, target: int):
        """Identifiability at the last block with image tokens kept from CLS / from every other token."""
        from ..analysis.perturb import context_perturbation

        return self._cached(("perturb", target), lambda: context_perturbation(
            self.loaded.model, self.input, self.layout, target))

    def token_norms(self, layer: int) -> np.ndarray:
        """L2 norm of each patch token's block output at ``layer`` (high-norm artefact tokens stand out)."""
        def compute():
            cached = getattr(self.trace, "token_norms", None)
            if cached is not None:
                return cached[layer]
            r = self.trace.resid[layer + 1, self.layout.num_prefix:].norm(dim=-1)
            return r.reshape(self.layout.grid).numpy()
        return self._cached(("norms", layer), compute)

    # -- views ---------------------------------------------------------------------------------------
    def pane_for(self, s: ViewState) -> Pane:
        return registry.PANES[s.pane]

    def output(self, s: ViewState) -> PaneOutput:
        """The pane's output for this state (computes what is missing: may be slow)."""
        p = self.pane_for(s)
        why = p.unavailable(self)
        if why is not None:
            raise ValueError(why)
        key = s.analysis_key()
        return self._cached(("output", key), lambda: p.compute(self, key))

    def ready(self, s: ViewState) -> bool:
        """Whether :meth:`output` returns without slow work (fast pane, or its slow part computed)."""
        p = self.pane_for(s)
        if self.is_cached(("output", s.analysis_key())):
            return True
        if not self.holds_all_attention and not self._digest_covers(s):
            return False  # one more attention pass of a big-token model: in the background
        if not p.slow:
            return True
        return p.slow_key is not None and self.is_cached(p.slow_key(self, s))

    def _digest_covers(self, s: ViewState) -> bool:
        """Whether a digest-only trace answers the state's attention panes without another pass."""
        from ..analysis.digest import DEFAULT_ROLLOUT

        if s.pane == "rollout":
            return ((s.fusion, s.discard, s.start_layer) == DEFAULT_ROLLOUT
                    or self.is_cached(("rollout_matrix", s.fusion, s.discard, s.start_layer)))
        if s.pane in ("attention", "overview"):
            return s.token is None or self.is_cached(("rows", s.token))
        return True

    def picture(self, s: ViewState, size: tuple[int, int] | None = None,
                cursor: tuple[int, int] | None = None) -> np.ndarray:
        """The main picture (uint8 HxWx3) at ``size`` (height, width; default the image's): the map over
        the image, the query patch marked with corner brackets, the token-mode cursor boxed."""
        def compute():
            out = self.output(s)
            img = self.image
            h, w = size or img.shape[:2]
            base = render.upsample(img, h, w)
            grid, sc = out.grid, out.scale
            if grid is None or s.view == "image":
                pic = base
            elif s.view == "map":
                pic = render.heatmap(grid, h, w, s.cmap, lo=sc.lo, hi=sc.hi)
            else:
                pic = render.overlay(base, grid, s.alpha, s.cmap, lo=sc.lo, hi=sc.hi)
            if not self.is_cnn and s.token is not None:
                pos = self.layout.patch_position(s.token)
                if pos is not None:
                    pic = render.mark_corners(pic, self.layout.grid, *pos)
            if cursor is not None:
                pic = render.outline_patch(pic, self.layout.grid, *cursor)
            return pic

        key = (s, size, cursor)
        with self._lock:
            pic = self._pictures.get(key)
            if pic is not None:
                self._pictures.move_to_end(key)
                return pic
        pic = compute()
        with self._lock:
            self._pictures[key] = pic
            while len(self._pictures) > MAX_PICTURES:  # a long session must not keep every picture it drew
                self._pictures.popitem(last=False)
        return pic

    def tile(self, grid: np.ndarray, s: ViewState, size: int) -> np.ndarray:
        """One small-multiple tile: a map over the image, min-max scaled, ``size`` pixels on its long side."""
        h, w = render.fit(*self.image.shape[:2], size, size)
        return render.overlay(render.upsample(self.image, h, w), grid, s.alpha, s.cmap)

    def prediction_line(self, s: ViewState, k: int = 3) -> str:
        if not self.has_classifier:
            return f"backbone: no classifier (features of dim {self.spec.embed_dim})"
        if FINITE not in self.capabilities:
            return "prediction: none (the model's outputs are NaN or infinite)"
        top = " · ".join(f"{name} {p:.1%}" for _, name, p in self.top_k(k))
        t = self.target_of(s)
        which = "the prediction" if s.target is None else "chosen"
        return f"prediction: {top}  |  target: {self.class_name(t)} ({which})"

    def settings_line(self, s: ViewState) -> str:
        parts = [f"model {self.name}", f"image {Path(self.image_path).name}"]
        if not self.is_cnn:
            parts.append(f"query {self.describe_query(s.token)}")
        parts.append(f"{s.view}, {s.cmap}, opacity {s.alpha:.1f}")
        if self.spec.weights_held:
            parts.append(f"weights held as {self.spec.weights_held}")
        if self.spec.random_weights:
            parts.append("RANDOM WEIGHTS")
        return " · ".join(parts)

    def figure(self, s: ViewState):
        """The saved picture of a view: title, picture, colour bar with its range, prediction, settings."""
        out = self.output(s)
        lines = [self.prediction_line(s), self.settings_line(s), *out.text]
        if out.table is not None:  # the side table (e.g. projections per layer), as text rows
            t = out.table
            widths = [max(len(str(r[i])) for r in (t.headers, *t.rows)) for i in range(len(t.headers))]
            fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths))  # noqa: E731
            lines += [t.caption, fmt(t.headers)] + [("> " if i == t.highlight else "  ") + fmt(r)
                                                    for i, r in enumerate(t.rows)]
        if out.tiles is not None:
            rows = [[self.tile(g, s, 96 if max(len(out.tiles), len(out.tiles[0])) <= 8 else 56) for g in r]
                    for r in out.tiles]
            pic = np.asarray(render.small_multiples(rows, *(out.tile_labels or ((), ()))))
            return render.figure(pic, out.title, s.cmap, 0.0, 1.0, out.scale.label, lines, min_side=0)
        pic = self.picture(s, size=render.fit(*self.image.shape[:2], 320, 320))
        cmap = None if out.grid is None or s.view == "image" else s.cmap
        return render.figure(pic, out.title, cmap, out.scale.lo, out.scale.hi, out.scale.label, lines)

    def save(self, s: ViewState, path: str | Path) -> Path:
        return render.save_png(self.figure(s), path)

