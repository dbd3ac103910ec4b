"""Training and sweep throughput vs plain PyTorch loops, and sweep memory (issue: data and training).

- Training: vitscope's Trainer (events, scheduler, clipping; no augmentation) vs a plain loop with the
  same model, batches and optimiser, images/s over the training steps only, same run.
- Sweep: run_sweep (no cache) vs a plain `model(x)` loop over the same batches.
- Memory: peak RSS of a sweep over 10,000 (test) vs 60,000 (train) images, each in a fresh process.
Run: python benchmarks/bench_train_sweep.py
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

N_TRAIN = 12_800


def plain_train(ds, cfg) -> float:
    from vitscope.data.datasets import data_config_for, normalise
    from vitscope.train.presets import build_model, resolve_model

    arch, kw = resolve_model("vit-4x4", 1, (28, 28), 10)
    torch.manual_seed(0)
    model = build_model(arch, kw).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    dc = data_config_for(ds)
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:N_TRAIN]
    t0 = time.perf_counter()
    for s in range(0, N_TRAIN, 128):
        x, y = ds.batch(perm[s:s + 128])
        loss = F.cross_entropy(model(normalise(x, dc)), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return N_TRAIN / (time.perf_counter() - t0)


def vitscope_train(out: str) -> float:
    from vitscope.train import TrainConfig, Trainer

    cfg = TrainConfig(model="vit-4x4", dataset="fashion-mnist", out=out, epochs=1, batch_size=128,
                      limit_train=N_TRAIN, limit_test=10, augment="none")
    rows = [e.data for e in Trainer(cfg, overwrite=True).events() if e.kind == "epoch_end"]
    return rows[0]["images_per_s"]


def sweep_ratio(ckpt: str) -> dict:
    import vitscope
    from vitscope.data.datasets import get_dataset, iterate_batches
    from vitscope.sweep import run_sweep

    loaded = vitscope.load(ckpt)
    ds = get_dataset("fashion-mnist", "test")
    t0 = time.perf_counter()
    run_sweep(loaded, ds, 256, use_cache=False)
    ours = len(ds) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x, _, _ in iterate_batches(ds, 256, loaded.spec.data_config):
            loaded.model(x)
    plain = len(ds) / (time.perf_counter() - t0)
    return {"sweep_img_s": round(ours), "plain_img_s": round(plain), "ratio": round(ours / plain, 3)}


def rss_child(ckpt: str, split: str) -> None:
    import vitscope
    from vitscope.data.datasets import get_dataset
    from vitscope.sweep import run_sweep

    loaded, ds = vitscope.load(ckpt), get_dataset("fashion-mnist", split)
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * resource.getpagesize() / 2**20
    run_sweep(loaded, ds, 256, use_cache=False)
    print(json.dumps({"split": split, "images": len(ds), "rss_before_sweep_mb": round(before, 1),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--rss":
        rss_child(sys.argv[2], sys.argv[3])
        return
    from vitscope.data.datasets import get_dataset

    ds = get_dataset("fashion-mnist", "train")
    with tempfile.TemporaryDirectory() as d:
        ours = vitscope_train(f"{d}/run")
        plain = plain_train(ds, None)
        print({"train_img_s": round(ours), "plain_train_img_s": round(plain), "ratio": round(ours / plain, 3)})
        ckpt = f"{d}/run/last.safetensors"
        print(sweep_ratio(ckpt))
        rss = [json.loads(subprocess.run([sys.executable, __file__, "--rss", ckpt, split], capture_output=True,
                                         text=True, check=True).stdout.splitlines()[-1]) for split in ("test", "train")]
        print(rss, "60k/10k peak RSS ratio:", round(rss[1]["peak_rss_mb"] / rss[0]["peak_rss_mb"], 3))


if __name__ == "__main__":
    main()
