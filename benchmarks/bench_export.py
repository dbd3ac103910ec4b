"""`vitscope export` end to end on a small model: wall time and its split (imports, load, trace, render).

Builds a 4x4 patch-7 ViT on 28x28 grey input (the sample-model shape), saves it as a vitscope
checkpoint, and runs the real CLI in a subprocess a few times. Run: python benchmarks/bench_export.py
"""
from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(repeats: int = 3) -> None:
    import timm

    from vitscope.loaders import save_checkpoint
    from vitscope.loaders.timm_vit import default_data_config

    kw = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=64, depth=4, num_heads=4, num_classes=10)
    m = timm.create_model("vit_tiny_patch16_224", **kw)
    with tempfile.TemporaryDirectory() as d:
        ck = Path(d) / "m.safetensors"
        save_checkpoint(ck, m, arch="vit_tiny_patch16_224", kwargs=kw, classes=[str(i) for i in range(10)],
                        data_config=dict(default_data_config(m), crop_pct=1.0))
        img = ROOT / "samples" / "fashion_0000_ankle-boot.png"
        walls, splits = [], []
        for i in range(repeats):
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "vitscope", "export", str(ck), str(img), "--out",
                                f"{d}/o{i}"], capture_output=True, text=True, check=True)
            walls.append(time.perf_counter() - t0)
            splits.append({k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)s", r.stdout.split("time:")[1])})
    print(f"export wall (process start to exit): median {statistics.median(walls):.2f}s")
    for k in splits[0]:
        print(f"  {k}: {statistics.median(s[k] for s in splits):.3f}s")


if __name__ == "__main__":
    main()
