"""Attention forming during training: the probe images' maps per layer and rollout, epoch by epoch.

One view for both the training screen and ``vitscope export RUN_DIR``: :func:`probe_tiles` gives, for an
epoch's recording, one row per probe image (the image, then the chosen head's attention, or the mean over
heads, per layer, then rollout, each min-max scaled over its own map and laid over the image), and
:func:`mosaic` lays rows of tiles into one picture. The export writes the same tiles with labels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import render
from ..atomic import atomic_write_text
from ..errors import VitscopeError


def _grid_map(row: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    return np.asarray(row, dtype=np.float64).reshape(grid)


def probe_tiles(probes: Any, arrays: dict[str, np.ndarray], head: int | None = None,
                cmap: str = render.DEFAULT_CMAP, alpha: float = 0.6) -> list[list[np.ndarray]]:
    """Rows of tiles for one epoch's recording: [image, layer 0 .. L-1, rollout] per probe image.
    ``head`` None: the mean over heads."""
    attn = np.asarray(arrays["attn"], dtype=np.float64)  # [P, L, H, n]
    roll = np.asarray(arrays["rollout"], dtype=np.float64)  # [P, n]
    rows = []
    for p in range(attn.shape[0]):
        image = probes.images[p]
        per_layer = attn[p].mean(1) if head is None else attn[p][:, head]
        tiles = [image] + [render.overlay(image, _grid_map(m, probes.grid), alpha, cmap) for m in per_layer]
        tiles.append(render.overlay(image, _grid_map(roll[p], probes.grid), alpha, cmap))
        rows.append(tiles)
    return rows


def column_labels(n_layers: int) -> list[str]:
    return ["image"] + [f"L{i}" for i in range(n_layers)] + ["rollout"]


def mosaic(rows: Sequence[Sequence[np.ndarray]], gap: int = 1, background: int = 0) -> np.ndarray:
    """Equal tiles in a grid, ``gap`` pixels apart: one uint8 [H, W, 3] picture."""
    th, tw = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (th + gap) - gap, n_cols * (tw + gap) - gap, 3), background, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, t in enumerate(row):
            out[i * (th + gap):i * (th + gap) + th, j * (tw + gap):j * (tw + gap) + tw] = t
    return out


def probe_caption(probes: Any, arrays: dict[str, np.ndarray], p: int, ascii: bool = False) -> str:
    """'#12 Sandal → Sneaker 61% ✗': the probe's dataset index, label and the prediction at that epoch
    (``ascii``: '->' and '(wrong)', for pictures drawn with Pillow's default font, which has no arrows)."""
    probs = np.asarray(arrays["probs"], dtype=np.float64)[p]
    k = int(probs.argmax())
    label = int(probes.label[p])
    arrow, wrong = ("->", " (wrong)") if ascii else ("→", " ✗")
    mark = "" if k == label else wrong
    return f"#{int(probes.index[p])} {probes.classes[label]} {arrow} {probes.classes[k]} {probs[k]:.0%}{mark}"


def export_run(run_dir: str | Path, out: str | Path, head: int | None = None, cmap: str = render.DEFAULT_CMAP,
               overwrite: bool = False) -> list[Path]:
    """Write a run's probe recordings as pictures: ``probes.png`` (every probe at the last recorded epoch)
    and ``probe-K.png`` per probe (rows = the recorded epochs: attention forming), plus ``probes.json``
    (what each file shows, the epochs and the predictions per epoch)."""
    from ..train.probes import load_probes

    run_dir, out = Path(run_dir).expanduser(), Path(out).expanduser()
    probes = load_probes(run_dir)
    if probes is None or not probes.epochs:
        raise VitscopeError("the run recorded no probe attention (a CNN, or a run from before probes)", run_dir)
    files = ["probes.png", "probes.json"] + [f"probe-{k}.png" for k in range(probes.n)]
    if not overwrite:
        clash = [f for f in files if (out / f).exists()]
        if clash:
            raise VitscopeError(f"{', '.join(clash)} already there; pass --overwrite to replace", out)
    per_epoch = {e: probes.epoch(e) for e in probes.epochs}
    last = probes.epochs[-1]
    L, H = per_epoch[last]["attn"].shape[1:3]
    if head is not None and not 0 <= head < H:
        raise VitscopeError(f"--head {head}: the model has heads 0..{H - 1} (or mean)")
    out.mkdir(parents=True, exist_ok=True)
    what = "mean over heads" if head is None else f"head {head}"
    written = []
    rows = probe_tiles(probes, per_epoch[last], head, cmap)
    labels = [f"{p}: {probe_caption(probes, per_epoch[last], p, ascii=True)}" for p in range(probes.n)]
    pic = render.small_multiples(rows, labels, column_labels(L),
                                 title=f"{run_dir.name}: probe attention after epoch {last} ({what})", min_tile=84)
    written.append(render.save_png(pic, out / "probes.png"))
    for p in range(probes.n):
        strip = [probe_tiles(probes, per_epoch[e], head, cmap)[p] for e in probes.epochs]
        rows = [f"epoch {e}: {probes.classes[int(np.argmax(per_epoch[e]['probs'][p]))]}" for e in probes.epochs]
        pic = render.small_multiples(strip, rows, column_labels(L),
                                     title=f"probe {p}: #{int(probes.index[p])}, labelled "
                                           f"{probes.classes[int(probes.label[p])]} (rows: epoch and prediction; "
                                           f"{what})", min_tile=84)
        written.append(render.save_png(pic, out / f"probe-{p}.png"))
    summary = {"run_dir": str(run_dir), "epochs": probes.epochs, "head": "mean" if head is None else head,
               "columns": column_labels(L), "dataset": str(probes.dataset), "split": str(probes.split),
               "probes": [{"file": f"probe-{p}.png", "index": int(probes.index[p]),
                           "label": probes.classes[int(probes.label[p])],
                           "predictions": {str(e): probes.classes[int(np.argmax(per_epoch[e]["probs"][p]))]
                                           for e in probes.epochs}} for p in range(probes.n)]}
    import json

    atomic_write_text(out / "probes.json", json.dumps(summary, indent=2))
    written.append(out / "probes.json")
    return written
