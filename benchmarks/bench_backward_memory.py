"""Memory of one backward pass (Grad-CAM, Chefer's gradients): what it adds to the RSS of a loaded model.

The baseline, measured in the same run: PyTorch's default backward, as pytorch-grad-cam runs it
(`model(x)[0, target].backward()` with the parameters requiring grad, as a loaded model's do), float32
weights. Against it vitscope's `gradcam` and `attention_gradients` (hooks.input_gradients: no weight gets
a .grad, and held weights stay held through the backward), with float32 weights and held in bfloat16.
Each row is its own process; the peak is the kernel's high-water mark (VmHWM, reset through
/proc/self/clear_refs just before the backward), minus the RSS just before it.

With held weights each layer's float32 weight is made again for the backward and freed (16 MB at most for
ViT-L); glibc keeps some of those freed blocks (its mmap threshold grows to their size), which shows in the
RSS: with MALLOC_MMAP_THRESHOLD_=131072 in the environment the held rows add about what float32's do.

Run: python benchmarks/bench_backward_memory.py [ARCH] (default vit_large_patch16_224, random init, 1,000
classes; about two minutes on 2 cores)
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = [
    ("baseline: PyTorch's default backward, float32 weights", "baseline", "float32"),
    ("vitscope gradcam, float32 weights", "gradcam", "float32"),
    ("vitscope gradcam, weights held in bfloat16", "gradcam", "bfloat16"),
    ("vitscope attention_gradients (Chefer), float32 weights", "chefer", "float32"),
    ("vitscope attention_gradients (Chefer), weights held in bfloat16", "chefer", "bfloat16"),
]


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def child(ckpt: str, how: str, weight_dtype: str) -> None:
    import torch

    import vitscope
    from vitscope.analysis import hooks
    from vitscope.analysis.gradients import attention_gradients, gradcam

    loaded = vitscope.load(ckpt, weight_dtype=weight_dtype)
    model, layout = loaded.model, loaded.spec.layout
    x = torch.randn(3, *loaded.spec.img_size, generator=torch.Generator().manual_seed(0))
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the RSS now
    t0 = time.perf_counter()
    if how == "baseline":
        with hooks.activation(hooks.default_gradcam_layer(model)) as store, torch.enable_grad():
            model(x[None])[0, 3].backward()
        assert store["grad"] is not None
    elif how == "gradcam":
        gradcam(model, x, 3, layout)
    else:
        attention_gradients(model, x, 3)
    seconds = time.perf_counter() - t0
    print(json.dumps({"before": before, "peak": _status("VmHWM"), "seconds": seconds}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    arch = sys.argv[1] if len(sys.argv) > 1 else "vit_large_patch16_224"
    import timm

    from vitscope.loaders.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as d:
        m = timm.create_model(arch, pretrained=False, num_classes=1000).eval()
        dc = {k: list(v) if isinstance(v, tuple) else v for k, v in timm.data.resolve_data_config({}, model=m).items()}
        ckpt = save_checkpoint(Path(d) / "m.safetensors", m, arch=arch, kwargs={"num_classes": 1000},
                               classes=[f"c{i}" for i in range(1000)], data_config=dc)
        del m
        print(f"{arch}, random init, 1,000 classes; one backward of one image; MB over the RSS before it")
        print(f"{'':<66} {'before':>7} {'added':>7} {'ratio':>6} {'peak':>7} {'s':>6}")
        base = None
        for name, how, dtype in ROWS:
            r = subprocess.run([sys.executable, __file__, "--child", str(ckpt), how, dtype], capture_output=True,
                               text=True, check=True)
            row = json.loads(r.stdout.strip().splitlines()[-1])
            added = row["peak"] - row["before"]
            base = added if base is None else base
            print(f"{name:<66} {row['before']:7.0f} {added:7.0f} {added / base:6.2f} {row['peak']:7.0f} "
                  f"{row['seconds']:6.1f}")


if __name__ == "__main__":
    main()
