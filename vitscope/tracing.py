"""One forward pass that records everything: attention probabilities, residual stream, sublayer outputs.

Capture uses forward hooks on the timm modules. Fused attention (``F.scaled_dot_product_attention``)
hides the probabilities, so each block's ``attn.fused_attn`` is switched off for the traced pass only
and restored afterwards; the model keeps running fused everywhere else. The probabilities are read
at ``attn.attn_drop`` (softmax output; dropout is the identity in eval mode), the sublayer outputs at
``ls1``/``ls2`` (after LayerScale, exactly what is added to the stream; ``norm1``/``norm2`` in a
post-norm ``ResPostBlock``) and, for LayerScale models only, also at ``attn.proj``/``mlp.fc2`` (before
LayerScale: where Vilas et al. read them).

A trace keeps every layer's attention only while it is small (:data:`FULL_ATTENTION_BYTES`): a
DINOv2 ViT-L/14 at 518 px would need 2.9 GB for it. Beyond that it keeps the digest the views need
(``analysis.digest``: the default query's rows, per-query distances, the rollout), built layer by
layer inside the hooks; other queries' rows are recomputed from the residual stream on demand. A
:class:`Capture` says what to keep: which layers, float16 attention, or a sink that sees each
layer's attention as it is made (``vitscope export`` streams it into trace.npz).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from .analysis.digest import AttentionDigest, DigestBuilder
from .analysis.hooks import AttentionSink, Recorder, UpdateSink, layer_scale_gammas, using
from .spec import TokenLayout

if TYPE_CHECKING:
    from .data.images import PreparedImage
    from .loaders import Loaded


FULL_ATTENTION_BYTES = 256 * 2**20  # float32 attention of one image above this: keep the digest instead
DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class Capture:
    """What a trace keeps of the attention (the residual stream is always kept: it grows with N, not N^2).
    ``layers``: the blocks (sorted indices; None = all) whose attention is kept. ``attention``: ``"all"`` keeps
    those blocks' attention,
    ``"none"`` only the digest, ``"auto"`` all when it fits :data:`FULL_ATTENTION_BYTES`.
    ``attn_dtype``: float32, or float16 (relative error at most 2^-11, half the memory). ``sinks``
    see every layer's attention [B, H, N, N] as the forward makes it.

    ``updates``: whether the trace holds the sublayer updates (``attn_out``/``mlp_out``, ``attn_proj``/
    ``mlp_fc2``); None = only for models with a classifier, the only ones whose analyses read them (the class
    projections): a backbone's trace is two [L, N, D] arrays lighter (270 MB for ViT-L/14@518).
    ``update_sinks`` see each block's updates [B, N, D] as the forward makes them, ``(kind, layer, tensor)``,
    held or not (an export writes a backbone's to trace.npz so)."""

    layers: tuple[int, ...] | None = None
    attention: str = "auto"
    attn_dtype: str = "float32"
    sinks: tuple[AttentionSink, ...] = ()
    updates: bool | None = None
    update_sinks: tuple[UpdateSink, ...] = ()

    def keeps_updates(self, num_classes: int) -> bool:
        return num_classes > 0 if self.updates is None else self.updates

    def keeps_attention(self, num_layers: int, num_heads: int, num_tokens: int) -> bool:
        """Per image: a batch (compare's dataset pass) keeps what one image of it would."""
        if self.attention != "auto":
            return self.attention == "all"
        kept = num_layers if self.layers is None else len(self.layers)
        return kept * num_heads * num_tokens ** 2 * 4 <= FULL_ATTENTION_BYTES


@dataclass
class Trace:
    """Everything one forward pass of one image computed; plain data (CPU tensors; float32 unless the
    capture asked for float16 attention).

    Shapes: ``attn`` [L, H, N, N] (rows are queries; with ``layers`` set, only those blocks), or None
    when the trace keeps only ``digest``; ``resid`` [L+1, N, D] (the stream entering each block, then
    the last block's output before the final norm); ``attn_out``, ``mlp_out`` [L, N, D] (as added to
    the stream); ``logits`` [C]. ``digest`` (every layer) is what the views read when ``attn`` is not
    every layer's. ``attn_proj``, ``mlp_fc2`` [L, N, D]: the outputs of ``attn.proj`` / ``mlp.fc2``
    before LayerScale, kept only for LayerScale models (None otherwise, where they equal ``attn_out`` /
    ``mlp_out``). A LayerScale model's trace does not hold ``attn_out`` / ``mlp_out``: they are
    ``attn_proj`` / ``mlp_fc2`` times ``layer_scale`` ([2, L, D]: ls1's and ls2's gamma), computed on
    access, bit for bit what the blocks added (two [L, N, D] arrays fewer held: 270 MB for ViT-L@518).
    A trace whose capture did not keep the updates (a backbone's, by default: ``Capture.updates``) has none of
    the four: ``has_updates`` is False and ``attn_out`` / ``mlp_out`` are None.
    """

    attn: torch.Tensor | None
    resid: torch.Tensor
    stream_attn_out: torch.Tensor | None  # None: derived (see attn_out)
    stream_mlp_out: torch.Tensor | None
    logits: torch.Tensor
    layout: TokenLayout
    input: torch.Tensor | None = None
    image: np.ndarray | None = None
    layers: tuple[int, ...] | None = None
    digest: AttentionDigest | None = None
    attn_proj: torch.Tensor | None = None
    mlp_fc2: torch.Tensor | None = None
    layer_scale: torch.Tensor | None = None

    @property
    def holds_all_attention(self) -> bool:
        return self.attn is not None and self.layers is None

    @property
    def has_updates(self) -> bool:
        return self.stream_attn_out is not None or self.attn_proj is not None

    @property
    def attn_out(self) -> torch.Tensor | None:
        if self.stream_attn_out is not None or self.attn_proj is None:
            return self.stream_attn_out
        return self.attn_proj * self.layer_scale[0][:, None, :]

    @property
    def mlp_out(self) -> torch.Tensor | None:
        if self.stream_mlp_out is not None or self.mlp_fc2 is None:
            return self.stream_mlp_out
        return self.mlp_fc2 * self.layer_scale[1][:, None, :]

    @property
    def num_layers(self) -> int:
        return self.digest.num_layers if self.digest is not None else self.attn.shape[0]

    @property
    def num_heads(self) -> int:
        return self.digest.num_heads if self.digest is not None else self.attn.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.digest.num_tokens if self.digest is not None else self.attn.shape[-1]

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


def run_traced(model: nn.Module, x: torch.Tensor, amp: bool = False,
               recorder: Recorder | None = None) -> tuple[Recorder, torch.Tensor]:
    """Forward ``x`` [B, C, H, W] through ``model`` with capture hooks; returns (recorder, logits)."""
    rec = recorder or Recorder(model)
    device = x.device
    ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if amp and device.type in ("cuda", "cpu")
           else contextlib.nullcontext())
    with using(model), torch.inference_mode(), rec.hooked(), ctx:
        logits = model(x)
    return rec, logits


def trace_batch(loaded: "Loaded", images: torch.Tensor | Sequence, *, amp: bool = False,
                capture: Capture | None = None) -> list[Trace]:
    """Trace a batch: ``images`` is a [B, C, H, W] normalised tensor or a list of images/paths."""
    if isinstance(images, torch.Tensor):
        x, shown = _as_batch(loaded, images)
    else:
        parts = [_as_batch(loaded, im) for im in images]
        x = torch.cat([p[0] for p in parts])
        shown = [s for p in parts for s in p[1]]
    cap = capture or Capture()
    spec, B = loaded.spec, x.shape[0]
    keep = cap.keeps_attention(spec.num_layers, spec.num_heads, spec.layout.num_tokens)
    # the views read the digest only when the trace does not hold every layer's attention: building it
    # beside full attention would cost every trace a rollout and the distance statistics for nothing
    digested = not keep or cap.layers is not None
    builders = [DigestBuilder(spec.layout, spec.num_layers) for _ in range(B)] if digested else []

    def to_digests(_layer: int, attn: torch.Tensor) -> None:
        for b, builder in enumerate(builders):
            builder.add(attn[b].float().cpu())

    rec = Recorder(loaded.model, attn_layers=cap.layers, attn_dtype=DTYPES[cap.attn_dtype], keep_attention=keep,
                   attention_sinks=[to_digests, *cap.sinks] if digested else list(cap.sinks), derive_updates=True,
                   heads_one_at_a_time=not keep, keep_updates=cap.keeps_updates(spec.num_classes),
                   update_sinks=list(cap.update_sinks))
    rec, logits = run_traced(loaded.model, x.to(loaded.device), amp=amp, recorder=rec)

    def per_image(kind: str) -> torch.Tensor:  # [L, B, ...] -> [B, L, ...] on the CPU
        return rec.buffers[kind].cpu().transpose(0, 1)

    attn = per_image("attn") if keep else None
    resid = per_image("resid")
    derived = "attn_out" not in rec.buffers  # LayerScale: attn_proj / mlp_fc2 times gamma (Trace.attn_out)
    attn_out = None if derived else per_image("attn_out")
    mlp_out = None if derived else per_image("mlp_out")
    gammas = torch.stack(layer_scale_gammas(loaded.model.blocks)) if derived and "attn_proj" in rec.buffers else None
    paper = "attn_proj" in rec.buffers
    attn_proj = per_image("attn_proj") if paper else None
    mlp_fc2 = per_image("mlp_fc2") if paper else None
    logits = logits.float().cpu()
    # .contiguous(): one image's Trace must not keep (or pickle) the whole batch's buffers alive
    return [Trace(attn=None if attn is None else attn[b].contiguous(), resid=resid[b].contiguous(),
                  stream_attn_out=None if derived else attn_out[b].contiguous(),
                  stream_mlp_out=None if derived else mlp_out[b].contiguous(), logits=logits[b],
                  layout=spec.layout, input=x[b].detach().float().cpu(), image=shown[b], layers=cap.layers,
                  digest=builders[b].result() if digested else None,
                  attn_proj=attn_proj[b].contiguous() if paper else None,
                  mlp_fc2=mlp_fc2[b].contiguous() if paper else None, layer_scale=gammas)
            for b in range(B)]


def trace(loaded: "Loaded", image: "str | Path | PreparedImage | torch.Tensor | Any", *, amp: bool = False,
          capture: Capture | None = None) -> Trace:
    """Trace one image: a path, a PIL image, a PreparedImage or a normalised [C, H, W] tensor."""
    return trace_batch(loaded, [image], amp=amp, capture=capture)[0]
