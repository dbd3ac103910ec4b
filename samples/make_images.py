"""Writes the sample images: test-set PNGs (some the sample models get right, some they get wrong)
and one RGB photo-like image for 3-channel models. Run from the repository root after training:
python samples/make_images.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

import vitscope
from vitscope.data.datasets import get_dataset
from vitscope.sweep import run_sweep

HERE = Path(__file__).parent
MNIST = HERE.parent.parent / "shared" / "data" / "mnist"


def slug(name: str) -> str:
    return name.lower().replace("/", "-").replace(" ", "-")


def pick(model: str, dataset: str, n_right: int, n_wrong: int, **kw) -> None:
    ds = get_dataset(dataset, "test", **kw)
    res = run_sweep(vitscope.load(HERE / model), ds, use_cache=False)
    right = [i for i in range(res.n) if res.correct[i]][:n_right]
    wrong = [i for i in range(res.n) if not res.correct[i]][:n_wrong]
    for i in right + wrong:
        true, pred = ds.classes[res.label[i]], ds.classes[res.pred[i]]
        tag = "" if res.correct[i] else f"_pred-{slug(pred)}"
        name = f"{dataset.replace('-mnist', '')}_{res.index[i]:04d}_{slug(true)}{tag}.png"
        Image.fromarray(ds.image(i)).save(HERE / name)
        print(name)


def photo() -> None:
    """A synthetic outdoor scene (sky, sun, hills, a house, a tree), 224 x 224 RGB."""
    rng = np.random.default_rng(0)
    h = w = 224
    y = np.linspace(0, 1, h)[:, None, None]
    sky = (1 - y) * np.array([90, 150, 230]) + y * np.array([200, 225, 250])
    img = np.broadcast_to(sky, (h, w, 3)).copy()
    im = Image.fromarray(img.astype(np.uint8))
    d = ImageDraw.Draw(im)
    d.ellipse((160, 20, 200, 60), fill=(255, 230, 120))
    d.polygon([(0, 150), (60, 110), (130, 140), (224, 100), (224, 224), (0, 224)], fill=(70, 140, 60))
    d.rectangle((60, 130, 120, 180), fill=(200, 80, 60))
    d.polygon([(52, 132), (90, 100), (128, 132)], fill=(110, 50, 40))
    d.rectangle((82, 150, 98, 180), fill=(80, 50, 30))
    d.rectangle((160, 120, 168, 170), fill=(90, 60, 30))
    d.ellipse((140, 80, 190, 130), fill=(40, 110, 40))
    im = im.filter(ImageFilter.GaussianBlur(0.8))
    a = np.asarray(im).astype(np.float64) + rng.normal(0, 6, (h, w, 3))
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(HERE / "photo_rgb.png")
    print("photo_rgb.png")


if __name__ == "__main__":
    pick("fashion-vit-p7.safetensors", "fashion-mnist", 4, 4)
    pick("digits-vit.safetensors", "mnist", 2, 2, data_dir=MNIST, split_train=8000)
    photo()
