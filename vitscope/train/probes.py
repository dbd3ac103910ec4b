"""Attention forming: a few fixed test images traced after every epoch of a run.

``RUN_DIR/probes/probes.npz`` holds the probe images once (dataset indices, labels, the pixels as shown,
the class names, the token grid); ``RUN_DIR/probes/image-K.png`` each image as a file;
``RUN_DIR/probes/epoch-EEEE.npz`` one small file per epoch (epoch 0 is the model before any training) with

- ``attn`` [P, L, H, n_patches] float16: every head's attention from the query token (CLS, or the mean of
  the patch queries for a model without CLS) to the patches, per layer;
- ``rollout`` [P, n_patches] float32: attention rollout (Abnar & Zuidema 2020, mean over heads, identity
  added) of the same query;
- ``probs`` [P, C] float16: the class probabilities; ``epoch``, ``step``.

With the default 4 probes an epoch file is 3.6 KB for a ViT of 4 layers x 4 heads on 28x28 images with 7x7
patches (measured), and about 230 KB for a ViT-B/16 at 224 (4 x 12 x 12 x 196 float16 values). CNNs have no attention: their runs record no probes.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_bytes

PROBE_DIR = "probes"
DEFAULT_PROBES = 4
_EPOCH_FILE = re.compile(r"epoch-(\d{4,})\.npz$")


def epoch_file(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / PROBE_DIR / f"epoch-{epoch:04d}.npz"


def image_file(run_dir: str | Path, k: int) -> Path:
    """Probe image ``k`` as a PNG, exactly the dataset's pixels (open it in the inspector or anywhere)."""
    return Path(run_dir) / PROBE_DIR / f"image-{k}.png"


def probe_positions(labels: np.ndarray, n: int = DEFAULT_PROBES) -> np.ndarray:
    """The first image of each of the first ``n`` classes (fewer classes: then the next images in order):
    fixed by the data alone, so a resumed or repeated run probes the same images."""
    labels = np.asarray(labels)
    chosen: list[int] = []
    for c in np.unique(labels)[:n]:
        chosen.append(int(np.flatnonzero(labels == c)[0]))
    for i in range(len(labels)):
        if len(chosen) >= min(n, len(labels)):
            break
        if i not in chosen:
            chosen.append(i)
    return np.array(sorted(chosen), dtype=np.int64)


def _npz_bytes(arrays: dict[str, Any]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class ProbeRecorder:
    """Traces the probe images through a training model (rank 0 only) and writes one file per epoch."""

    def __init__(self, run_dir: str | Path, model, test_ds, data_config: dict[str, Any], n: int = DEFAULT_PROBES):
        from ..loaders.describe import model_layout

        self.dir = Path(run_dir) / PROBE_DIR
        self.model = model
        self.layout = model_layout(model)
        pos = probe_positions(test_ds.labels.numpy(), n)
        self.positions = pos
        self._raw = [np.asarray(test_ds.image(int(p))) for p in pos]
        images = np.stack([_shown(a) for a in self._raw])
        import torch

        from ..data.datasets import iterate_batches

        # exactly as the trainer's evaluation feeds them (channels and size adapted to the model)
        self.x = next(iterate_batches(test_ds, len(pos), data_config, torch.from_numpy(pos)))[0]
        index = np.asarray(test_ds.indices)[pos] if getattr(test_ds, "indices", None) is not None else pos
        self.meta = {"index": index.astype(np.int64), "label": test_ds.labels.numpy()[pos].astype(np.int64),
                     "images": images, "classes": np.array(list(test_ds.classes)),
                     "grid": np.array(self.layout.grid, dtype=np.int64),
                     "dataset": np.array(test_ds.name), "split": np.array(test_ds.split)}

    def write_meta(self) -> None:
        """probes.npz, and each probe image as ``image-K.png`` (what the inspector opens from the screen)."""
        from PIL import Image

        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.dir / "probes.npz", _npz_bytes(self.meta))
        for k, p in enumerate(self.positions):
            a = np.asarray(self._raw[k])
            buf = io.BytesIO()
            Image.fromarray(a, "L" if a.ndim == 2 else "RGB").save(buf, format="PNG")
            atomic_write_bytes(image_file(self.dir.parent, k), buf.getvalue())

    def record(self, epoch: int, step: int, device) -> Path:
        """Trace the probes with the model as it is now; the model's train/eval mode is restored."""
        import torch

        from ..analysis.attention import query_weights
        from ..analysis.rollout import attention_rollout
        from ..tracing import run_traced

        rec, logits = run_traced(self.model, self.x.to(device))
        attn = rec.buffers["attn"].float().cpu().transpose(0, 1).numpy()  # [P, L, H, N, N]
        w = query_weights(self.layout, None)
        rows = np.einsum("n,plhnm->plhm", w, attn)[..., self.layout.num_prefix:]
        roll = np.stack([(w @ attention_rollout(a))[self.layout.num_prefix:] for a in attn])
        probs = torch.softmax(logits.float().cpu(), -1).numpy()
        path = epoch_file(self.dir.parent, epoch)
        atomic_write_bytes(path, _npz_bytes({"attn": rows.astype(np.float16), "rollout": roll.astype(np.float32),
                                             "probs": probs.astype(np.float16), "epoch": np.int64(epoch),
                                             "step": np.int64(step)}))
        return path


def _shown(image: np.ndarray) -> np.ndarray:
    """A dataset image as uint8 HxWx3 (grey images repeated over the channels)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, -1)
    return a.astype(np.uint8)


@dataclass
class Probes:
    """A run's probe recordings as read back: the images and the epochs recorded so far."""

    index: np.ndarray
    label: np.ndarray
    images: np.ndarray  # [P, H, W, 3] uint8
    classes: list[str]
    grid: tuple[int, int]
    epochs: list[int]
    run_dir: Path
    dataset: str = ""
    split: str = ""

    @property
    def n(self) -> int:
        return len(self.index)

    def epoch(self, epoch: int) -> dict[str, np.ndarray]:
        with np.load(epoch_file(self.run_dir, epoch)) as z:
            return {k: z[k] for k in z.files}


def recorded_epochs(run_dir: str | Path) -> list[int]:
    d = Path(run_dir) / PROBE_DIR
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _EPOCH_FILE.match(p.name)))


def load_probes(run_dir: str | Path) -> Probes | None:
    """The run's probes, or None when it records none (a CNN, or a run from before probes existed)."""
    run_dir = Path(run_dir)
    path = run_dir / PROBE_DIR / "probes.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        return Probes(index=z["index"], label=z["label"], images=z["images"], classes=[str(c) for c in z["classes"]],
                      grid=(int(z["grid"][0]), int(z["grid"][1])), epochs=recorded_epochs(run_dir), run_dir=run_dir,
                      dataset=str(z["dataset"]), split=str(z["split"]))
