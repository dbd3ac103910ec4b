"""``vitscope export``: the headless twin of the inspector's views — pictures and the raw arrays."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import render
from .analysis.attention import attention_map, describe_query, head_statistics
from .analysis.rollout import attention_rollout, rollout_map
from .atomic import atomic_write_bytes, atomic_write_text
from .errors import VitscopeError
from .tracing import Trace

MAP_CONVENTION = ("maps: the query token's attention row over patch tokens on the (rows, cols) patch grid; "
                  "pictures min-max scaled per map, nearest-neighbour upsampled")


@dataclass
class ExportSettings:
    token: int | None = None
    target: int | None = None
    head_fusion: str = "mean"
    discard: float = 0.0
    start_layer: int = 0
    cmap: str = "inferno"
    alpha: float = 0.6
    overwrite: bool = False


@dataclass
class ExportResult:
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    top5: list[dict[str, Any]] = field(default_factory=list)


def planned_files(trace: Trace) -> list[str]:
    return (["trace.npz", "prediction.json", "heads.png", "rollout.png"]
            + [f"layers/mean_layer{i:02d}.png" for i in range(trace.num_layers)])


def top_k(trace: Trace, classes: list[str], k: int = 5) -> list[dict[str, Any]]:
    probs = trace.probs
    vals, idx = probs.topk(min(k, probs.numel()))
    return [{"index": int(i), "class": classes[int(i)], "prob": float(v), "logit": float(trace.logits[int(i)])}
            for v, i in zip(vals, idx)]


def arrays(trace: Trace, spec, s: ExportSettings, rollout: torch.Tensor) -> dict[str, np.ndarray]:
    """The trace.npz keys documented in DESIGN.md and README."""
    target = trace.prediction if s.target is None else s.target
    image = trace.image if trace.image is not None else np.zeros((*spec.img_size, 3), np.uint8)
    return {
        "attn": trace.attn.numpy().astype(np.float32),
        "resid": trace.resid.numpy().astype(np.float32),
        "attn_out": trace.attn_out.numpy().astype(np.float32),
        "mlp_out": trace.mlp_out.numpy().astype(np.float32),
        "logits": trace.logits.numpy().astype(np.float32),
        "probs": trace.probs.numpy().astype(np.float32),
        "prefix_tokens": np.int64(trace.layout.num_prefix),
        "prefix_names": np.array(trace.layout.prefix_names, dtype=str),
        "grid": np.array(trace.layout.grid, dtype=np.int64),
        "classes": np.array(spec.classes, dtype=str),
        "image": image.astype(np.uint8),
        "input": trace.input.numpy().astype(np.float32),
        "token": np.int64(-1 if s.token is None and trace.layout.cls_index is None
                          else (trace.layout.cls_index if s.token is None else s.token)),
        "target": np.int64(target),
        "rollout": rollout_map(rollout, trace.layout, s.token).numpy().astype(np.float32),
        "rollout_head_fusion": np.array(s.head_fusion),
        "rollout_discard": np.float32(s.discard),
        "rollout_start_layer": np.int64(s.start_layer),
        "conventions": np.array(MAP_CONVENTION + "; rollout: 0.5*A+0.5*I, rows renormalised; token -1 = mean of "
                                "patch queries (model without CLS)"),
    }


def export(loaded, trace: Trace, out_dir: str | Path, settings: ExportSettings | None = None,
           timings: dict[str, float] | None = None) -> ExportResult:
    """Write trace.npz, prediction.json, heads.png, rollout.png and per-layer mean maps to ``out_dir``."""
    s = settings or ExportSettings()
    spec = loaded.spec
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise VitscopeError("exists and is not a directory", out)
    names = planned_files(trace)
    clash = [n for n in names if (out / n).exists()]
    if clash and not s.overwrite:
        raise VitscopeError(f"already holds {', '.join(clash[:3])}{' ...' if len(clash) > 3 else ''}; "
                            "pass --overwrite to replace them or choose another --out", out)
    (out / "layers").mkdir(parents=True, exist_ok=True)
    result = ExportResult(out, timings=dict(timings or {}))
    t0 = time.perf_counter()
    rollout = attention_rollout(trace.attn, s.head_fusion, s.discard, s.start_layer)
    data = arrays(trace, spec, s, rollout)
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **data)
    result.files.append(atomic_write_bytes(out / "trace.npz", buf.getvalue()))
    result.top5 = top_k(trace, spec.classes)
    stats = head_statistics(trace.attn, trace.layout, s.token)
    pred = {
        "top5": result.top5, "target": int(data["target"]), "target_class": spec.classes[int(data["target"])],
        "query": describe_query(trace.layout, s.token), "model": spec.source, "family": spec.family,
        "random_weights": spec.random_weights,
        "rollout": {"head_fusion": s.head_fusion, "discard": s.discard, "start_layer": s.start_layer},
        "conventions": MAP_CONVENTION,
        "head_entropy": stats["entropy"].tolist(), "head_distance": stats["distance"].tolist(),
        "head_prefix_attention": stats["prefix"].tolist(),
    }
    result.files.append(atomic_write_text(out / "prediction.json", json.dumps(pred, indent=2)))
    result.timings["analyse"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    image = data["image"]
    L, H = trace.num_layers, trace.num_heads
    tiles = []
    for layer in range(L):
        row = [render.overlay(image, attention_map(trace.attn, trace.layout, layer, h, s.token).grid.numpy(),
                              s.alpha, s.cmap) for h in [*range(H), "mean"]]
        tiles.append(row)
        mean_img = render.with_caption(row[-1], f"layer {layer} mean over heads, query {pred['query']}")
        result.files.append(render.save_png(mean_img, out / "layers" / f"mean_layer{layer:02d}.png"))
    title = f"attention of {pred['query']} | {Path(spec.source).name} | pred {spec.classes[result.top5[0]['index']]}"
    grid_img = render.small_multiples(tiles, [f"L{i}" for i in range(L)], [f"h{j}" for j in range(H)] + ["mean"],
                                      title=title, min_tile=56 if max(L, H) > 8 else 96)
    result.files.append(render.save_png(grid_img, out / "heads.png"))
    roll_img = render.with_caption(render.overlay(image, data["rollout"], s.alpha, s.cmap),
                                   f"rollout ({s.head_fusion}, discard {s.discard:g}), query {pred['query']}")
    result.files.append(render.save_png(roll_img, out / "rollout.png"))
    result.timings["render"] = time.perf_counter() - t0
    return result
