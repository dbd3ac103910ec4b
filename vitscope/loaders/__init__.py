"""Opening models: ``load(ref)`` turns any supported MODEL reference into a :class:`Loaded`.

A MODEL reference is a vitscope checkpoint, a bare or wrapped state dict (timm, Hugging Face,
torchvision or hand-written layout), a Hugging Face model directory, or ``timm:NAME``. Every model
is rebuilt as a timm VisionTransformer and described by a :class:`~vitscope.spec.ModelSpec`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import VitscopeError
from ..spec import ModelSpec
from . import hf, reference, torchvision_vit
from .checkpoint import FORMAT, read_meta, save_checkpoint  # noqa: F401  (re-exported)
from .files import read_checkpoint, read_class_names, read_json, unwrap_state_dict
from .timm_vit import (VitRecipe, build_vit, check_heads, check_supported, make_cnn_spec, make_spec,
                       normalise_data_config, recipe_from_timm_state_dict)

LAYOUTS = ("vitscope checkpoint", "timm VisionTransformer", "Hugging Face ViT", "torchvision vit_*",
           "hand-written reference (patch_embed.projection + blocks.N.attn.qkv)")


@dataclass
class Loaded:
    """An opened model: the torch module, in eval mode, and what downstream code needs to know."""

    model: nn.Module
    spec: ModelSpec

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "Loaded":
        self.model.to(device)
        return self


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise VitscopeError(f"unknown device {device!r} (use auto, cpu, cuda or mps)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VitscopeError(f"--device {device}: CUDA is not available on this machine")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise VitscopeError("--device mps: MPS is not available on this machine")
    return torch.device(device)


def load(ref: str | Path, *, weights: str | Path | None = None, pretrained: bool = False,
         heads: int | None = None, img_size: int | tuple[int, int] | None = None,
         classes: str | Path | list[str] | None = None, trust_checkpoint: bool = False,
         device: str = "cpu", allow_cnn: bool = False) -> Loaded:
    """Open a MODEL reference (see module docstring) as a timm ViT in eval mode.

    With ``allow_cnn`` a vitscope checkpoint or ``timm:NAME`` of a CNN opens too (``spec.kind == "cnn"``):
    sweeps, finetuning and Grad-CAM comparisons use those.
    """
    hints: dict[str, Any] = {"heads": heads, "img_size": img_size, "allow_cnn": allow_cnn}
    class_names = _class_names(classes)
    ref = str(ref)
    if ref.startswith("timm:"):
        loaded = _load_timm_name(ref[5:], weights, pretrained, hints, class_names, trust_checkpoint)
    else:
        path = Path(ref).expanduser()
        if weights is not None:
            raise VitscopeError("--weights goes with timm:NAME; a file or directory MODEL carries its own weights")
        if path.is_dir():
            loaded = _load_hf_dir(path, hints, class_names, trust_checkpoint)
        else:
            loaded = _load_file(path, hints, class_names, trust_checkpoint)
    return loaded.to(resolve_device(device))


def _class_names(classes: str | Path | list[str] | None) -> list[str] | None:
    if classes is None or isinstance(classes, list):
        return classes
    return read_class_names(Path(classes))


def _finish(model: nn.Module, *, family: str, arch: str, kwargs: dict[str, Any],
            source: str, classes: list[str] | None, data_config: dict[str, Any] | None, random_weights: bool,
            notes: list[str] | None = None, allow_cnn: bool = False) -> Loaded:
    from timm.models.vision_transformer import VisionTransformer

    if allow_cnn and not isinstance(model, VisionTransformer) and _is_cnn(model):
        spec = make_cnn_spec(model.eval(), arch=arch, kwargs=kwargs, source=source, classes=classes,
                             data_config=data_config, random_weights=random_weights)
        spec.notes = list(notes or [])
        return Loaded(model.eval(), spec)
    check_supported(model, source)
    spec = make_spec(model, family=family, arch=arch, kwargs=kwargs, source=source, classes=classes,
                     data_config=data_config, random_weights=random_weights, notes=notes)
    return Loaded(model.eval(), spec)


def _is_cnn(model: nn.Module) -> bool:
    """A convnet: forward_features gives an NCHW map with num_features channels (Swin-like models give
    NHWC and are not treated as CNNs)."""
    if not hasattr(model, "forward_features") or not getattr(model, "num_features", None):
        return False
    cfg = getattr(model, "pretrained_cfg", None) or {}
    c, h, w = cfg.get("input_size", (getattr(model, "in_chans", 3), 224, 224))
    try:
        with torch.no_grad():
            feat = model.eval().forward_features(torch.zeros(1, c, h, w, device=next(model.parameters()).device))
    except Exception:  # any model that cannot run a blank input is not one we can show
        return False
    return feat.ndim == 4 and feat.shape[1] == model.num_features


def _from_recipe(recipe: VitRecipe, path: Path, classes: list[str] | None,
                 family: str | None = None) -> Loaded:
    model = build_vit(recipe, path)
    return _finish(model, family=family or recipe.family, arch=recipe.arch, kwargs=recipe.kwargs,
                   source=str(path), classes=classes or recipe.classes, data_config=recipe.data_config,
                   random_weights=False, notes=recipe.notes)


def _timm_heads(arch: str) -> int | None:
    import timm

    if not timm.is_model(arch):
        return None
    try:
        with torch.device("meta"):
            m = timm.create_model(arch, pretrained=False)
        return m.blocks[0].attn.num_heads
    except Exception:  # an arch timm knows but that is not a ViT: check_supported says so later
        return None


def _load_timm_name(name: str, weights: str | Path | None, pretrained: bool, hints: dict[str, Any],
                    classes: list[str] | None, trust: bool) -> Loaded:
    import timm

    source = f"timm:{name}"
    arch = name.split(".")[0]
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:5]
        raise VitscopeError(f"unknown timm model {name!r}" + (f" (close: {', '.join(close)})" if close else ""))
    if weights is not None:
        wpath = Path(weights).expanduser()
        obj, _ = read_checkpoint(wpath, trust)
        sd, _ = unwrap_state_dict(obj, wpath)
        if "patch_embed.proj.weight" not in sd:
            raise VitscopeError(f"--weights is not a timm ViT state dict (tried layouts: {', '.join(LAYOUTS[1:2])})",
                                wpath)
        hints = dict(hints, heads=hints.get("heads") or _timm_heads(arch))
        recipe = recipe_from_timm_state_dict(sd, hints, wpath, arch=arch)
        return _from_recipe(recipe, wpath, classes, family="timm")
    kwargs: dict[str, Any] = {}
    if hints.get("img_size"):
        kwargs["img_size"] = hints["img_size"]
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (RuntimeError, OSError, ValueError) as e:
        if pretrained:
            raise VitscopeError(f"cannot get pretrained weights for {name} ({str(e).splitlines()[0][:200]}); "
                                "check the network or the Hugging Face cache, or pass --weights FILE",
                                source) from None
        raise VitscopeError(f"cannot create {name}: {e}", source) from None
    notes = [] if pretrained else ["RANDOM WEIGHTS: no --weights or --pretrained given; maps mean nothing"]
    return _finish(model, family="timm", arch=arch, kwargs=kwargs, source=source, classes=classes,
                   data_config=None, random_weights=not pretrained, notes=notes, allow_cnn=bool(hints.get("allow_cnn")))


def _beside_config(path: Path) -> dict[str, Any]:
    cfg_path = path.parent / "config.json"
    return read_json(cfg_path) if cfg_path.is_file() else {}


def _hints_from_config(cfg: dict[str, Any], hints: dict[str, Any]) -> dict[str, Any]:
    out = dict(hints)
    out["heads"] = hints.get("heads") or cfg.get("num_heads") or cfg.get("num_attention_heads") or cfg.get("heads")
    out["img_size"] = hints.get("img_size") or cfg.get("img_size") or cfg.get("image_size")
    out["layer_norm_eps"] = cfg.get("layer_norm_eps")
    return out


def _load_file(path: Path, hints: dict[str, Any], classes: list[str] | None, trust: bool) -> Loaded:
    obj, meta = read_checkpoint(path, trust)
    if "vitscope" in meta:
        return _load_vitscope(obj, meta, path, classes, bool(hints.get("allow_cnn")))
    if isinstance(obj, nn.Module):
        from timm.models.vision_transformer import VisionTransformer

        if isinstance(obj, VisionTransformer):
            return _finish(obj.float().cpu(), family="timm", arch=type(obj).__name__, kwargs={},
                           source=str(path), classes=classes, data_config=None, random_weights=False)
    sd, extra = unwrap_state_dict(obj, path)
    cfg = _beside_config(path)
    hints = _hints_from_config(cfg, hints)
    if classes is None and isinstance(cfg.get("id2label") or cfg.get("classes"), (dict, list)):
        c = cfg.get("classes") or cfg["id2label"]
        classes = _ordered_names(c, path.parent / "config.json")
    if any(k.startswith("layers.") and ".blocks." in k for k in sd) or any("relative_position" in k for k in sd):
        raise VitscopeError("looks like a Swin-style or other hierarchical model, which is not supported yet; "
                            f"vitscope opens plain ViTs ({'; '.join(LAYOUTS)})", path)
    if "patch_embed.proj.weight" in sd:
        arch = extra.get("arch") if isinstance(extra.get("arch"), str) else None
        arch_heads = _timm_heads(arch) if arch else None  # timm training checkpoint: the arch gives the heads
        hints["heads"] = hints.get("heads") or arch_heads
        known = arch_heads is not None
        recipe = recipe_from_timm_state_dict(sd, hints, path, arch=arch if known else None)
        if not known and not (cfg.get("mean") and cfg.get("std")):
            recipe.notes.append("preprocessing guessed: timm ViT defaults (mean/std 0.5, crop 0.9, bicubic); put "
                                "mean/std/crop_pct in a config.json beside the file if the model used others")
        if cfg.get("mean") and cfg.get("std"):
            recipe.data_config = {"input_size": (recipe.kwargs["in_chans"], *_pair(recipe.kwargs["img_size"])),
                                  "mean": cfg["mean"], "std": cfg["std"],
                                  "interpolation": cfg.get("interpolation", "bicubic"),
                                  "crop_pct": cfg.get("crop_pct", 1.0)}
        return _from_recipe(recipe, path, classes)
    if hf.detect(sd):
        return _from_recipe(hf.to_recipe(sd, hints, path, cfg), path, classes)
    if torchvision_vit.detect(sd):
        return _from_recipe(torchvision_vit.to_recipe(sd, hints, path), path, classes)
    if reference.detect(sd):
        return _from_recipe(reference.to_recipe(sd, hints, path), path, classes)
    raise VitscopeError(f"unrecognised state dict layout (tried: {'; '.join(LAYOUTS)}); "
                        f"first keys: {', '.join(list(sd)[:4])}", path)


def _ordered_names(c: dict | list, where: Path) -> list[str]:
    """Class names from a list or an {index: name} mapping (keys must be integers)."""
    if isinstance(c, list):
        return [str(x) for x in c]
    try:
        return [str(c[k]) for k in sorted(c, key=int)]
    except ValueError:
        raise VitscopeError("id2label/classes keys must be class indices", where) from None


def _pair(s: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))


def _load_vitscope(sd: dict[str, torch.Tensor], raw_meta: dict[str, str], path: Path,
                   classes: list[str] | None, allow_cnn: bool = False) -> Loaded:
    meta = read_meta(raw_meta, path)
    kwargs = dict(meta["kwargs"])
    recipe = VitRecipe(arch=meta["arch"], kwargs=kwargs, state_dict=sd, family="vitscope",
                       data_config=meta.get("data_config"), classes=classes or meta.get("classes"))
    import timm

    if not timm.is_model(meta["arch"]):
        raise VitscopeError(f"checkpoint names an unknown timm arch {meta['arch']!r}", path)
    model = build_vit(recipe, path)
    loaded = _finish(model, family="vitscope", arch=meta["arch"], kwargs=kwargs, source=str(path),
                     classes=recipe.classes, data_config=recipe.data_config, random_weights=False,
                     allow_cnn=allow_cnn)
    loaded.spec.notes += [f"trained: {meta['train']}"] if meta.get("train") else []
    return loaded


def _load_hf_dir(path: Path, hints: dict[str, Any], classes: list[str] | None, trust: bool) -> Loaded:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise VitscopeError("is a directory without config.json; expected a Hugging Face model directory "
                            "or a checkpoint file", path)
    cfg = read_json(cfg_path)
    if cfg.get("model_type") not in ("vit", None):
        raise VitscopeError(f"Hugging Face model_type {cfg.get('model_type')!r} is not supported yet "
                            "(supported: vit)", path)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            wpath = path / name
            break
    else:
        raise VitscopeError("no model.safetensors or pytorch_model.bin in the directory", path)
    obj, _ = read_checkpoint(wpath, trust)
    sd, _ = unwrap_state_dict(obj, wpath)
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        p = read_json(pre)
        cfg = dict(cfg, image_mean=p.get("image_mean"), image_std=p.get("image_std"))
    if not hf.detect(sd):
        raise VitscopeError("weights are not a Hugging Face ViT", wpath)
    hints = dict(hints, heads=hints.get("heads") or cfg.get("num_attention_heads"))
    return _from_recipe(hf.to_recipe(sd, hints, wpath, cfg), path, classes)


__all__ = ["Loaded", "load", "resolve_device", "save_checkpoint", "FORMAT", "check_heads",
           "normalise_data_config"]
