"""Dataset-level projection sweep (Vilas et al. 2023 curves) vs the plain sweep, and its memory.

- Time: `projection_sweep` (the model and its random-init copy, traced, every block projected) vs
  `run_sweep` (no cache) over the same 10,000 Fashion-MNIST test images, same process, alternated,
  medians of 3; the ratio of `vitscope sweep --projections` (both) to the plain sweep.
- Memory: peak RSS of a projection sweep over 2,000 vs 10,000 images, each in a fresh process.
- The curves themselves for each Fashion-MNIST sample ViT (the README's table).
Run: python benchmarks/bench_projection_sweep.py  (needs /usr/share/datasets/fashion-mnist)
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["fashion-vit-p7.safetensors", "fashion-vit-p4.safetensors"]


def timings(ckpt: Path, rounds: int = 3) -> dict:
    import vitscope
    from vitscope.data.datasets import get_dataset
    from vitscope.sweep import projection_sweep, run_sweep

    loaded = vitscope.load(ckpt)
    ds = get_dataset("fashion-mnist", "test")
    plain, proj = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run_sweep(loaded, ds, 256, use_cache=False)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        curves = projection_sweep(loaded, ds, 256)
        proj.append(time.perf_counter() - t0)
    p, q = statistics.median(plain), statistics.median(proj)
    return {"plain_s": p, "projection_s": q, "ratio_projection_only": q / p, "ratio_sweep_with_projections": (p + q) / p,
            "curves": curves}


def peak_rss(ckpt: Path, limit: int) -> float:
    code = ("import resource, vitscope; from vitscope.data.datasets import get_dataset; "
            "from vitscope.sweep import projection_sweep; "
            f"projection_sweep(vitscope.load({str(ckpt)!r}), get_dataset('fashion-mnist', 'test'), 256, {limit}); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    report = {}
    for name in MODELS:
        report[name] = timings(ROOT / "samples" / name)
        t = report[name]
        print(f"{name}: plain sweep {t['plain_s']:.2f} s, projection sweep {t['projection_s']:.2f} s "
              f"(x{t['ratio_projection_only']:.2f}; sweep --projections x{t['ratio_sweep_with_projections']:.2f})")
        c = t["curves"]
        for b in range(len(c["model"]["image_identifiability"])):
            row = [f"{c[k][m][b]:.3f}" for m in ("cls_identifiability", "image_identifiability",
                                                 "image_identifiability_r", "attn_update_rate", "mlp_update_rate",
                                                 "block_change_rate") for k in ("model", "random_init")]
            print(f"  block {b}: " + " ".join(row))
    ckpt = ROOT / "samples" / MODELS[0]
    small, large = peak_rss(ckpt, 2_000), peak_rss(ckpt, 10_000)
    print(f"peak RSS {MODELS[0]}: 2,000 images {small:.1f} MB, 10,000 images {large:.1f} MB (x{large / small:.2f})")
    report["rss_mb"] = {"2000": small, "10000": large}
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "curves"} if isinstance(v, dict) and "curves" in v
                      else v for k, v in report.items()}))


if __name__ == "__main__":
    main()
