"""Peak memory of reading big images (issue 13: a 172 KB 16-bit 9400x9400 PNG peaked at 3.08 GB RSS).

Each reading runs in a fresh process and reports its peak RSS (VmHWM, Linux) minus the RSS of the same process
after its imports, so the figure is what reading the image cost. The baseline, measured in the same run on
the same files, is a plain ``Image.open(p).convert("RGB")`` (what an application would write first).

- png16: 9400x9400 16-bit greyscale PNG (a grid of lines: a few hundred KB on disk, 177 MB decoded as I;16)
- jpeg: 9400x9400 RGB JPEG (decoded at 1/4 by Pillow's draft, never at full size)
- png8: 9400x9400 8-bit RGB PNG
- normal: 640x480 RGB PNG (read exactly; the two should cost about the same)

``read_image`` is what the CLI and the inspector call; ``load_image`` adds the model's 224 px preprocessing.
Run: python benchmarks/bench_image_memory.py [--json]
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 9400

# VmHWM (the process's peak RSS, in kB), not ru_maxrss: a child's ru_maxrss starts from its parent's peak
# after fork + exec on Linux, and the parent here has just drawn 9400x9400 arrays
MEASURE = r"""
import re, sys, time
from PIL import Image
import timm.data, torchvision.transforms  # load_image's imports, before the first measurement
from vitscope.data.images import load_image, read_image
def peak_kb():
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))
before = peak_kb()
how, path = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if how == "baseline":
    img = Image.open(path).convert("RGB")
elif how == "read_image":
    img = read_image(path)
else:
    img = load_image(path, {"input_size": [3, 224, 224], "mean": [0.5] * 3, "std": [0.5] * 3,
                            "interpolation": "bicubic", "crop_pct": 0.9})
secs = time.perf_counter() - t0
peak = peak_kb()
print(f"{(peak - before) / 1024:.1f} {secs:.3f}")
"""


def make_images(folder: Path) -> dict[str, Path]:
    paths = {}
    grid = np.zeros((SIDE, SIDE), np.uint16)
    grid[::50] = 40000
    grid[:, ::70] = 65535
    paths["png16"] = folder / "big16.png"
    Image.fromarray(grid).save(paths["png16"], optimize=True)
    del grid
    rgb = np.zeros((SIDE, SIDE, 3), np.uint8)
    rgb[::40, :, 0] = 255
    rgb[:, ::30, 1] = 200
    rgb[..., 2] = np.arange(SIDE, dtype=np.uint16)[None, :] % 256
    paths["jpeg"] = folder / "big.jpg"
    Image.fromarray(rgb).save(paths["jpeg"], quality=90)
    paths["png8"] = folder / "big8.png"
    Image.fromarray(rgb).save(paths["png8"], compress_level=1)
    del rgb
    paths["normal"] = folder / "normal.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(paths["normal"])
    return paths


def measure(how: str, path: Path) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", MEASURE, how, str(path)], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp))
        for name, path in paths.items():
            row = {"file_kb": round(path.stat().st_size / 1024, 1)}
            for how in ("baseline", "read_image", "load_image"):
                mb, secs = measure(how, path)
                row[f"{how}_mb"], row[f"{how}_s"] = mb, secs
            row["read_image/baseline"] = round(row["read_image_mb"] / max(row["baseline_mb"], 0.1), 2)
            results[name] = row
    if "--json" in sys.argv:
        print(json.dumps(results, indent=1))
        return
    print(f"{'image':8} {'file KB':>9} {'baseline MB':>12} {'read_image MB':>14} {'load_image MB':>14} {'ratio':>6}"
          f" {'read_image s':>13}")
    for name, r in results.items():
        print(f"{name:8} {r['file_kb']:9.1f} {r['baseline_mb']:12.1f} {r['read_image_mb']:14.1f} "
              f"{r['load_image_mb']:14.1f} {r['read_image/baseline']:6.2f} {r['read_image_s']:13.3f}")


if __name__ == "__main__":
    main()
