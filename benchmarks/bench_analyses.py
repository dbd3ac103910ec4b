"""Every per-image analysis for vit_small_patch16_224 (random weights, 224 px, CPU), as a multiple of
one plain forward pass measured in the same run (issue: analyses). Run: python benchmarks/bench_analyses.py
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

import vitscope
from vitscope.analysis.ablation import head_ablation
from vitscope.analysis.faithfulness import deletion_insertion
from vitscope.analysis.flow import FlowTooLarge, attention_flow
from vitscope.analysis.gradients import attention_gradients, chefer_relevance, gradcam, gradient_rollout
from vitscope.analysis.projection import project_trace


def med(fn, n=5) -> float:
    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def main(name: str = "vit_small_patch16_224") -> None:
    L = vitscope.load(f"timm:{name}")
    m = L.model
    x = torch.randn(3, 224, 224)
    with torch.inference_mode():
        fwd = med(lambda: m(x[None]), 10)
    t = vitscope.trace(L, x)
    target = t.prediction
    rows = {
        "trace": med(lambda: vitscope.trace(L, x)),
        "rollout": med(lambda: vitscope.attention_rollout(t.attn)),
        "class projections (all layers, tokens, 3 positions)": med(lambda: project_trace(t, m, target)),
        "grad-cam": med(lambda: gradcam(m, x, target, t.layout)),
        "attention gradients (Chefer + grad rollout)": med(lambda: attention_gradients(m, x, target)),
        "chefer recursion": med(lambda: chefer_relevance(t.attn, t.attn)),
        "gradient rollout recursion": med(lambda: gradient_rollout(t.attn, t.attn)),
        "head ablation (zero, all heads)": med(lambda: head_ablation(m, t, target), 3),
        "deletion+insertion (one map)": med(lambda: deletion_insertion(m, x, np.random.rand(14, 14), target), 3),
    }
    print(f"{name}: plain forward {fwd:.1f} ms (batch 1, {torch.get_num_threads()} threads)")
    for k, v in rows.items():
        print(f"  {k:<52} {v:8.1f} ms  {v / fwd:6.2f}x forward")
    try:
        attention_flow(t.attn, t.layout)
    except FlowTooLarge as e:
        print(f"  attention flow: refused ({e})")
    small = vitscope.load("timm:vit_tiny_patch16_224", img_size=112)  # 50 tokens
    ts = vitscope.trace(small, torch.randn(3, 112, 112))
    _, info = attention_flow(ts.attn, ts.layout)
    print(f"  attention flow on vit_tiny at 112 px (50 tokens, 12 layers): {info['seconds'] * 1e3:.0f} ms, "
          f"{info['edges']:,} edges, {info['flows']} max-flows")
    tiny = vitscope.load("timm:vit_tiny_patch16_224")
    tt = vitscope.trace(tiny, x)
    with torch.inference_mode():
        tf = med(lambda: tiny.model(x[None]), 10)
    ab = med(lambda: head_ablation(tiny.model, tt), 3)
    print(f"vit_tiny: head ablation of all {12 * 3} heads {ab:.0f} ms = {ab / tf:.1f}x one forward ({tf:.1f} ms)")
    from vitscope.analysis.ablation import head_ablation_estimate

    est = med(lambda: head_ablation_estimate(tiny.model, x, tt.prediction), 3)
    exact = head_ablation(tiny.model, tt).logit_delta.flatten().numpy()
    approx = head_ablation_estimate(tiny.model, x, tt.prediction).flatten().numpy()
    print(f"vit_tiny: first-order ablation estimate {est:.0f} ms = {est / tf:.1f}x one forward; "
          f"correlation with exact (random weights) {np.corrcoef(exact, approx)[0, 1]:.2f}")


if __name__ == "__main__":
    main()
