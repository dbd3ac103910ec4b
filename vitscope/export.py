"""``vitscope export``: the headless twin of the inspector. It loops over the same pane registry
through the same Session as the TUI, so every PNG is what the screen showed; the raw arrays go to
``trace.npz`` (keys documented in DESIGN.md and README).

Everything is written into a hidden folder beside the target (``.NAME.partial-PID``) and moved in
only when complete, so an export killed half-way, or stopped by a full disk, leaves no output that
reads as complete and nothing of a previous export replaced; a later export removes the partial
folder a killed one left. trace.npz is streamed entry by entry, the attention layer by layer: by
:func:`export_image` (the CLI) during the trace itself, as the forward makes each layer's attention.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .atomic import UMASK, atomic_write_text
from .errors import VitscopeError
from .npzstream import NpzWriter
from .views import PANES, Session, ViewState
from .views.panes import CLASSIFIER

MAP_CONVENTION = ("maps: the query token's attention row over patch tokens on the (rows, cols) patch grid; "
                  "pictures coloured over each map's min..max (the colour bar says the range), "
                  "nearest-neighbour upsampled")


@dataclass
class ExportSettings:
    token: int | None = None
    target: int | None = None
    head_fusion: str = "mean"
    discard: float = 0.0
    start_layer: int = 0
    cmap: str = "viridis"
    alpha: float = 0.6
    overwrite: bool = False
    analyses: bool = True  # projections, Grad-CAM, relevance, head ablation
    faithfulness: bool = False
    convention: str = "paper"  # class-projection convention: "paper" or "lens"
    flow: bool = False  # attention flow (max-flow; small models only)
    view: str | None = None  # only this pane's picture
    layer: int = 0  # the layer and head of --view attention
    head: int | str = "mean"
    layers: tuple[int, ...] | None = None  # blocks whose attn, resid, attn_out, mlp_out go to trace.npz (None: all)
    dtype: str = "float32"  # of those arrays in trace.npz: float32 or float16

    def state(self, pane: str = "attention") -> ViewState:
        return ViewState(pane=pane, layer=self.layer, head=self.head, token=self.token, target=self.target,
                         fusion=self.head_fusion, discard=self.discard, start_layer=self.start_layer, cmap=self.cmap,
                         alpha=self.alpha)


@dataclass
class ExportResult:
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    top5: list[dict[str, Any]] = field(default_factory=list)
    faithfulness: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def exported_panes(session: Session, s: ExportSettings) -> list[str]:
    """The panes written as PNG: every pane this model can show (only the fast ones without analyses)."""
    if s.view is not None:
        return [s.view]
    return [p.name for p in session.available_panes()
            if p.export_name and (s.analyses or not p.slow)]


def pane_file(name: str, s: ExportSettings) -> str:
    p = PANES[name]
    if s.view == name and name == "attention":
        return f"attention_L{s.layer}_{'mean' if s.head == 'mean' else f'h{s.head}'}.png"
    return p.export_name or f"{name}.png"


def planned_files(session: Session, s: ExportSettings) -> list[str]:
    names = [pane_file(n, s) for n in exported_panes(session, s)]
    if s.view is not None:
        return names
    names = ["trace.npz", "prediction.json", *names]
    if s.faithfulness and session.has_classifier:
        names.append("faithfulness.json")
    if not session.is_cnn:
        names += [f"layers/mean_layer{i:02d}.png" for i in range(session.spec.num_layers)]
    return names


def check_settings(session: Session, s: ExportSettings) -> None:
    """Refuse bad settings before anything is written."""
    if s.view is not None:
        if s.view not in PANES:
            raise VitscopeError(f"--view {s.view!r}: unknown pane (panes: {', '.join(PANES)})")
        why = PANES[s.view].unavailable(session)
        if why:
            raise VitscopeError(f"--view {s.view}: {why}")
    if session.is_cnn:
        return
    L, H = session.spec.num_layers, session.spec.num_heads
    if not 0 <= s.layer < L:
        raise VitscopeError(f"--layer {s.layer}: the model has layers 0..{L - 1}")
    if s.head != "mean" and not 0 <= int(s.head) < H:
        raise VitscopeError(f"--head {s.head}: the model has heads 0..{H - 1} (or mean)")
    if s.flow:
        from .analysis.flow import FlowTooLarge, check_flow_size

        try:
            check_flow_size(L, session.layout.num_tokens)
        except FlowTooLarge as e:
            raise VitscopeError(f"--flow: {e}") from None


def _finite_json(x: Any) -> Any:
    """Strict JSON: non-finite floats become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_json(v) for v in x]
    return x


def top_k(session: Session, k: int = 5) -> list[dict[str, Any]]:
    return [{"index": i, "class": name, "prob": p, "logit": float(session.logits[i])}
            for i, name, p in session.top_k(k)]


def parse_layers(text: str, num_layers: int) -> tuple[int, ...]:
    """``0,5,-1`` or ``0..3,-1`` (inclusive ranges; negative counts from the end) -> sorted block indices."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            ends = [int(x) for x in part.split("..")] if ".." in part else [int(part)] * 2
        except ValueError:
            raise VitscopeError(f"--layers {text!r}: expected indices and ranges like 0,5,-1 or 0..3") from None
        lo, hi = (e + num_layers if e < 0 else e for e in ends)
        if not (0 <= lo < num_layers and 0 <= hi < num_layers) or lo > hi:
            raise VitscopeError(f"--layers {text!r}: {part!r} is outside the model's layers 0..{num_layers - 1}")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))


def export_layers(session: Session, s: ExportSettings) -> list[int]:
    return list(range(session.spec.num_layers)) if s.layers is None else list(s.layers)


def stream_arrays(session: Session, s: ExportSettings) -> Iterator[tuple[str, np.ndarray]]:
    """``resid``, ``attn_out``, ``mlp_out`` (and ``attn_proj``, ``mlp_fc2`` of LayerScale models: the paper's
    read points, before LayerScale) of the exported layers, one at a time: each is made just before it is
    written (a view of the trace when nothing needs converting), so no two copies are held at once."""
    tr, L = session.trace, session.spec.num_layers
    layers = export_layers(session, s)
    every = s.layers is None or layers == list(range(L))
    dtype = np.dtype(s.dtype)

    def pick(t: Any, rows: list[int]) -> np.ndarray:
        a = t.numpy()
        return (a if every else a[rows]).astype(dtype, copy=False)

    yield "resid", pick(tr.resid, layers + [L])
    if not tr.has_updates:  # a backbone's trace: the updates come from an UpdateSpool
        return
    for name in ("attn_out", "mlp_out") + (() if tr.attn_proj is None else ("attn_proj", "mlp_fc2")):
        yield name, pick(getattr(tr, name), layers)


class UpdateSpool:
    """The sublayer updates of a trace that does not hold them (a backbone's: ``Capture.updates``), written to
    raw files in the output folder as the forward makes them (an update sink), then copied into trace.npz one
    layer at a time: ``attn_out``, ``mlp_out`` and, for LayerScale models, ``attn_proj``, ``mlp_fc2`` (the
    added updates are those times the gammas: the multiply the trace does, bit for bit). Plain file writes:
    the page cache they fill is not the process's memory, so a backbone's export holds none of the four
    [L, N, D] arrays (270 MB of them for ViT-L/14@518 held at once before)."""

    def __init__(self, folder: Path, model: Any, layers: list[int], dtype: Any) -> None:
        from .analysis.hooks import has_layer_scale, layer_scale_gammas

        self.folder, self.layers, self.dtype = folder, list(layers), np.dtype(dtype)
        self.wanted = set(layers)
        self.gammas = layer_scale_gammas(model.blocks) if any(has_layer_scale(b) for b in model.blocks) else None
        self.files: dict[str, Any] = {}
        self.shape: tuple[int, ...] | None = None

    def __call__(self, kind: str, layer: int, t: Any) -> None:
        if layer not in self.wanted:
            return
        a = t[0].float().cpu()
        self._write(kind, a)
        if self.gammas is not None and kind in ("attn_proj", "mlp_fc2"):
            g = self.gammas[0 if kind == "attn_proj" else 1][layer]
            self._write("attn_out" if kind == "attn_proj" else "mlp_out", a * g[None, :])

    def _write(self, kind: str, a: Any) -> None:
        f = self.files.get(kind)
        if f is None:
            f = self.files[kind] = open(self.folder / f".{kind}.raw", "wb")
        self.shape = tuple(a.shape)
        f.write(a.numpy().astype(self.dtype, copy=False).tobytes())

    def write_into(self, npz: NpzWriter) -> None:
        """Copy the spooled arrays into ``npz`` (one layer in memory at a time), then remove their files."""
        try:
            for kind in ("attn_out", "mlp_out", "attn_proj", "mlp_fc2"):
                f = self.files.get(kind)
                if f is None:
                    continue
                f.close()
                rows = int(np.prod(self.shape)) * self.dtype.itemsize
                with open(f.name, "rb") as r, npz.stream(kind, (len(self.layers), *self.shape), self.dtype) as put:
                    for _ in self.layers:
                        put(np.frombuffer(r.read(rows), dtype=self.dtype).reshape(self.shape))
        finally:
            self.close()

    def close(self) -> None:
        for f in self.files.values():
            f.close()
            Path(f.name).unlink(missing_ok=True)
        self.files.clear()


def spool_updates(session: Session, s: ExportSettings, folder: Path) -> UpdateSpool:
    """A trace without its updates (a backbone session, e.g. the inspector's): one more forward pass, nothing
    kept, spools them for trace.npz. Its attention is computed as the trace's was (unfused; head by head when
    the trace kept only the digest), so the updates are the trace's own, bit for bit."""
    from .analysis.hooks import Recorder
    from .tracing import run_traced

    model = session.loaded.model
    spool = UpdateSpool(folder, model, export_layers(session, s), s.dtype)
    rec = Recorder(model, keep_stream=False, keep_attention=False, keep_updates=False, derive_updates=True,
                   update_sinks=[spool], heads_one_at_a_time=session.trace.attn is None)
    try:
        run_traced(model, session.input[None].to(session.loaded.device), recorder=rec)
    except BaseException:
        spool.close()
        raise
    return spool


def vit_arrays(session: Session, s: ExportSettings) -> dict[str, np.ndarray]:
    """The trace.npz keys of a ViT (DESIGN.md, README), but ``attn`` (:func:`write_attention`) and the
    stream's arrays (:func:`stream_arrays`)."""
    tr, lay = session.trace, session.layout
    target = session.target_of(s.state())
    layers = export_layers(session, s)
    return {
        "layers": np.array(layers, dtype=np.int64),
        "logits": tr.logits.numpy().astype(np.float32),
        "probs": tr.probs.numpy().astype(np.float32),
        "prefix_tokens": np.int64(lay.num_prefix),
        "prefix_names": np.array(lay.prefix_names, dtype=str),
        "grid": np.array(lay.grid, dtype=np.int64),
        "classes": np.array(session.spec.classes, dtype=str),
        "image": session.image.astype(np.uint8),
        "input": tr.input.numpy().astype(np.float32),
        "token": np.int64(-1 if s.token is None and lay.cls_index is None
                          else (lay.cls_index if s.token is None else s.token)),
        "target": np.int64(-1 if target is None else target),
        "rollout": session.rollout_grid(s.token, s.head_fusion, s.discard, s.start_layer).astype(np.float32),
        "rollout_head_fusion": np.array(s.head_fusion),
        "rollout_discard": np.float32(s.discard),
        "rollout_start_layer": np.int64(s.start_layer),
        "conventions": np.array(MAP_CONVENTION + "; rollout: 0.5*A+0.5*I, rows renormalised; token -1 = mean of "
                                "patch queries (model without CLS); target -1 = no classifier (backbone)"),
        "token_norms": np.stack([session.token_norms(i) for i in range(session.spec.num_layers)]).astype(np.float32),
    }


def analysis_arrays(session: Session, s: ExportSettings, target: int) -> dict[str, np.ndarray]:
    """Projections, identifiability, Grad-CAM, relevance and head ablation, from the session's cache
    (the same numbers the inspector shows)."""
    from .analysis.projection import RESIDUAL_SOURCES

    source = "prediction" if s.target is None else "chosen"  # an exported image file has no dataset label
    proj = session.projections(target, s.convention, source)
    lay = session.layout
    return {
        "proj_topk_idx": proj.topk_idx.numpy().astype(np.int32),
        "proj_topk_prob": proj.topk_prob.numpy().astype(np.float32),
        "proj_target_logit": proj.target_logit.numpy().astype(np.float32),
        "proj_attn_target_logit": proj.attn_target_logit.numpy().astype(np.float32),
        "proj_mlp_target_logit": proj.mlp_target_logit.numpy().astype(np.float32),
        "identifiability": proj.identifiability.numpy().astype(np.float32),
        "identifiability_r": proj.identifiability_r.numpy().astype(np.float32),
        "attn_update_rate": proj.attn_update_rate.numpy().astype(np.float32),
        "mlp_update_rate": proj.mlp_update_rate.numpy().astype(np.float32),
        "block_change_rate": proj.block_change_rate.numpy().astype(np.float32),
        "residual_match": proj.residual_match.numpy().astype(np.float32),
        "residual_match_sources": np.array(RESIDUAL_SOURCES),
        "proj_convention": np.array(s.convention),
        "proj_read_point": np.array(proj.read_point),
        "target_source": np.array(proj.target_source),
        "identifiability_map": proj.r[:, lay.num_prefix:].mean(0).reshape(lay.grid).numpy().astype(np.float32),
        "gradcam": session.gradcam(target).astype(np.float32),
        "chefer": session.relevance("chefer", target, s.token).astype(np.float32),
        "grad_rollout": session.relevance("grad_rollout", target, s.token).astype(np.float32),
        "head_ablation": session.head_ablation(target).astype(np.float32),
        **paper_arrays(session, s, target, source),
    }


def paper_arrays(session: Session, s: ExportSettings, target: int, source: str) -> dict[str, np.ndarray]:
    """Vilas et al.'s further analyses: key-value memories, class maps, context perturbations (README)."""
    mem = session.memories(target, source)
    out: dict[str, np.ndarray] = {}
    for kind in ("attn", "mlp"):
        out[f"kv_agreement_{kind}"] = mem.kv_agreement[kind].numpy().astype(np.float32)
        out[f"kv_agreement_{kind}_chance"] = mem.kv_agreement_chance[kind].numpy().astype(np.float32)
        out[f"memory_composition_{kind}"] = mem.composition[kind].numpy().astype(np.float32)
        out[f"class_value_agreement_{kind}"] = mem.class_value[kind].numpy().astype(np.float32)
        out[f"class_value_agreement_{kind}_random"] = mem.class_value_random[kind].numpy().astype(np.float32)
    query = s.token if s.token is not None else session.layout.cls_index
    if query is not None:  # a model without CLS needs a query token for its class maps
        maps = session.class_maps(target, query)
        out["class_maps"] = maps.astype(np.float32)
        out["class_map_sum"] = maps.sum((0, 1)).astype(np.float32)
    pert = session.context_perturbation(target)
    out["perturb_names"] = np.array(pert.names)
    out["perturb_identifiability"] = pert.identifiability.numpy().astype(np.float32)
    out["perturb_identifiability_r"] = pert.identifiability_r.numpy().astype(np.float32)
    out["perturb_logits"] = pert.logits.numpy().astype(np.float32)
    return out


def faithfulness_table(session: Session, maps: dict[str, np.ndarray], target: int) -> dict:
    from .analysis.faithfulness import deletion_insertion, random_map

    table = {}
    for name, m in {**maps, "random": random_map(session.layout.grid)}.items():
        d, i = deletion_insertion(session.loaded.model, session.input, m, target)
        table[name] = {"deletion_auc": d.auc, "insertion_auc": i.auc}
    return table


def write_attention(npz: NpzWriter, session: Session, s: ExportSettings) -> None:
    """``attn`` [K, H, N, N] of the exported layers, one layer at a time: from the trace when it holds
    them, else from one more attention pass of the model (a big-token trace keeps only a digest)."""
    tr, layers = session.trace, export_layers(session, s)
    H, N = session.spec.num_heads, session.layout.num_tokens
    held = None if tr.attn is None else list(range(session.spec.num_layers)) if tr.layers is None else list(tr.layers)
    with npz.stream("attn", (len(layers), H, N, N), s.dtype) as put:
        if held is not None and set(layers) <= set(held):
            for layer in layers:
                put(tr.attn[held.index(layer)].float().numpy())
        else:
            wanted = set(layers)
            session.attention_pass(lambda i, a: put(a[0].float().cpu().numpy()) if i in wanted else None)


PARTIAL = ".partial-"  # .NAME.partial-PID-XXXX: an export under way (or killed: the next one removes it)


def _remove_stale_partials(out: Path) -> None:
    for d in out.parent.glob(f".{out.name}{PARTIAL}*"):
        try:
            pid = int(d.name[len(f".{out.name}{PARTIAL}"):].split("-")[0])
            os.kill(pid, 0)  # still running: not ours to remove
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError, IndexError):
            continue


def _move_in(tmp: Path, out: Path) -> None:
    """A fresh target: one rename. An existing folder (--overwrite, or other files of the user): each
    file replaced whole by a rename; nothing else in it is touched."""
    if not out.exists():
        os.rename(tmp, out)
        return
    for src in sorted(p for p in tmp.rglob("*") if p.is_file()):
        dst = out / src.relative_to(tmp)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    shutil.rmtree(tmp)


def _output_folder(out_dir: str | Path) -> Path:
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise VitscopeError("exists and is not a directory", out)
    return out


def _refuse_clash(out: Path, names: list[str], s: ExportSettings) -> None:
    clash = [n for n in names if (out / n).exists()]
    if clash and not s.overwrite:
        raise VitscopeError(f"already holds {', '.join(clash[:3])}{' ...' if len(clash) > 3 else ''}; "
                            "pass --overwrite to replace them or choose another --out", out)


@contextlib.contextmanager
def _partial_folder(out: Path) -> Iterator[Path]:
    """The hidden folder the export is written into; removed when anything fails (the caller moves it in)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL}{os.getpid()}-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~UMASK)  # as mkdir would make it: mkdtemp's 0700 would hide the export from others
    try:
        yield tmp
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES):
            kept = "the previous export is intact" if out.exists() else "nothing was written"
            raise VitscopeError(f"cannot write the export: {os.strerror(e.errno)} ({kept})", out) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _moved(result: ExportResult, tmp: Path, out: Path) -> ExportResult:
    _move_in(tmp, out)
    result.out_dir = out
    result.files = [out / f.relative_to(tmp) for f in result.files]
    return result


def export(session: Session, out_dir: str | Path, settings: ExportSettings | None = None,
           timings: dict[str, float] | None = None) -> ExportResult:
    """Write trace.npz, prediction.json and one PNG per pane (``settings.view``: only that pane)."""
    s = settings or ExportSettings()
    out = _output_folder(out_dir)
    check_settings(session, s)
    _refuse_clash(out, planned_files(session, s), s)
    with _partial_folder(out) as tmp:
        return _moved(_write_all(session, s, tmp, timings), tmp, out)


def export_image(loaded: Any, image: Any, out_dir: str | Path, settings: ExportSettings | None = None,
                 timings: dict[str, float] | None = None) -> tuple[Session, ExportResult]:
    """Trace ``image`` and export it (``vitscope export``). The trace hands each exported layer's attention
    straight to trace.npz as the forward makes it, so a big-token trace (which keeps only the digest) needs
    no second attention pass and holds one layer's attention at a time (ViT-L/14@518: 120 MB of 2.9 GB).
    Returns the session (what was exported) and the result; ``timings`` gets ``trace``."""
    from .tracing import Capture

    s = settings or ExportSettings()
    timings = dict(timings or {})
    if loaded.spec.kind == "cnn" or s.view is not None:  # no attention to stream (--view writes no trace.npz)
        t0 = time.perf_counter()
        session = Session.open(loaded, image, capture=Capture(layers=s.layers, attn_dtype=s.dtype))
        timings["trace"] = time.perf_counter() - t0
        return session, export(session, out_dir, s, timings)
    out = _output_folder(out_dir)
    _refuse_clash(out, ["trace.npz", "prediction.json"], s)  # before the long trace; every file is checked after it
    spec = loaded.spec
    layers = list(range(spec.num_layers)) if s.layers is None else list(s.layers)
    shape = (len(layers), spec.num_heads, spec.layout.num_tokens, spec.layout.num_tokens)
    wanted = set(layers)
    with _partial_folder(out) as tmp:
        # a backbone's trace holds no updates (nothing reads them but this file): they are spooled to disk
        spool = UpdateSpool(tmp, loaded.model, layers, s.dtype) if spec.num_classes == 0 else None
        with NpzWriter(tmp / "trace.npz") as npz, contextlib.ExitStack() as cleanup:
            if spool is not None:
                cleanup.callback(spool.close)
            t0 = time.perf_counter()
            with npz.stream("attn", shape, s.dtype) as put:
                def to_npz(layer: int, attn: Any) -> None:  # [1, H, N, N], the layers in order
                    if layer in wanted:
                        for head in attn[0]:  # one head at a time: a float16 copy of a head, not of the layer
                            put(head.float().cpu().numpy())

                # with --layers the views read the digest, not the kept layers: keep none (they are in the file)
                keep = "auto" if s.layers is None or s.flow else "none"
                session = Session.open(loaded, image, capture=Capture(
                    layers=s.layers, attention=keep, attn_dtype=s.dtype, sinks=(to_npz,),
                    update_sinks=() if spool is None else (spool,)))
            timings["trace"] = time.perf_counter() - t0
            check_settings(session, s)
            _refuse_clash(out, planned_files(session, s), s)
            result = _write_all(session, s, tmp, timings, npz, spool)
        return session, _moved(result, tmp, out)


def _write_all(session: Session, s: ExportSettings, out: Path, timings: dict[str, float] | None,
               npz: NpzWriter | None = None, spool: UpdateSpool | None = None) -> ExportResult:
    """``npz``: trace.npz already open with its attention written (:func:`export_image`), else made here."""
    result = ExportResult(out, timings=dict(timings or {}))
    if session.has_classifier and not np.isfinite(session.logits).all():
        result.notes.append("the model's outputs are not finite (NaN/Inf weights?): class-dependent maps skipped")
    t0 = time.perf_counter()
    if s.view is None:
        _write_data(session, s, out, result, npz, spool)
    result.timings["analyse"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for name in exported_panes(session, s):
        if PANES[name].requires & {CLASSIFIER} and result.notes:
            continue
        result.files.append(session.save(s.state(name), out / pane_file(name, s)))
    if s.view is None and not session.is_cnn:
        (out / "layers").mkdir(exist_ok=True)
        for layer in range(session.spec.num_layers):
            st = s.state("attention").with_(layer=layer, head="mean")
            result.files.append(session.save(st, out / "layers" / f"mean_layer{layer:02d}.png"))
    result.timings["render"] = time.perf_counter() - t0
    return result


def _write_data(session: Session, s: ExportSettings, out: Path, result: ExportResult,
                npz: NpzWriter | None, spool: UpdateSpool | None = None) -> None:
    spec = session.spec
    target = session.target_of(s.state())
    usable = target is not None and not result.notes
    if session.is_cnn:
        data = {"logits": session.logits.astype(np.float32), "probs": session.probs.astype(np.float32),
                "classes": np.array(spec.classes), "input": session.input.numpy().astype(np.float32),
                "image": session.image, "target": np.int64(target)}
        if usable:
            data["gradcam"] = session.gradcam(target).astype(np.float32)
    else:
        data = vit_arrays(session, s)
        if s.analyses and usable:
            data.update(analysis_arrays(session, s, target))
        if s.flow:
            from .analysis.flow import FlowTooLarge, attention_flow

            try:
                flow, info = attention_flow(session.trace.attn, session.layout, s.token)
            except FlowTooLarge as e:
                raise VitscopeError(f"--flow: {e}") from None
            data["flow"] = flow.numpy().astype(np.float32)
            result.timings["flow"] = info["seconds"]
    with contextlib.nullcontext(npz) if npz is not None else NpzWriter(out / "trace.npz") as npz:
        if not session.is_cnn:
            if "attn.npy" not in npz.names:
                write_attention(npz, session, s)
            for name, value in stream_arrays(session, s):
                npz.add(name, value)
                del value  # before the next one is made
            if not session.trace.has_updates:
                (spool or spool_updates(session, s, out)).write_into(npz)
        for name, value in data.items():
            npz.add(name, value)
    result.files.append(out / "trace.npz")
    result.top5 = top_k(session)
    pred: dict[str, Any] = {
        "top5": result.top5, "target": target, "target_class": None if target is None else spec.classes[target],
        "target_is": "none (no classifier)" if target is None else ("prediction" if s.target is None else "chosen"),
        "model": spec.source, "family": spec.family, "kind": spec.kind, "random_weights": spec.random_weights,
        "notes": list(spec.notes) + result.notes, "conventions": MAP_CONVENTION,
    }
    if not session.is_cnn:
        stats = {k: v[:, :-1] for k, v in session.head_stats(s.token).items()}  # heads only
        pred.update({"query": session.describe_query(s.token),
                     "rollout": {"head_fusion": s.head_fusion, "discard": s.discard, "start_layer": s.start_layer},
                     "head_entropy": stats["entropy"].tolist(), "head_distance": stats["distance"].tolist(),
                     "head_prefix_attention": stats["prefix"].tolist()})
        if "identifiability" in data:
            pred["identifiability_per_layer"] = data["identifiability"].tolist()
            pred["projection_convention"] = s.convention
    result.files.append(atomic_write_text(out / "prediction.json", json.dumps(_finite_json(pred), indent=2)))
    if s.faithfulness and usable:
        maps = {"gradcam": data["gradcam"]} if session.is_cnn else {
            "attention_last_layer_mean": session.attention_grid(spec.num_layers - 1, "mean", s.token),
            "rollout": data["rollout"]}
        for k in ("grad_rollout", "chefer", "gradcam", "identifiability_map", "flow"):
            if k in data:
                maps[k] = data[k]
        table = faithfulness_table(session, maps, target)
        result.files.append(atomic_write_text(out / "faithfulness.json", json.dumps(_finite_json(
            {"target": target, "target_class": spec.classes[target],
             "note": "deletion: lower is better; insertion: higher is better; AUC over the fraction of patches",
             "methods": table}), indent=2)))
        result.faithfulness = table
