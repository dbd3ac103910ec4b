"""A vitscope checkpoint's self-check: the rebuilt model must reproduce outputs recorded when it was saved.

Shapes cannot tell some metadata from others: 8 heads of 8 channels and 4 heads of 16 fit the same
tensors, and a metadata edited (or written by a buggy tool) to the wrong number builds a model that
runs and predicts badly, without a word. So :func:`model_check` runs the saved model's blocks, final
norm and head on a fixed, closed-form token sequence (no random generator, so every platform makes
the same input) and stores a few outputs; :func:`verify_check` reruns it after a load and refuses a
model that does not reproduce them. Running the blocks on a handful of tokens costs well under a
millisecond per block, so every load can afford it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import VitscopeError

WHAT = "forward_head(norm(blocks(t))) for t[n, d] = sin(0.37 n + 1.3 d) / 2, n < prefix + 16 tokens"
NUM_VALUES = 16  # outputs stored: the first 16 logits (or features of a headless model)
# max |diff| relative to 1 + max |recorded|. Measured on the Fashion-MNIST sample: the same weights in
# float16 differ by 4e-4 of that, 8 heads read as 4 by 7e-2 (16 by 1.2e-1, 2 by 3.4e-1).
TOLERANCE = {"float32": 5e-3, "half": 2e-2}


def probe_tokens(model: nn.Module) -> torch.Tensor:
    """The fixed input [1, prefix + 16, D]."""
    n = int(getattr(model, "num_prefix_tokens", 1)) + 16
    d = int(model.embed_dim)
    grid_n = torch.arange(n, dtype=torch.float64)[:, None]
    grid_d = torch.arange(d, dtype=torch.float64)[None, :]
    return (torch.sin(0.37 * grid_n + 1.3 * grid_d) / 2).float()[None]


@torch.no_grad()
def _outputs(model: nn.Module) -> torch.Tensor:
    p = next(model.parameters())
    t = probe_tokens(model).to(p.device)
    was = model.training
    model.eval()
    try:
        with torch.autocast(p.device.type, enabled=False):
            x = model.norm(model.blocks(t.to(p.dtype)))
            out = model.forward_head(x, pre_logits=not getattr(model, "num_classes", 0))
    finally:
        model.train(was)
    return out.float().flatten()[:NUM_VALUES].cpu()


def _is_vit(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def model_check(model: nn.Module) -> dict[str, Any] | None:
    """What to store in a checkpoint's metadata (``check``), or None for models it does not cover (CNNs)."""
    if not _is_vit(model):
        return None
    try:
        values = _outputs(model)
    except Exception:  # a model the probe cannot run is saved without a check, never refused at save time
        return None
    return {"what": WHAT, "values": [round(float(v), 6) for v in values]}


def verify_check(model: nn.Module, check: dict[str, Any], path: Path | None, half_weights: bool = False) -> None:
    """Refuse a built model that does not reproduce its checkpoint's recorded outputs."""
    values = check.get("values")
    if check.get("what") != WHAT or not isinstance(values, list) or not _is_vit(model):
        return  # another version's check, or none vitscope knows how to rerun
    try:
        want = torch.tensor([float(v) for v in values], dtype=torch.float32)
    except (TypeError, ValueError):
        raise VitscopeError("vitscope metadata: check.values must be numbers", path) from None
    got = _outputs(model)
    if not bool(torch.isfinite(got).all()):
        return  # non-finite weights: build.py says so on its own
    if got.shape != want.shape:
        raise VitscopeError(f"the model rebuilt from the metadata gives {got.numel()} outputs where the checkpoint "
                            f"recorded {want.numel()}", path)
    diff = float((got - want).abs().max()) if want.numel() else 0.0
    tol = TOLERANCE["half" if half_weights else "float32"] * (1 + float(want.abs().max()) if want.numel() else 1)
    if not diff <= tol:
        raise VitscopeError(
            f"the model rebuilt from the metadata does not reproduce the outputs recorded when it was saved "
            f"(max difference {diff:.3g}): its kwargs (num_heads {getattr(model.blocks[0].attn, 'num_heads', '?')}, "
            "norms, pooling) are not the ones the weights were trained with", path)
