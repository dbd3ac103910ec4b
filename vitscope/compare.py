"""Two models on the same image, headless: ``vitscope compare MODEL_A MODEL_B IMAGE --out DIR``.

What it writes: ``DIR/a/`` and ``DIR/b/`` (exactly what ``vitscope export`` writes for each model, with the
faithfulness table), ``DIR/compare.json`` (both predictions, every map's deletion/insertion scores of both
models in one table best first, the parent link when one model was finetuned from the other) and
``DIR/compare.npz`` (``head_js`` [L, H] when both models have the same layers, heads and tokens; the maps
shown side by side, resampled to the image; the difference), and a PNG per compared map (A | B | B - A).

Definitions. ``head_js[l, h]``: the Jensen-Shannon distance (``scipy.spatial.distance.jensenshannon``, base
2, so in [0, 1]) between the two models' attention rows of the query token (CLS; the mean of the patch
queries without CLS) over all keys, prefix tokens included. Maps are resampled to the image (nearest, so a
patch stays where it was) and each is min-max scaled before the difference, which is then comparable
whatever the two maps' units. Where a model lacks a map (attention for a CNN), its Grad-CAM stands in, and
the JSON says so.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import render
from .atomic import atomic_write_bytes, atomic_write_text
from .errors import VitscopeError

JS_DEFINITION = ("Jensen-Shannon distance (scipy.spatial.distance.jensenshannon, base 2) between the two models' "
                 "attention rows of the query token over all keys, prefix tokens included")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def head_js(rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """[L, H] Jensen-Shannon distances between two models' query rows [L, H, N] (``Session.query_rows``:
    a big-token trace has them from its digest or one attention pass, not from its whole attention)."""
    from scipy.spatial.distance import jensenshannon

    ra, rb = (np.asarray(r, dtype=np.float64) for r in (rows_a, rows_b))
    return np.nan_to_num(jensenshannon(ra, rb, base=2, axis=-1)).astype(np.float32)


def same_attention_shape(a: Any, b: Any) -> bool:
    """Two ViT sessions with the same layers, heads and tokens: their rows compare head by head."""
    def shape(se: Any) -> tuple[int, int, int]:
        return se.spec.num_layers, se.spec.num_heads, se.layout.num_tokens
    return not a.is_cnn and not b.is_cnn and shape(a) == shape(b)


def resample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A patch-grid map at the image's size, nearest: every pixel takes the value of the patch over it."""
    return render.upsample(np.asarray(grid, dtype=np.float32), size[0], size[1])


def _scaled(m: np.ndarray) -> np.ndarray:
    return render.normalise(m).astype(np.float32)


# -- the parent of a finetune ---------------------------------------------------------------------------------
def recorded_parent(loaded: Any) -> str | None:
    return (getattr(loaded.spec, "provenance", None) or {}).get("parent")


def find_parent(child_ref: str, sha: str | None, explicit: str | None = None) -> tuple[Path, str] | None:
    """The file whose sha256 is ``sha`` (the child's recorded parent): ``explicit`` (refused when it is not
    that file), the path the run recorded (run.json's finetune, the checkpoint's train record), files next
    to the child, in its run directory's parent, in ./samples. Returns (path, how it was found) or None."""
    from .loaders.checkpoint import file_hash

    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise VitscopeError("--parent: no such file", path)
        if sha is None:
            raise VitscopeError(f"--parent: {child_ref} records no parent (not a vitscope finetune)", path)
        got = file_hash(path)
        if got != sha:
            raise VitscopeError(f"--parent: not the parent of {Path(child_ref).name} (its sha256 is {got[:12]}…, "
                                f"the checkpoint records {sha[:12]}…)", path)
        return path, "--parent (sha256 checked)"
    if sha is None:
        return None
    child = Path(child_ref).expanduser()
    candidates: list[tuple[Path, str]] = []
    run_json = child.parent / "run.json"
    if run_json.is_file():
        try:
            ft = json.loads(run_json.read_text()).get("finetune")
        except (OSError, ValueError):
            ft = None
        if ft:
            candidates.append((Path(ft).expanduser(), "the run's finetune path"))
    for folder, how in ((child.parent, "next to it"), (child.parent.parent, "in its run directory's parent"),
                        (Path("samples"), "in samples/")):
        if folder.is_dir():
            candidates += [(p, how) for p in sorted(folder.iterdir()) if p.suffix in CHECKPOINT_SUFFIXES]
    seen: set[Path] = set()
    for path, how in candidates:
        try:
            key = path.resolve()
            if key in seen or key == child.resolve() or not path.is_file():
                continue
            seen.add(key)
            if file_hash(path) == sha:
                return path, f"{how} (sha256 matches)"
        except OSError:
            continue
    return None


# -- the comparison -------------------------------------------------------------------------------------------
def _maps(session: Any, target: int | None) -> dict[str, np.ndarray]:
    """The maps a model has, on its patch grid (a CNN: its feature grid), for the compare table."""
    if session.is_cnn:
        return {"gradcam": session.gradcam(target)} if target is not None else {}
    L = session.spec.num_layers
    out = {"attention_last_layer_mean": session.attention_grid(L - 1, "mean", None),
           "rollout": session.rollout_grid(None)}
    if target is not None:
        out["chefer"] = session.relevance("chefer", target, None)
        out["gradcam"] = session.gradcam(target)
    return out


def _pairs(ma: dict[str, np.ndarray], mb: dict[str, np.ndarray]) -> list[tuple[str, str, str, str]]:
    """(name, map of A, map of B, note): the same map on both sides, else Grad-CAM standing in."""
    pairs = []
    for name in ma.keys() | mb.keys():
        a = name if name in ma else ("gradcam" if "gradcam" in ma else None)
        b = name if name in mb else ("gradcam" if "gradcam" in mb else None)
        if a is None or b is None or (a != name and b != name):
            continue
        note = "" if a == b else f"{'A' if a != name else 'B'} has no {name}: its Grad-CAM stands in"
        pairs.append((name, a, b, note))
    order = ["attention_last_layer_mean", "rollout", "chefer", "gradcam"]
    return sorted(pairs, key=lambda p: order.index(p[0]) if p[0] in order else 99)


def check_out(out: str | Path, overwrite: bool) -> None:
    """Refuse a DIR that holds an earlier compare, unless ``overwrite``: the CLI asks before loading the models."""
    out = Path(out).expanduser()
    if not overwrite:
        clash = [n for n in ("compare.json", "compare.npz") if (out / n).exists()]
        if clash:
            raise VitscopeError(f"already holds {', '.join(clash)}; pass --overwrite to replace", out)


def compare(a: Any, b: Any, image: str, out: str | Path, *, names: tuple[str, str] = ("A", "B"),
            parent: dict[str, Any] | None = None, overwrite: bool = False, dataset: Any = None,
            limit: int | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Compare loaded models ``a`` and ``b`` on ``image``; write DIR (see the module docstring); return
    the compare.json object."""
    from .export import ExportSettings, export_image

    out = Path(out).expanduser()
    check_out(out, overwrite)
    settings = ExportSettings(overwrite=overwrite, faithfulness=True)
    # as `vitscope export` does: a big-token trace streams its attention into trace.npz during the trace
    (sa, ra), (sb, rb) = export_image(a, image, out / "a", settings), export_image(b, image, out / "b", settings)
    ta, tb = sa.target_of(settings.state()), sb.target_of(settings.state())
    ma, mb = _maps(sa, ta), _maps(sb, tb)
    size = sa.image.shape[:2]
    arrays: dict[str, np.ndarray] = {}
    # each side's notes first (weights held in half precision, guessed preprocessing): they qualify its numbers
    notes: list[str] = [f"{name}: {n}" for name, side in zip(names, (a, b)) for n in side.spec.caveats]
    pictures = []
    for name, ka, kb, note in _pairs(ma, mb):
        A, B = resample(_scaled(ma[ka]), size), resample(_scaled(mb[kb]), size)
        arrays[f"a_{name}"], arrays[f"b_{name}"] = A, B
        same_grid = ma[ka].shape == mb[kb].shape
        diff = (_scaled(mb[kb]) - _scaled(ma[ka])) if same_grid else (B - A)
        arrays[f"diff_{name}"] = diff.astype(np.float32)
        if note:
            notes.append(f"{name}: {note}")
        pictures.append((name, A, B, resample(diff, size) if same_grid else diff, note))
    info: dict[str, Any] = {}
    if same_attention_shape(sa, sb):
        arrays["head_js"] = head_js(sa.query_rows(None), sb.query_rows(None))
        info["head_js"] = {"definition": JS_DEFINITION, "query": sa.describe_query(None),
                           "mean": float(arrays["head_js"].mean()), "on": "this image"}
        if dataset is not None:
            js, n, acc = dataset_head_js(a, b, dataset, limit, batch_size)
            arrays["head_js"], arrays["head_js_n"] = js, np.int64(n)
            info["head_js"].update(on=f"the mean over {n} images of {dataset.name} {dataset.split}",
                                   mean=float(js.mean()))
            info["accuracy"] = {"a": acc[0], "b": acc[1], "n": n, "dataset": dataset.name, "split": dataset.split}
    elif dataset is not None:
        notes.append("head_js needs the same layers, heads and tokens in both models: not computed")
    layers: dict[str, Any] = {}
    for side, se in (("a", sa), ("b", sb)):
        if se.is_cnn:
            continue
        st = layer_stats(se)
        arrays[f"{side}_entropy"], arrays[f"{side}_distance_px"] = st["entropy"], st["distance_px"]
        layers[side] = {"entropy_mean": st["entropy"].mean(1).tolist(),
                        "distance_px_mean": st["distance_px"].mean(1).tolist()}
    if layers:
        info["layers"] = {"note": "per layer, the mean over heads of each head's attention entropy (nats) and "
                                  "mean attention distance (input pixels: patches x patch size, so patch sizes "
                                  "compare) of the query token; arrays [L, H] in compare.npz", **layers}
        pictures_layers = _layer_chart(layers, names)
    else:
        pictures_layers = None
    table = []
    for side, res in (("a", ra), ("b", rb)):
        for method, row in res.faithfulness.items():
            table.append({"model": side, "method": "random (baseline)" if method == "random" else method, **row,
                          "score": row["insertion_auc"] - row["deletion_auc"]})
    table.sort(key=lambda r: -r["score"])
    summary = {
        "a": {"name": names[0], "model": a.spec.source, "kind": a.spec.kind, "top5": ra.top5,
              "layers_heads": None if sa.is_cnn else [sa.spec.num_layers, sa.spec.num_heads],
              "grid": None if sa.is_cnn else list(sa.layout.grid)},
        "b": {"name": names[1], "model": b.spec.source, "kind": b.spec.kind, "top5": rb.top5,
              "layers_heads": None if sb.is_cnn else [sb.spec.num_layers, sb.spec.num_heads],
              "grid": None if sb.is_cnn else list(sb.layout.grid)},
        "image": str(image),
        "faithfulness": {"note": "score = insertion AUC - deletion AUC (higher: the map finds what the model "
                                 "uses); each model's own target; best first", "table": table},
        "maps": [p[0] for p in pictures], "map_convention": "each map min-max scaled, resampled to the image "
                                                            "(nearest); diff = B - A (on the grid when both grids "
                                                            "match)",
        "parent": parent, "notes": notes, **info,
    }
    import io

    from .export import _finite_json

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(out / "compare.npz", buf.getvalue())
    for name, A, B, D, note in pictures:
        tiles = [[render.overlay(sa.image, A, 0.6, scaled=True), render.overlay(sa.image, B, 0.6, scaled=True),
                  render.colorize(np.clip(D / 2 + 0.5, 0, 1), "turbo", scaled=True)]]
        pic = render.small_multiples(tiles, [], [names[0], names[1], f"{names[1]} - {names[0]} (blue -, red +)"],
                                     title=f"{name}{' (' + note + ')' if note else ''}", min_tile=160)
        render.save_png(pic, out / f"compare-{name}.png")
    if "head_js" in arrays:
        js = arrays["head_js"]
        grid = render.colorize(js, "viridis", scaled=True)
        pic = render.small_multiples([[render.scale_up(grid, 160)]], [], [],
                                     title=f"head_js (rows: layers, columns: heads; 0..1), mean {js.mean():.3f}")
        render.save_png(pic, out / "compare-head_js.png")
    if pictures_layers is not None:
        render.save_png(pictures_layers, out / "compare-layers.png")
    atomic_write_text(out / "compare.json", json.dumps(_finite_json(summary), indent=2))
    return summary


def layer_stats(session: Any) -> dict[str, np.ndarray]:
    """[L, H] attention entropy and mean attention distance in input pixels of a ViT session's heads."""
    stats = session.head_stats(None)
    return {"entropy": stats["entropy"][:, :-1].astype(np.float32),
            "distance_px": (stats["distance"][:, :-1] * float(session.spec.patch_size[0])).astype(np.float32)}


def _layer_chart(layers: dict[str, Any], names: tuple[str, str]) -> Any:
    """Two small line charts (entropy, distance per layer; A blue, B orange), drawn with Pillow."""
    from PIL import Image, ImageDraw

    W, H, pad = 360, 220, 36
    canvas = Image.new("RGB", (2 * W, H + 24), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    font = render._font(12)
    colours = {"a": (90, 150, 230), "b": (240, 160, 60)}
    draw.text((8, 4), f"per layer, mean over heads:  {names[0]} blue, {names[1]} orange", fill=(230, 230, 230),
              font=font)
    for k, (key, label) in enumerate((("entropy_mean", "entropy (nats)"), ("distance_px_mean", "distance (px)"))):
        x0, y0 = k * W + pad, 24 + 16
        w, h = W - 2 * pad, H - 2 * pad
        vals = [v for side in layers.values() for v in side[key]]
        lo, hi = min(vals + [0.0]), max(vals) or 1.0
        draw.rectangle([x0, y0, x0 + w, y0 + h], outline=(120, 120, 120))
        draw.text((x0, y0 - 15), f"{label}  {lo:.2g}..{hi:.3g}", fill=(200, 200, 200), font=font)
        for side, st in layers.items():
            ys = st[key]
            n = max(2, len(ys))
            pts = [(x0 + i * w / (n - 1), y0 + h - (v - lo) / (hi - lo or 1) * h) for i, v in enumerate(ys)]
            draw.line(pts, fill=colours[side], width=2)
            for p in pts:
                draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=colours[side])
        draw.text((x0, y0 + h + 4), "layer: first ... last", fill=(160, 160, 160), font=font)
    return canvas


def dataset_head_js(a: Any, b: Any, dataset: Any, limit: int | None, batch_size: int = 64):
    """head_js averaged over the first ``limit`` images of ``dataset``, and each model's accuracy on them."""
    import torch

    from .data.datasets import iterate_batches
    from .tracing import Capture, trace_batch

    n = len(dataset) if limit is None else min(limit, len(dataset))
    idx = torch.arange(n)
    total = None
    correct = [0, 0]
    for (xa, y, _), (xb, _, _) in zip(iterate_batches(dataset, batch_size, a.spec.data_config, idx),
                                      iterate_batches(dataset, batch_size, b.spec.data_config, idx)):
        digest_only = Capture(attention="none")  # the rows are all this needs: no batch of [L, H, N, N]
        ta, tb = trace_batch(a, xa, capture=digest_only), trace_batch(b, xb, capture=digest_only)
        for k, (p, q) in enumerate(zip(ta, tb)):
            # the digest's rows are the default query's (CLS, or the mean of the patch queries), whatever the
            # trace keeps of its attention
            js = head_js(p.digest.rows, q.digest.rows).astype(np.float64)
            total = js if total is None else total + js
            correct[0] += int(p.logits.argmax()) == int(y[k])
            correct[1] += int(q.logits.argmax()) == int(y[k])
    return (total / n).astype(np.float32), n, (correct[0] / n, correct[1] / n)
