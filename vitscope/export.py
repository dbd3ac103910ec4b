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
    analyses: bool = True  # projections, Grad-CAM, relevance, head ablation
    faithfulness: bool = False
    convention: str = "paper"  # class-projection convention: "paper" or "lens"
    flow: bool = False  # attention flow (max-flow; small models only)


@dataclass
class ExportResult:
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    top5: list[dict[str, Any]] = field(default_factory=list)
    faithfulness: dict[str, Any] = field(default_factory=dict)


def planned_files(trace: Trace, s: "ExportSettings | None" = None) -> list[str]:
    extra = ["faithfulness.json"] if s is not None and s.faithfulness else []
    extra += ["gradcam.png", "chefer.png"] if s is not None and s.analyses else []
    return (["trace.npz", "prediction.json", "heads.png", "rollout.png"] + extra
            + [f"layers/mean_layer{i:02d}.png" for i in range(trace.num_layers)])


def analysis_arrays(loaded, trace: Trace, s: ExportSettings, target: int) -> dict[str, np.ndarray]:
    """The analysis keys of trace.npz (DESIGN.md): projections, identifiability, Grad-CAM, relevance,
    head ablation."""
    from .analysis.ablation import head_ablation
    from .analysis.gradients import (attention_gradients, chefer_relevance, gradcam, gradient_rollout,
                                     relevance_map)
    from .analysis.projection import project_trace

    model = loaded.model
    out: dict[str, np.ndarray] = {}
    try:
        proj = project_trace(trace, model, target, s.convention)
    except ValueError:
        proj = None  # a backbone without a classifier: no projections
    if proj is not None:
        out.update({
            "proj_topk_idx": proj.topk_idx.numpy().astype(np.int32),
            "proj_topk_prob": proj.topk_prob.numpy().astype(np.float32),
            "proj_target_logit": proj.target_logit.numpy().astype(np.float32),
            "proj_attn_target_logit": proj.attn_target_logit.numpy().astype(np.float32),
            "proj_mlp_target_logit": proj.mlp_target_logit.numpy().astype(np.float32),
            "identifiability": proj.identifiability.numpy().astype(np.float32),
            "identifiability_r": proj.identifiability_r.numpy().astype(np.float32),
            "attn_update_rate": proj.attn_update_rate.numpy().astype(np.float32),
            "mlp_update_rate": proj.mlp_update_rate.numpy().astype(np.float32),
            "proj_convention": np.array(s.convention),
            "identifiability_map": proj.r[:, trace.layout.num_prefix:].mean(0).reshape(trace.layout.grid)
            .numpy().astype(np.float32),
        })
    attn, grad = attention_gradients(model, trace.input, target)
    out["chefer"] = relevance_map(chefer_relevance(attn, grad), trace.layout, s.token).numpy().astype(np.float32)
    out["grad_rollout"] = relevance_map(gradient_rollout(attn, grad), trace.layout, s.token).numpy().astype(
        np.float32)
    out["gradcam"] = gradcam(model, trace.input, target, trace.layout).numpy().astype(np.float32)
    out["head_ablation"] = head_ablation(model, trace, target).logit_delta.numpy().astype(np.float32)
    return out


def faithfulness_table(loaded, trace: Trace, maps: dict[str, np.ndarray], target: int) -> dict:
    from .analysis.faithfulness import deletion_insertion, random_map

    table = {}
    for name, m in {**maps, "random": random_map(trace.layout.grid)}.items():
        d, i = deletion_insertion(loaded.model, trace.input, m, target)
        table[name] = {"deletion_auc": d.auc, "insertion_auc": i.auc}
    return table


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
    if s.flow:  # refuse before anything is written
        from .analysis.flow import FlowTooLarge, check_flow_size

        try:
            check_flow_size(trace.num_layers, trace.num_tokens)
        except FlowTooLarge as e:
            raise VitscopeError(f"--flow: {e}") from None
    names = planned_files(trace, s)
    clash = [n for n in names if (out / n).exists()]
    if clash and not s.overwrite:
        raise VitscopeError(f"already holds {', '.join(clash[:3])}{' ...' if len(clash) > 3 else ''}; "
                            "pass --overwrite to replace them or choose another --out", out)
    (out / "layers").mkdir(parents=True, exist_ok=True)
    result = ExportResult(out, timings=dict(timings or {}))
    t0 = time.perf_counter()
    rollout = attention_rollout(trace.attn, s.head_fusion, s.discard, s.start_layer)
    data = arrays(trace, spec, s, rollout)
    target = int(data["target"])
    if s.analyses:
        data.update(analysis_arrays(loaded, trace, s, target))
    if s.flow:
        from .analysis.flow import FlowTooLarge, attention_flow

        try:
            flow, info = attention_flow(trace.attn, trace.layout, s.token)
        except FlowTooLarge as e:
            raise VitscopeError(f"--flow: {e}") from None
        data["flow"] = flow.numpy().astype(np.float32)
        result.timings["flow"] = info["seconds"]
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
    if s.analyses and "identifiability" in data:
        pred["identifiability_per_layer"] = data["identifiability"].tolist()
        pred["projection_convention"] = s.convention
    result.files.append(atomic_write_text(out / "prediction.json", json.dumps(pred, indent=2)))
    if s.faithfulness:
        maps = {"attention_last_layer_mean": attention_map(trace.attn, trace.layout, trace.num_layers - 1, "mean",
                                                           s.token).grid.numpy(),
                "rollout": data["rollout"]}
        for k in ("grad_rollout", "chefer", "gradcam", "identifiability_map", "flow"):
            if k in data:
                maps[k] = data[k]
        table = faithfulness_table(loaded, trace, maps, target)
        result.files.append(atomic_write_text(out / "faithfulness.json", json.dumps(
            {"target": target, "target_class": spec.classes[target],
             "note": "deletion: lower is better; insertion: higher is better; AUC over the fraction of patches",
             "methods": table}, indent=2)))
        result.faithfulness = table
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
    for key, label in (("gradcam", "Grad-CAM (last block norm1)"), ("chefer", "Chefer relevance")):
        if key in data:
            img = render.with_caption(render.overlay(image, data[key], s.alpha, s.cmap),
                                      f"{label}, class {spec.classes[target]}")
            result.files.append(render.save_png(img, out / f"{key}.png"))
    result.timings["render"] = time.perf_counter() - t0
    return result


def export_cnn(loaded, prepared, out_dir: str | Path, target: int | None = None, overwrite: bool = False,
               cmap: str = "inferno") -> ExportResult:
    """A CNN's export: logits, probs, classes, input, image, target and Grad-CAM on its last stage."""
    import io

    from .analysis.gradients import gradcam

    out = Path(out_dir).expanduser()
    clash = [n for n in ("trace.npz", "prediction.json", "gradcam.png") if (out / n).exists()]
    if clash and not overwrite:
        raise VitscopeError(f"already holds {', '.join(clash)}; pass --overwrite to replace them", out)
    out.mkdir(parents=True, exist_ok=True)
    model = loaded.model
    with torch.inference_mode():
        logits = model(prepared.input[None].to(loaded.device))[0].float().cpu()
    t = int(logits.argmax()) if target is None else target
    cam = gradcam(model, prepared.input, t).numpy().astype(np.float32)
    data = {"logits": logits.numpy(), "probs": logits.softmax(-1).numpy(), "classes": np.array(loaded.spec.classes),
            "input": prepared.input.numpy(), "image": prepared.shown, "target": np.int64(t), "gradcam": cam}
    buf = io.BytesIO()
    np.savez_compressed(buf, **data)
    res = ExportResult(out)
    res.files.append(atomic_write_bytes(out / "trace.npz", buf.getvalue()))
    probs = logits.softmax(-1)
    v, i = probs.topk(min(5, len(probs)))
    res.top5 = [{"index": int(k), "class": loaded.spec.classes[int(k)], "prob": float(p)} for p, k in zip(v, i)]
    res.files.append(atomic_write_text(out / "prediction.json", json.dumps(
        {"top5": res.top5, "target": t, "target_class": loaded.spec.classes[t], "model": loaded.spec.source,
         "kind": "cnn"}, indent=2)))
    img = render.with_caption(render.overlay(prepared.shown, cam, 0.6, cmap), f"Grad-CAM, class {loaded.spec.classes[t]}")
    res.files.append(render.save_png(img, out / "gradcam.png"))
    return res
