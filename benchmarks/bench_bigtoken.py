"""Big-token models: DINOv2 ViT-L/14 at 518 px (1,370 tokens, 24 layers x 16 heads; random init, saved once
as a vitscope checkpoint so it loads on the meta device from the safetensors file).

1. Max RSS of `vitscope export` (process start to exit, /usr/bin/time) against the baseline in the same
   run: a process that only imports torch and timm, loads the same checkpoint and runs one plain fused
   forward (the floor any tool that runs the model pays). Exports: all layers float32 (the default, a
   2.9 GB trace.npz), the same with `--weight-dtype bfloat16`, and that with `--layers 0,-1 --dtype float16`.
2. What holding the weights in bfloat16 changes: the float32 and bfloat16-held exports' trace.npz compared
   (attention, residual stream, updates, token norms: largest absolute and relative difference).
3. The inspector's key latency (tmux 160x48, bench_tui.key_latency: h/j/k/l through the layer x head grid
   after a warm-up pass) and its max RSS on ViT-L/14@518 (weights held in bfloat16, and float32) against
   timm:vit_base_patch16_224 in the same run.
Where the memory goes, phase by phase: profile_bigtoken.py.
Run: python benchmarks/bench_bigtoken.py [--quick]
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
IMAGE = str(ROOT / "samples" / "photo_rgb.png")
ARCH = "vit_large_patch14_dinov2"

BASELINE = """
import sys, torch, timm, vitscope
from vitscope.data.images import load_image
loaded = vitscope.load(sys.argv[1])
x = load_image(sys.argv[2], loaded.spec.data_config).input[None]
with torch.inference_mode():
    loaded.model(x)
"""


def make_checkpoint(where: Path) -> Path:
    import timm

    from vitscope.loaders.checkpoint import save_checkpoint

    m = timm.create_model(ARCH, pretrained=False).eval()
    dc = {k: list(v) if isinstance(v, tuple) else v for k, v in timm.data.resolve_data_config({}, model=m).items()}
    return save_checkpoint(where / "vit_large_dinov2_518.safetensors", m, arch=ARCH, kwargs={}, classes=[],
                           data_config=dc)


def max_rss(*args: str) -> tuple[float, float]:
    """(max RSS in MB, seconds) of one process."""
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "%M", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return int(r.stderr.strip().splitlines()[-1]) / 1024, time.perf_counter() - t0


def compare_npz(a_path: Path, b_path: Path) -> dict:
    """Largest absolute difference and largest difference relative to the array's largest magnitude, per array
    (read one array at a time: the files are 3.4 GB)."""
    import numpy as np

    out = {}
    with np.load(a_path, mmap_mode="r") as a, np.load(b_path, mmap_mode="r") as b:
        for k in ("attn", "resid", "attn_out", "mlp_out", "token_norms", "rollout"):
            if k not in a.files:
                continue
            x, y = a[k], b[k]
            diff = scale = 0.0
            for i in range(x.shape[0]) if x.ndim > 2 else [slice(None)]:
                xi, yi = np.asarray(x[i], dtype=np.float64), np.asarray(y[i], dtype=np.float64)
                diff, scale = max(diff, float(np.abs(xi - yi).max())), max(scale, float(np.abs(xi).max()))
            out[k] = {"max_abs": diff, "max_rel_to_largest": diff / scale if scale else 0.0}
    return out


def main() -> None:
    quick = "--quick" in sys.argv
    res: dict = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ckpt = str(make_checkpoint(d))
        base_mb, base_s = max_rss(sys.executable, "-c", BASELINE, ckpt, IMAGE)
        res["baseline_fused_forward"] = {"max_rss_mb": base_mb, "seconds": base_s}
        for name, extra in (("export_all_layers_float32", []),
                            ("export_all_layers_weights_bf16", ["--weight-dtype", "bfloat16"]),
                            ("export_layers_0_-1_float16_weights_bf16", ["--layers", "0,-1", "--dtype", "float16",
                                                                         "--weight-dtype", "bfloat16"])):
            out = d / name
            mb, s = max_rss(sys.executable, "-m", "vitscope", "export", ckpt, IMAGE, "--out", str(out), *extra)
            res[name] = {"max_rss_mb": mb, "seconds": s, "rss_ratio_over_baseline": mb / base_mb,
                         "trace_npz_mb": (out / "trace.npz").stat().st_size / 2**20}
            print(name, res[name], flush=True)
        res["bf16_weights_vs_float32"] = compare_npz(d / "export_all_layers_float32" / "trace.npz",
                                                     d / "export_all_layers_weights_bf16" / "trace.npz")
        print(res["bf16_weights_vs_float32"], flush=True)
        from bench_tui import key_latency

        rounds = 1 if quick else 2
        res["keys_vit_base_224"] = key_latency("timm:vit_base_patch16_224", IMAGE, rounds)
        res["keys_vit_large_518_weights_bf16"] = key_latency(f"{ckpt} --weight-dtype bfloat16", IMAGE, rounds)
        res["keys_vit_large_518"] = key_latency(ckpt, IMAGE, rounds)
        base = res["keys_vit_base_224"]["median_ms"]
        res["keys_ratio_large_over_base"] = res["keys_vit_large_518"]["median_ms"] / base
        res["keys_ratio_large_bf16_over_base"] = res["keys_vit_large_518_weights_bf16"]["median_ms"] / base
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
