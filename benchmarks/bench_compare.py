"""Split view speed: key -> screen updated when switching panes in `vitscope compare` (tmux, 160x48), after
each pane's first computation, against the same keys in the one-model inspector measured in the same run.

Panes cycle attention -> rollout -> Grad-CAM -> relevance -> grad rollout (r, g, e, G) on the sample pairs
(ViT vs ViT finetune: both sides draw; ViT vs CNN: the CNN side stands in with Grad-CAM); the time is until
the screen's text changes (the pane titles; one tmux capture is ~2 ms of it).
Run: python benchmarks/bench_compare.py [--quick]
"""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_tui import Tmux  # noqa: E402

S = ROOT / "samples"
KEYS = ["r", "g", "e", "G"]  # each opens its pane; pressing the next key switches straight to the next pane


def title(t: Tmux, marker: str) -> str:
    """The screen's text (nothing else moves on these screens: any change is the key's)."""
    return t.screen()


def latency(args: str, ready: str, marker: str, rounds: int) -> dict:
    t = Tmux("cmp")
    try:
        t.start(args)
        t.wait(ready, timeout=120)
        time.sleep(0.5)
        for k in KEYS:  # first computation of every pane (Grad-CAM and relevance need gradients)
            t.keys(k)
            time.sleep(1.5)
        t.keys("r")
        time.sleep(0.5)
        times = []
        for i in range(rounds):
            before = title(t, marker)
            t.keys(KEYS[i % len(KEYS)])
            t0 = time.perf_counter()
            while title(t, marker) == before and time.perf_counter() - t0 < 5:
                pass
            times.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)
        t.keys("q")
    finally:
        t.close()
    a = np.array(times)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "max_ms": float(a.max()),
            "n": len(a)}


def main() -> None:
    rounds = 16 if "--quick" in sys.argv else 48
    q = shlex.quote
    ft = latency(f"compare {q(str(S / 'digits-vit-ft.safetensors'))} {q(str(S / 'mnist_8000_4.png'))}",
                 "change per head", "parent fashion-vit-p7", rounds)
    cnn = latency(f"compare {q(str(S / 'fashion-vit-p7.safetensors'))} {q(str(S / 'fashion-cnn.safetensors'))} "
                  f"{q(str(S / 'fashion_0000_ankle-boot.png'))}", "Grad-CAM shown", "A fashion-vit-p7", rounds)
    one = latency(f"inspect {q(str(S / 'fashion-vit-p7.safetensors'))} {q(str(S / 'mnist_8000_4.png'))}",
                  "query CLS", "query CLS", rounds)
    for name, r in (("split view, finetune pair", ft), ("split view, ViT vs CNN", cnn), ("inspector, one model", one)):
        print(f"{name}: median {r['median_ms']:.1f} ms, p90 {r['p90_ms']:.1f}, max {r['max_ms']:.0f} ({r['n']} keys)")
    print(f"ratio split / inspector (medians): {ft['median_ms'] / one['median_ms']:.2f}, "
          f"{cnn['median_ms'] / one['median_ms']:.2f}")


if __name__ == "__main__":
    main()
