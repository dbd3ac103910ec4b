"""Trace overhead: vitscope.trace() vs plain model(x), and rollout time (issue: core).

Ratios are against the plain fused-attention PyTorch forward measured in the same run, batch 1,
224 px, CPU, medians over interleaved repeats. Run: python benchmarks/bench_trace.py
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import vitscope
from vitscope.loaders import Loaded
from vitscope.loaders.timm_vit import make_spec
from vitscope.tracing import run_traced


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_model(name: str, repeats: int) -> dict:
    import timm

    model = timm.create_model(name, pretrained=False).eval()
    loaded = Loaded(model, make_spec(model, family="timm", arch=name, kwargs={}, source=name, classes=None,
                                     data_config=None, random_weights=True))
    x = torch.randn(1, 3, 224, 224)

    def plain():
        with torch.inference_mode():
            model(x)

    def hooks_only():  # the capture itself, without copying results out
        run_traced(model, x)

    def full():  # what users call: capture + stacking into a CPU float32 Trace
        vitscope.trace(loaded, x[0])

    for f in (plain, hooks_only, full):  # warm up
        f(), f()
    rounds = {"plain": [], "capture": [], "trace": []}
    for _ in range(repeats):  # interleave so drift hits all three alike
        rounds["plain"].append(median_ms(plain, 1))
        rounds["capture"].append(median_ms(hooks_only, 1))
        rounds["trace"].append(median_ms(full, 1))
    med = {k: statistics.median(v) for k, v in rounds.items()}
    return {"model": name, **{f"{k}_ms": round(v, 1) for k, v in med.items()},
            "capture_ratio": round(med["capture"] / med["plain"], 3),
            "trace_ratio": round(med["trace"] / med["plain"], 3)}


def bench_rollout(repeats: int) -> dict:
    attn = torch.softmax(torch.randn(12, 12, 197, 197), -1)
    for _ in range(3):
        vitscope.attention_rollout(attn)
    return {"rollout_12x12x197_ms": round(median_ms(lambda: vitscope.attention_rollout(attn), repeats), 2),
            "rollout_discard0.9_ms": round(median_ms(lambda: vitscope.attention_rollout(attn, "max", 0.9), repeats),
                                           2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["vit_tiny_patch16_224", "vit_small_patch16_224",
                                                    "vit_base_patch16_224"])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name in args.models:
        print(bench_model(name, args.repeats))
    print(bench_rollout(50))


if __name__ == "__main__":
    main()
