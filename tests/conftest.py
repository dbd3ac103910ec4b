"""Small models the tests build themselves (random init: nothing can be downloaded here)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT / "tests" / "data" / "mnist"  # the first 300 MNIST test images (tests/data/README.md)
MNIST_LABEL_COUNTS = [24, 41, 32, 24, 37, 29, 24, 34, 21, 34]  # per digit, in MNIST_DIR

# Fashion-MNIST is not shipped (30 MB): tests that need it read Debian's package, and skip, saying so, without it
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # vitscope.data.datasets.DEBIAN_FASHION
HAVE_FASHION = all((FASHION_DIR / f"{name}-idx{nd}-ubyte.gz").is_file()
                   for name, nd in (("train-images", 3), ("train-labels", 1), ("t10k-images", 3), ("t10k-labels", 1)))
needs_fashion = pytest.mark.skipif(not HAVE_FASHION,
                                   reason="needs Debian package dataset-fashion-mnist (installed by .ci/run)")


@pytest.fixture(autouse=True, scope="session")
def _no_data_or_cache_outside(tmp_path_factory):
    """Tests neither read nor write the user's cache and data folders: $XDG_CACHE_HOME (~/.cache, where vitscope
    keeps sweeps and downloaded datasets) and $VITSCOPE_CACHE point into a fresh temporary folder and
    $VITSCOPE_DATA is unset, so datasets come from tests/data or Debian's package only. Set in os.environ,
    so CLI subprocesses get the same."""
    tmp = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("VITSCOPE_DATA", raising=False)
        mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
        mp.setenv("VITSCOPE_CACHE", str(tmp / "cache" / "vitscope"))
        yield


TIMM_TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)


def tiny_timm(arch: str = "vit_tiny_patch16_224", seed: int = 0, **overrides) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    kw = dict(TIMM_TINY, **overrides)
    m = timm.create_model(arch, pretrained=False, **kw).eval()
    randomise(m, seed)
    return m


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter non-trivial values (timm zero-inits some, e.g. the head and biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "ln" in name or "layernorm" in name) and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


class ReferenceAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, N, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        a = (q @ k.transpose(-2, -1) * (C // self.heads) ** -0.5).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(B, N, C))


class ReferenceBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ReferenceAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, dim),
                                 nn.Dropout(0.1))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ReferencePatchEmbedding(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: int, img: int):
        super().__init__()
        self.projection = nn.Conv2d(in_chans, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.positional_embedding = nn.Parameter(torch.zeros(1, (img // patch) ** 2 + 1, dim))

    def forward(self, x):
        x = self.projection(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        return x + self.positional_embedding


class ReferenceViT(nn.Module):
    """The hand-written ViT of many tutorials (the layout vitscope calls 'reference')."""

    def __init__(self, img=28, patch=7, in_chans=1, dim=32, depth=2, heads=4, classes=10):
        super().__init__()
        self.patch_embed = ReferencePatchEmbedding(in_chans, dim, patch, img)
        self.blocks = nn.ModuleList([ReferenceBlock(dim, heads, dim * 2) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x)[:, 0])


def tiny_hf(num_labels: int = 10, image_size: int = 32, patch_size: int = 8, hidden: int = 48, heads: int = 3):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=3, hidden_size=hidden,
                    num_hidden_layers=2, num_attention_heads=heads, intermediate_size=hidden * 4,
                    num_labels=num_labels, id2label={i: f"thing{i}" for i in range(num_labels)},
                    label2id={f"thing{i}": i for i in range(num_labels)})
    return randomise(ViTForImageClassification(cfg))


def tiny_torchvision(hidden: int = 48, heads: int = 3):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return randomise(VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=heads, hidden_dim=hidden,
                                       mlp_dim=hidden * 2, num_classes=7))


@pytest.fixture
def sample_png(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    from PIL import Image

    p = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(p)
    return p


@pytest.fixture
def timm_ckpt(tmp_path) -> Path:
    """A tiny timm ViT saved as a vitscope checkpoint."""
    from vitscope.loaders import save_checkpoint
    from vitscope.loaders.timm_vit import default_data_config

    m = tiny_timm()
    kwargs = dict(TIMM_TINY)
    p = tmp_path / "tiny.safetensors"
    dc = default_data_config(m)
    dc["crop_pct"] = 1.0
    save_checkpoint(p, m, arch="vit_tiny_patch16_224", kwargs=kwargs, classes=[f"c{i}" for i in range(10)],
                    data_config=dc)
    return p


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120):
    """Run the real console entry point in a subprocess."""
    import subprocess

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "vitscope", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)
