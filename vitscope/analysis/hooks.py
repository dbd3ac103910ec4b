"""Model access in one place: unfused attention, captures, backward on a target, ablation hooks.

Every analysis that runs the model goes through :func:`using`, which holds the model's lock for the
whole computation. Forward hooks live on the module, not on the call, so two threads hooking the
same model at once see each other's hooks (a Grad-CAM hook firing inside a head-ablation pass run
under ``inference_mode`` fails with "cannot register a hook on a tensor that doesn't require
gradient"). With one lock per model, two workers never hook or mutate the same model at once.

Cancellation: inside ``with cancel_when(check):`` every block of a model run under :func:`using`
calls ``check()`` first; ``check`` raises :class:`Cancelled` to abandon the computation at the next
block (tens of milliseconds even on ViT-B), so a UI can stop work it no longer needs.

This is the only module that knows timm's Block internals (``attn.fused_attn``, ``attn.attn_drop``,
``ls1``/``ls2``, ``attn.proj``, ``mlp.fc1``/``mlp.fc2``, ``norm1``/``norm2``, the post-norm
``ResPostBlock``), the private ``_pos_embed`` and, for big-token captures, the unfused branch of
timm's ``Attention.forward`` (:func:`attention_one_head_at_a_time`).
"""
from __future__ import annotations

import contextlib
import threading
import types
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_local = threading.local()


class Cancelled(Exception):
    """Raised from a cancellation check: the computation was abandoned and nothing was cached."""


def model_lock(model: nn.Module) -> threading.RLock:
    """The one lock of a model (re-entrant: an analysis may call another under it)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def cancel_when(check: Callable[[], None]) -> Iterator[None]:
    """Within this block (this thread), runs of a model check ``check()`` before every block."""
    old = getattr(_local, "check", None)
    _local.check = check
    try:
        yield
    finally:
        _local.check = old


def check_cancelled() -> None:
    """Call the current thread's cancellation check, if any (long loops call it between steps)."""
    check = getattr(_local, "check", None)
    if check is not None:
        check()


def _stages(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if blocks is not None:
        return list(blocks)
    return [m for m in model.children() if any(True for _ in m.parameters())]


@contextlib.contextmanager
def using(model: nn.Module) -> Iterator[nn.Module]:
    """Exclusive use of ``model`` in eval mode; cancellation points before every block."""
    check = getattr(_local, "check", None)
    lock = model_lock(model)
    while not lock.acquire(timeout=0.05):  # wait for another worker, but stay cancellable
        check_cancelled()
    handles = []
    was = model.training
    try:
        check_cancelled()
        model.eval()
        if check is not None:
            handles = [m.register_forward_pre_hook(lambda *_: check()) for m in _stages(model)]
        yield model
    finally:
        for h in handles:
            h.remove()
        model.train(was)
        lock.release()


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# -- attention ------------------------------------------------------------------------------------
@contextlib.contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """Fused attention (scaled_dot_product_attention) hides the probabilities: switch it off for the
    duration only, then restore each block's setting."""
    fused = []
    try:
        for blk in model.blocks:
            fused.append(blk.attn.fused_attn)
            blk.attn.fused_attn = False
        yield
    finally:
        for blk, f in zip(model.blocks, fused):
            blk.attn.fused_attn = f


def _attention_one_head_at_a_time(self: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                                  is_causal: bool = False) -> torch.Tensor:
    """timm's ``Attention.forward`` (unfused branch), but the probabilities are made one head at a time
    into one [B, H, N, N] tensor: timm's holds the scores and their softmax together, twice that (240 MB
    a layer for ViT-L/14@518). Written by hand because timm has no such mode; the optional parts of
    timm's versions (``gate``, ``norm``) are followed when present."""
    if attn_mask is not None or is_causal:
        return type(self).forward(self, x, attn_mask, is_causal)
    B, N, C = x.shape
    gate = getattr(self, "gate", None)
    gate = gate(x).sigmoid() if gate is not None else None
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    q = q * self.scale
    probs = q.new_empty(B, self.num_heads, N, N)
    for h in range(self.num_heads):
        probs[:, h] = (q[:, h] @ k[:, h].transpose(-2, -1)).softmax(dim=-1)
    probs = self.attn_drop(probs)  # the capture hooks read it here, as in timm's own path
    x = (probs @ v).transpose(1, 2).reshape(B, N, getattr(self, "attn_dim", C))
    del probs
    x = getattr(self, "norm", nn.Identity())(x)
    if gate is not None:
        x = x * gate
    return self.proj_drop(self.proj(x))


@contextlib.contextmanager
def attention_one_head_at_a_time(model: nn.Module) -> Iterator[None]:
    """Within this block, every block whose attention is timm's plain ``Attention`` computes its
    probabilities head by head (:func:`_attention_one_head_at_a_time`; other attention modules as
    they are). For the captures of big-token models, where each layer's [H, N, N] is large."""
    from timm.models.vision_transformer import Attention

    patched = [(blk.attn, blk.attn.__dict__.get("forward")) for blk in model.blocks if type(blk.attn) is Attention]
    try:
        for attn, _ in patched:
            attn.forward = types.MethodType(_attention_one_head_at_a_time, attn)
        yield
    finally:
        for attn, before in patched:
            del attn.forward
            if before is not None:
                attn.forward = before


@contextlib.contextmanager
def attention_probabilities(model: nn.Module, keep_grad: bool = False) -> Iterator[list[dict]]:
    """Yields one record per block, filled during a forward: ``attn`` [B, H, N, N] (softmax output,
    read at ``attn_drop``: dropout is the identity in eval mode) and, with ``keep_grad``, ``grad``
    after a backward."""
    records: list[dict] = [dict() for _ in model.blocks]

    def hook(i: int):
        def fwd(_m, _inp, out):
            records[i]["attn"] = out
            if keep_grad:
                out.register_hook(lambda g: records[i].__setitem__("grad", g))
        return fwd

    handles = [blk.attn.attn_drop.register_forward_hook(hook(i)) for i, blk in enumerate(model.blocks)]
    try:
        with unfused_attention(model):
            yield records
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def activation(module: nn.Module, keep_grad: bool = True) -> Iterator[dict]:
    """Yields a dict filled during a forward with the module's output ``act`` and, after a backward,
    its gradient ``grad``."""
    store: dict = {}

    def fwd(_m, _inp, out):
        out = out[0] if isinstance(out, tuple) else out
        store["act"] = out
        if keep_grad:
            out.register_hook(lambda g: store.__setitem__("grad", g))

    handle = module.register_forward_hook(fwd)
    try:
        yield store
    finally:
        handle.remove()


@contextlib.contextmanager
def input_gradients(model: nn.Module, x: torch.Tensor) -> Iterator[torch.Tensor]:
    """A forward for a backward that wants gradients of activations only: yields ``x`` [C, H, W] as a batch of
    one that requires grad, while ``model``'s parameters do not. No weight gets a .grad (ViT-L: 1.2 GB
    never used) and autograd saves only what the activations' gradients need; held weights
    (--weight-dtype) stay held through the backward (:func:`~vitscope.loaders.held.remade_in_backward`).
    Call inside :func:`using`, which makes the model this thread's while its flags are changed."""
    from ..loaders.held import remade_in_backward

    flipped = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in flipped:
            p.requires_grad_(False)
        with torch.enable_grad(), remade_in_backward():
            yield x[None].to(device_of(model)).detach().requires_grad_(True)
    finally:
        for p in flipped:
            p.requires_grad_(True)


def backward_on(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """Forward one input [C, H, W] with gradients and back-propagate the target logit; returns the
    logits [C]. Call inside :func:`using` and the capture contexts that should see the pass."""
    with input_gradients(model, x) as xb:
        out = model(xb)
        out[0, target].backward()
    return out[0].detach()


def default_gradcam_layer(model: nn.Module) -> nn.Module:
    """A ViT's last block ``norm1`` (as pytorch-grad-cam's ViT example); a CNN's last feature stage."""
    if hasattr(model, "blocks"):
        return model.blocks[-1].norm1
    info = getattr(model, "feature_info", None)
    if info:
        name = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
        return model.get_submodule(name)
    raise ValueError("no default Grad-CAM layer for this model: pass one")


# -- the residual stream (traces) -----------------------------------------------------------------
AttentionSink = Callable[[int, torch.Tensor], None]
UpdateSink = Callable[[str, int, torch.Tensor], None]  # (kind, layer, [B, N, D])
UPDATE_KINDS = ("attn_out", "mlp_out", "attn_proj", "mlp_fc2")


def is_post_norm(block: nn.Module) -> bool:
    """timm's ``ResPostBlock`` (``vit_base_patch16_rpn_224``): x + norm1(attn(x)), x + norm2(mlp(x))."""
    return not hasattr(block, "ls1") and hasattr(block, "norm1")


def added_modules(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The modules whose outputs are the attention and MLP updates exactly as added to the stream:
    ``ls1``/``ls2`` (after LayerScale; Identity without it) in a pre-norm block, ``norm1``/``norm2`` in
    a post-norm block (drop path is the identity in eval mode)."""
    if is_post_norm(block):
        return block.norm1, block.norm2
    return block.ls1, block.ls2


def has_layer_scale(block: nn.Module) -> bool:
    return not is_post_norm(block) and not isinstance(block.ls1, nn.Identity)


def layer_scale_gammas(blocks: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """([L, D], [L, D]): what each block's ``ls1`` / ``ls2`` multiply the ``attn.proj`` / ``mlp.fc2`` outputs by
    (ones for an Identity), so the updates as added are those outputs times these, bit for bit (one float
    multiply, as timm's LayerScale does it). None when a block's is not that plain multiply (post-norm, or
    another module): then the updates must be recorded as they are."""
    g1, g2 = [], []
    for blk in blocks:
        if is_post_norm(blk):
            return None
        for ls, out in ((blk.ls1, g1), (blk.ls2, g2)):
            if isinstance(ls, nn.Identity):
                out.append(None)
            elif type(ls).__name__ == "LayerScale" and isinstance(getattr(ls, "gamma", None), torch.Tensor):
                out.append(ls.gamma.detach().float().cpu().clone())
            else:
                return None
    dims = {g.shape for g in g1 + g2 if g is not None}
    if len(dims) != 1:
        return None
    ones = torch.ones(next(iter(dims)))
    return (torch.stack([ones if g is None else g for g in g1]), torch.stack([ones if g is None else g for g in g2]))


def paper_read_point(block: nn.Module) -> str:
    """Where Vilas et al. read the sublayer updates, in words (see analysis/projection.py)."""
    if is_post_norm(block):
        return "norm1(attn.proj) / norm2(mlp.fc2): the post-norm block's updates as added to the stream"
    if has_layer_scale(block):
        return "attn.proj / mlp.fc2 outputs, before LayerScale"
    return "attn.proj / mlp.fc2 outputs (no LayerScale: as added to the stream)"


def read_point_short(block: nn.Module, convention: str) -> str:
    """Where the updates were read, in the few words a pane's title has room for; "" where the read point is
    simply the update as added to the stream (no LayerScale, pre-norm), which needs no saying."""
    if is_post_norm(block):
        return "updates through norm1 / norm2"
    if has_layer_scale(block):
        return "updates before LayerScale" if convention == "paper" else "updates after LayerScale"
    return ""


def stream_read_point(block: nn.Module) -> str:
    if is_post_norm(block):
        return "norm1 / norm2 outputs: the updates as added to the stream"
    return "ls1 / ls2 outputs: the updates as added to the stream (after LayerScale)"


@dataclass
class Recorder:
    """Forward hooks that copy each block's tensors into one preallocated buffer per kind, [L(+1), B, ...]:
    ``resid`` (the stream entering each block, then the last block's output), ``attn`` (probabilities),
    ``attn_out`` / ``mlp_out`` (the sublayer updates as added to the stream: see :func:`added_modules`)
    and, only for blocks with LayerScale (where they differ from those), ``attn_proj`` / ``mlp_fc2``
    (the outputs of ``attn.proj`` / ``mlp.fc2`` before LayerScale: the paper's read points).

    The attention is what grows with the square of the tokens: ``attn_layers`` (sorted block indices,
    default all) says whose is kept, ``attn_dtype`` how (float16 halves it), and ``keep_attention=False``
    keeps none. Every ``attention_sinks`` callable still sees each layer's probabilities [B, H, N, N] as
    the forward makes them (a digest, a file being written), so nothing needs all layers at once.
    ``attention=False`` does not capture them at all (attention stays fused: dataset-level curves need none)."""

    model: nn.Module
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    attn_layers: tuple[int, ...] | None = None
    attn_dtype: torch.dtype = torch.float32
    keep_attention: bool = True
    attention_sinks: list[AttentionSink] = field(default_factory=list)
    keep_stream: bool = True  # resid and the updates (False: a pass that only feeds the sinks)
    attention: bool = True  # False: no probabilities at all, no unfused attention
    # LayerScale models: attn_out / mlp_out not recorded when they are attn_proj / mlp_fc2 times
    # :func:`layer_scale_gammas` (the trace derives them: two [L, N, D] buffers fewer, 270 MB for ViT-L@518)
    derive_updates: bool = False
    heads_one_at_a_time: bool = False  # :func:`attention_one_head_at_a_time` (big-token captures)
    # the sublayer updates (UPDATE_KINDS): held in buffers, and/or handed to ``update_sinks`` as made
    keep_updates: bool = True
    update_sinks: list[UpdateSink] = field(default_factory=list)

    def _store(self, kind: str, i: int, output: bool = True):
        n = len(self.model.blocks)
        slot: int | None = i if kind == "attn" or self.keep_stream else None
        update = kind in UPDATE_KINDS
        if update and not self.keep_updates:
            slot = None
        if kind == "attn":
            if not self.keep_attention or (self.attn_layers is not None and i not in self.attn_layers):
                slot = None
            elif self.attn_layers is not None:
                n, slot = len(self.attn_layers), self.attn_layers.index(i)

        def put(t: torch.Tensor) -> None:
            if kind == "attn":
                for sink in self.attention_sinks:
                    sink(i, t.detach())
            elif update:
                for update_sink in self.update_sinks:
                    update_sink(kind, i, t.detach())
            if slot is None:
                return
            buf = self.buffers.get(kind)
            if buf is None:
                rows = n + 1 if kind == "resid" else n
                dtype = self.attn_dtype if kind == "attn" else torch.float32
                buf = self.buffers[kind] = torch.empty((rows, *t.shape), dtype=dtype, device=t.device)
            buf[slot].copy_(t.detach())

        if output:
            return lambda _m, _inp, out: put(out)
        return lambda _m, inp: put(inp[0])

    @contextlib.contextmanager
    def hooked(self) -> Iterator["Recorder"]:
        blocks = self.model.blocks
        handles = []
        paper_points = any(has_layer_scale(b) for b in blocks)
        derived = self.derive_updates and paper_points and layer_scale_gammas(blocks) is not None
        updates = (self.keep_stream and self.keep_updates) or bool(self.update_sinks)
        try:
            for i, blk in enumerate(blocks):
                attn_added, mlp_added = added_modules(blk)
                handles.append(blk.register_forward_pre_hook(self._store("resid", i, output=False)))
                if self.attention:
                    handles.append(blk.attn.attn_drop.register_forward_hook(self._store("attn", i)))
                if updates and not derived:
                    handles.append(attn_added.register_forward_hook(self._store("attn_out", i)))
                    handles.append(mlp_added.register_forward_hook(self._store("mlp_out", i)))
                if updates and paper_points:
                    handles.append(blk.attn.proj.register_forward_hook(self._store("attn_proj", i)))
                    handles.append(blk.mlp.fc2.register_forward_hook(self._store("mlp_fc2", i)))
            handles.append(blocks[-1].register_forward_hook(self._store("resid", len(blocks))))
            with contextlib.ExitStack() as stack:
                if self.attention:
                    stack.enter_context(unfused_attention(self.model))
                    if self.heads_one_at_a_time:
                        stack.enter_context(attention_one_head_at_a_time(self.model))
                yield self
        finally:
            for h in handles:
                h.remove()


def embed(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The tokens entering block 0 for a batch of normalised images [B, C, H, W]."""
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    return model.norm_pre(x)


def run_from(model: nn.Module, x: torch.Tensor, layer: int) -> torch.Tensor:
    """Logits from the stream ``x`` [B, N, D] entering block ``layer``."""
    for blk in model.blocks[layer:]:
        x = blk(x)
    return model.forward_head(model.norm(x))


# -- heads --------------------------------------------------------------------------------------
def head_dims(model: nn.Module, layer: int) -> tuple[int, int]:
    attn = model.blocks[layer].attn
    return attn.num_heads, attn.head_dim


def head_inputs(model: nn.Module, layer: int, x: torch.Tensor) -> torch.Tensor:
    """The concatenated per-head outputs [B, N, H*hd] entering ``attn.proj`` of block ``layer`` for the
    stream ``x`` entering that block."""
    store: dict = {}
    proj = model.blocks[layer].attn.proj
    h = proj.register_forward_pre_hook(lambda _m, inp: store.__setitem__("x", inp[0].detach()))
    try:
        model.blocks[layer](x)
    finally:
        h.remove()
    return store["x"]


@contextlib.contextmanager
def one_head_per_item(model: nn.Module, layer: int, fill: torch.Tensor | None = None) -> Iterator[None]:
    """For a batch of H copies, item b has head b of block ``layer`` replaced by ``fill`` ([N, H*hd],
    its slice for that head) or by zero: H ablations in one batched pass."""
    H, hd = head_dims(model, layer)

    def ablate(_m, inp):
        z = inp[0].clone()
        for b in range(H):
            sl = slice(b * hd, (b + 1) * hd)
            z[b, :, sl] = 0.0 if fill is None else fill[:, sl]
        return (z,)

    handle = model.blocks[layer].attn.proj.register_forward_pre_hook(ablate)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _removed_after(handles: list) -> Iterator[None]:
    """The hook ``handles`` removed when the block ends, however it ends."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def head_input_grads(model: nn.Module) -> Iterator[list[dict]]:
    """Per block: ``z`` (input of attn.proj) and, after a backward, its gradient ``g``."""
    store: list[dict] = [dict() for _ in model.blocks]

    def grab(i: int):
        def pre(_m, inp):
            z = inp[0]
            store[i]["z"] = z
            z.register_hook(lambda g: store[i].__setitem__("g", g))
        return pre

    handles = [blk.attn.proj.register_forward_pre_hook(grab(i)) for i, blk in enumerate(model.blocks)]
    with _removed_after(handles):
        yield store


# -- the paper's further reads (key-value memories, class maps, context perturbations) --------------
@contextlib.contextmanager
def memory_coefficients(model: nn.Module) -> Iterator[list[dict]]:
    """Per block, filled during a forward: ``attn`` [B, N, D], the input of ``attn.proj`` (each head's
    attention-weighted values: the coefficients of the projection's columns), and ``mlp`` [B, N, M],
    the output of ``mlp.fc1`` (the key activations of the MLP's memories, as the authors read them)."""
    store: list[dict] = [dict() for _ in model.blocks]
    handles = []
    for i, blk in enumerate(model.blocks):
        handles.append(blk.attn.proj.register_forward_pre_hook(
            lambda _m, inp, i=i: store[i].__setitem__("attn", inp[0].detach())))
        handles.append(blk.mlp.fc1.register_forward_hook(
            lambda _m, _inp, out, i=i: store[i].__setitem__("mlp", out.detach())))
    with _removed_after(handles):
        yield store


@contextlib.contextmanager
def paper_attention_updates(model: nn.Module) -> Iterator[list[dict]]:
    """Per block, ``update``: the attention update at the paper's read point (``attn.proj``'s output;
    ``norm1``'s in a post-norm block), kept in the autograd graph."""
    store: list[dict] = [dict() for _ in model.blocks]
    handles = [(blk.norm1 if is_post_norm(blk) else blk.attn.proj).register_forward_hook(
        lambda _m, _inp, out, i=i: store[i].__setitem__("update", out)) for i, blk in enumerate(model.blocks)]
    with _removed_after(handles):
        yield store


@contextlib.contextmanager
def attention_override(model: nn.Module, change: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Every block's attention probabilities [B, H, N, N] are replaced by ``change(probs)`` before
    they weight the values (unfused attention, read and replaced at ``attn_drop``)."""
    handles = [blk.attn.attn_drop.register_forward_hook(lambda _m, _inp, out: change(out))
               for blk in model.blocks]
    try:
        with unfused_attention(model):
            yield
    finally:
        for h in handles:
            h.remove()
