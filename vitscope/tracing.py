"""One forward pass that records everything: attention probabilities, residual stream, sublayer outputs.

Capture uses forward hooks on the timm modules. Fused attention (``F.scaled_dot_product_attention``)
hides the probabilities, so each block's ``attn.fused_attn`` is switched off for the traced pass only
and restored afterwards; the model keeps running fused everywhere else. The probabilities are read
at ``attn.attn_drop`` (softmax output; dropout is the identity in eval mode), the sublayer outputs at
``ls1``/``ls2`` (after LayerScale, exactly what is added to the stream; ``norm1``/``norm2`` in a
post-norm ``ResPostBlock``) and, for LayerScale models only, also at ``attn.proj``/``mlp.fc2`` (before
LayerScale: where Vilas et al. read them).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from .analysis.hooks import Recorder, using
from .spec import TokenLayout

if TYPE_CHECKING:
    from .data.images import PreparedImage
    from .loaders import Loaded


@dataclass
class Trace:
    """Everything one forward pass of one image computed; plain data (CPU float32 tensors).

    Shapes: ``attn`` [L, H, N, N] (rows are queries); ``resid`` [L+1, N, D] (the stream entering each
    block, then the last block's output before the final norm); ``attn_out``, ``mlp_out`` [L, N, D]
    (as added to the stream); ``logits`` [C]. ``attn_proj``, ``mlp_fc2`` [L, N, D]: the outputs of
    ``attn.proj`` / ``mlp.fc2`` before LayerScale, kept only for LayerScale models (None otherwise,
    where they equal ``attn_out`` / ``mlp_out``).
    """

    attn: torch.Tensor
    resid: torch.Tensor
    attn_out: torch.Tensor
    mlp_out: torch.Tensor
    logits: torch.Tensor
    layout: TokenLayout
    input: torch.Tensor | None = None
    image: np.ndarray | None = None
    attn_proj: torch.Tensor | None = None
    mlp_fc2: torch.Tensor | None = None

    @property
    def num_layers(self) -> int:
        return self.attn.shape[0]

    @property
    def num_heads(self) -> int:
        return self.attn.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.attn.shape[-1]

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(-1)

    @property
    def prediction(self) -> int:
        return int(self.logits.argmax())


def _as_batch(loaded: "Loaded", image: Any) -> tuple[torch.Tensor, list[np.ndarray | None]]:
    from .data.images import PreparedImage, load_image, prepare

    if isinstance(image, (str, Path)):
        image = load_image(image, loaded.spec.data_config)
    elif not isinstance(image, (torch.Tensor, PreparedImage)):  # a PIL image
        image = prepare(image, loaded.spec.data_config)
    if isinstance(image, PreparedImage):
        return image.input[None], [image.shown]
    x = image if image.ndim == 4 else image[None]
    return x, [None] * x.shape[0]


def run_traced(model: nn.Module, x: torch.Tensor, amp: bool = False) -> tuple[Recorder, torch.Tensor]:
    """Forward ``x`` [B, C, H, W] through ``model`` with capture hooks; returns (recorder, logits)."""
    rec = Recorder(model)
    device = x.device
    ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if amp and device.type in ("cuda", "cpu")
           else contextlib.nullcontext())
    with using(model), torch.inference_mode(), rec.hooked(), ctx:
        logits = model(x)
    return rec, logits


def trace_batch(loaded: "Loaded", images: torch.Tensor | Sequence, *, amp: bool = False) -> list[Trace]:
    """Trace a batch: ``images`` is a [B, C, H, W] normalised tensor or a list of images/paths."""
    if isinstance(images, torch.Tensor):
        x, shown = _as_batch(loaded, images)
    else:
        parts = [_as_batch(loaded, im) for im in images]
        x = torch.cat([p[0] for p in parts])
        shown = [s for p in parts for s in p[1]]
    device = loaded.device
    rec, logits = run_traced(loaded.model, x.to(device), amp=amp)

    def per_image(kind: str) -> torch.Tensor:  # [L, B, ...] -> [B, L, ...] on the CPU
        return rec.buffers[kind].cpu().transpose(0, 1)

    attn, resid = per_image("attn"), per_image("resid")
    attn_out, mlp_out = per_image("attn_out"), per_image("mlp_out")
    paper = "attn_proj" in rec.buffers
    attn_proj = per_image("attn_proj") if paper else None
    mlp_fc2 = per_image("mlp_fc2") if paper else None
    logits = logits.float().cpu()
    spec = loaded.spec
    # .contiguous(): one image's Trace must not keep (or pickle) the whole batch's buffers alive
    return [Trace(attn=attn[b].contiguous(), resid=resid[b].contiguous(), attn_out=attn_out[b].contiguous(),
                  mlp_out=mlp_out[b].contiguous(), logits=logits[b],
                  layout=spec.layout, input=x[b].detach().float().cpu(), image=shown[b],
                  attn_proj=attn_proj[b].contiguous() if paper else None,
                  mlp_fc2=mlp_fc2[b].contiguous() if paper else None)
            for b in range(x.shape[0])]


def trace(loaded: "Loaded", image: "str | Path | PreparedImage | torch.Tensor | Any", *, amp: bool = False) -> Trace:
    """Trace one image: a path, a PIL image, a PreparedImage or a normalised [C, H, W] tensor."""
    return trace_batch(loaded, [image], amp=amp)[0]
