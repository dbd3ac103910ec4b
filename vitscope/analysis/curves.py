"""Dataset-level class-embedding curves across blocks (Vilas et al. 2023, figures 2-4), streamed.

Per block, averaged over images, with each image's label as the target (the paper scores the
ground-truth class): identifiability of the CLS token and of the image tokens (share ranking the
label first, and mean r = 1 - rank/C), the attention and MLP update rates, the block change rate
and the residual match (see analysis/projection.py for the definitions, and the convention's read
point). Only running sums are kept: memory is flat in the number of images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .hooks import Recorder, using
from .projection import RESIDUAL_SOURCES, ProjectionPath, read_point

CURVES = ("cls_identifiability", "cls_identifiability_r", "image_identifiability", "image_identifiability_r",
          "attn_update_rate", "mlp_update_rate", "block_change_rate")


@dataclass
class CurveSums:
    """Running sums over images of per-image values: ``sums[name]`` [L], ``residual_match`` [L, 4]."""

    num_layers: int
    n: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    residual_match: torch.Tensor | None = None

    def add(self, name: str, per_image: torch.Tensor) -> None:  # [L, B]
        self.sums[name] = self.sums.get(name, torch.zeros(self.num_layers, dtype=torch.float64)) \
            + per_image.double().sum(-1)

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: (v / max(self.n, 1)).tolist() for k, v in self.sums.items()}
        if self.residual_match is not None:
            out["residual_match"] = (self.residual_match / max(self.n, 1)).tolist()
            out["residual_match_sources"] = list(RESIDUAL_SOURCES)
        out["n"] = self.n
        return out


def accumulate(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, num_prefix: int, cls_index: int | None,
               sums: CurveSums, convention: str = "paper",
               features: Callable[[torch.Tensor | None, torch.Tensor, torch.Tensor], None] | None = None) -> None:
    """Trace one batch [B, C, H, W] and add its curves to ``sums`` (block by block: the projected
    logits of one block, [B, N, C], are the largest tensor held). ``features`` (e.g. a
    ``linear_probes.BlockFeatures.write``) receives the same forward's block outputs of the CLS token
    (None without one) and the mean image token, [L, B, D] each, and the labels."""
    from .projection import CONVENTIONS

    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r} (use {', '.join(CONVENTIONS)})")
    rec = Recorder(model, attention=False)
    with using(model), torch.inference_mode(), rec.hooked():
        model(x)
    buf = rec.buffers
    paper = convention == "paper" and "attn_proj" in buf
    attn_h, mlp_h = (buf["attn_proj"], buf["mlp_fc2"]) if paper else (buf["attn_out"], buf["mlp_out"])
    path = ProjectionPath.from_model(model)
    y = labels.to(torch.long).cpu()
    img = slice(num_prefix, None)
    B = x.shape[0]
    match = torch.zeros(sums.num_layers, len(RESIDUAL_SOURCES), dtype=torch.float64)
    prev = path(buf["resid"][0], convention)
    per: dict[str, list[torch.Tensor]] = {k: [] for k in CURVES}
    for b in range(sums.num_layers):
        cur = path(buf["resid"][b + 1], convention)  # [B, N, C]
        attn, mlp = path(attn_h[b], convention), path(mlp_h[b], convention)
        gather = lambda t: t.gather(-1, y[:, None, None].expand(B, t.shape[1], 1))[..., 0]  # noqa: E731 [B, N]
        t_cur, t_prev = gather(cur), gather(prev)
        rank = (cur > t_cur[..., None]).sum(-1)  # [B, N]
        r = 1.0 - rank.float() / cur.shape[-1]
        if cls_index is not None:
            per["cls_identifiability"].append((rank[:, cls_index] == 0).float())
            per["cls_identifiability_r"].append(r[:, cls_index])
        per["image_identifiability"].append((rank[:, img] == 0).float().mean(-1))
        per["image_identifiability_r"].append(r[:, img].mean(-1))
        per["attn_update_rate"].append((gather(attn)[:, img] > t_prev[:, img]).float().mean(-1))
        per["mlp_update_rate"].append((gather(mlp)[:, img] > t_prev[:, img]).float().mean(-1))
        per["block_change_rate"].append((t_cur[:, img] > t_prev[:, img]).float().mean(-1))
        top = cur.argmax(-1)
        same = [top == v.argmax(-1) for v in (prev, attn, mlp)]
        match[b] = torch.stack([*same, ~(same[0] | same[1] | same[2])], -1).double().mean(1).sum(0)
        prev = cur
    for k, v in per.items():
        if v:
            sums.add(k, torch.stack(v))
    sums.residual_match = match if sums.residual_match is None else sums.residual_match + match
    sums.n += B
    if features is not None:
        outs = buf["resid"][1:sums.num_layers + 1]
        cls = torch.stack([h[:, cls_index] for h in outs]) if cls_index is not None else None
        features(cls, torch.stack([h[:, img].mean(1) for h in outs]), y)


def projection_curves(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_prefix: int,
                      cls_index: int | None, convention: str = "paper") -> dict[str, Any]:
    """The curves over every (images, labels) batch; a dict of lists (JSON-ready), with ``n``,
    ``convention`` and ``read_point``."""
    sums = CurveSums(len(model.blocks))
    device = next(model.parameters()).device
    for x, y in batches:
        accumulate(model, x.to(device), y, num_prefix, cls_index, sums, convention)
    out = sums.result()
    out["convention"], out["read_point"] = convention, read_point(model, convention)
    return out
