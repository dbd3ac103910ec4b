"""Reading checkpoint files safely: safetensors first, ``torch.load(weights_only=True)`` otherwise.

Pickled objects run code when loaded, so a checkpoint that needs full unpickling is refused unless
the user passes ``--trust-checkpoint``.
"""
from __future__ import annotations

import argparse
import json
import pickle
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_bytes  # noqa: F401  (re-exported)
from ..errors import VitscopeError
from ..paths import check_regular_file

STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".pth.tar", ".tar")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "ema",
                "model_ema", "state_dict_ema", "params")
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.")


def check_file(path: Path, what: str = "checkpoint") -> Path:
    """A non-empty regular file this process may read (FIFOs and devices refused before any open)."""
    return check_regular_file(path, f"a {what}" if what.endswith("file") else f"a {what} file")


def read_safetensors(path: Path, hold: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and the metadata header of a .safetensors file. With ``hold`` (a half dtype), the weights of
    Linear and Conv2d layers are converted as each is read (:func:`_read_converting`)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:  # checks the header whatever reads the data
            meta = f.metadata() or {}
            if hold is not None:
                return _read_converting(path, f, hold), meta
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise VitscopeError(f"not a readable safetensors file ({_short(e)})", path) from None
    return tensors, meta


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _read_converting(path: Path, f: Any, hold: torch.dtype) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, the Linear/Conv2d weights converted to ``hold`` one at a time.

    Written by hand (reading each tensor's bytes at the offsets of the header ``safe_open`` has just checked)
    because safetensors maps the whole file and hands out views of that mapping: every page read stays
    resident while any view lives, so converting its tensors would hold the float32 file and the half copy
    at once (2.5 GB for ViT-L instead of 0.6). Read this way, one float32 tensor exists at a time. Dtypes
    outside the common ones are copied out of the mapping ``f``."""
    from .held import held_copy, is_held_weight

    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        for k in f.keys():
            info = header[k]
            dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                out[k] = f.get_tensor(k).clone()
                continue
            start, end = info["data_offsets"]
            buf = bytearray(end - start)
            fh.seek(8 + n + start)
            if fh.readinto(buf) != len(buf):
                raise ValueError(f"{k}: the file ends inside its data")
            t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
            t = t.reshape(info["shape"])
            out[k] = held_copy(t, hold) if is_held_weight(k, t) else t
            del t, buf
    return out


def read_torch(path: Path, trust: bool) -> Any:
    """``torch.load`` a file: weights only unless the user trusts it."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK"):  # a zip (torch's format) without its central directory
            raise VitscopeError("cannot read checkpoint: the file is truncated or corrupt (incomplete zip)", path)
        # legacy (non-zip) torch files start with a pickle protocol byte 0x80
        if not head.startswith(b"\x80"):
            raise VitscopeError("not a PyTorch checkpoint or safetensors file", path)
    try:
        # timm's training checkpoints carry an argparse.Namespace of plain values: safe to rebuild
        # torch warns about a damaged file's odd pickle protocol before failing on it: the one line the
        # user gets is the VitscopeError below, not a warning from inside torch
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(str(path), map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        if trust:
            raise VitscopeError(f"cannot unpickle checkpoint ({_short(e)})", path) from None
        raise VitscopeError(
            "checkpoint holds pickled Python objects, which can run code when loaded; "
            "if you trust its source, rerun with --trust-checkpoint", path) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError,
            ModuleNotFoundError, ImportError,
            IndexError, KeyError, TypeError, struct.error, AssertionError) as e:
        # a damaged pickle stream (fuzzing: b"\x80", b"\x80\x02G", b"\x80\x02h\x00", a NEWOBJ of a storage
        # type; pickle's documentation lists these among what unpickling raises); torch's legacy format checks
        # its storage keys with assert
        raise VitscopeError(f"cannot read checkpoint, is it truncated or corrupt? ({_short(e)})",
                            path) from None


def read_checkpoint(path: Path, trust: bool = False, hold: torch.dtype | None = None) -> tuple[Any, dict[str, str]]:
    """Whatever the file holds (a state dict, a wrapper dict, a module) and safetensors metadata; ``hold``:
    see :func:`read_safetensors` (a torch file is read whole whatever it holds)."""
    check_file(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path, hold)
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 8 and not zipfile.is_zipfile(path) and _looks_like_safetensors(path):
        return read_safetensors(path, hold)
    del head
    return read_torch(path, trust), {}


def _looks_like_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= 100_000_000:
                return False
            return f.read(1) == b"{"
    except OSError:
        return False


def is_state_dict(obj: Any) -> bool:
    if not isinstance(obj, dict) or not obj:
        return False
    n_tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
    return n_tensors >= max(1, len(obj) // 2) and all(isinstance(k, str) for k in obj)


def unwrap_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Find the weights inside a training checkpoint; returns (state dict, the wrapper's other keys)."""
    extra: dict[str, Any] = {}
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    for _ in range(4):
        if is_state_dict(obj):
            break
        if not isinstance(obj, dict):
            raise VitscopeError(f"holds a {type(obj).__name__}, not a state dict", path)
        for k, v in obj.items():
            if not isinstance(v, (dict, torch.nn.Module)):
                extra.setdefault(k, v)
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], (dict, torch.nn.Module)):
                obj = obj[key]
                if isinstance(obj, torch.nn.Module):
                    obj = obj.state_dict()
                break
        else:
            raise VitscopeError(
                "no weights found: not a state dict and none of the keys "
                f"{', '.join(WRAPPER_KEYS)} holds one (top-level keys: {', '.join(list(obj)[:8])})", path)
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return strip_prefixes(sd), extra


def strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the prefixes DDP (``module.``), torch.compile (``_orig_mod.``) and wrappers add."""
    changed = True
    while changed:
        changed = False
        for p in STRIP_PREFIXES:
            if sd and all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                changed = True
    return sd


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # (nested too deep)
        raise VitscopeError(f"not valid JSON ({_short(e)})", path) from None
    if not isinstance(data, dict):
        raise VitscopeError("expected a JSON object", path)
    return data


def read_class_names(path: Path) -> list[str]:
    """Class names from a text file (one per line), a JSON list, or a JSON {index: name} object."""
    check_file(path, "class-name file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise VitscopeError(f"cannot read class names ({_short(e)})", path) from None
    if path.suffix == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:  # (nested too deep)
            raise VitscopeError(f"not valid JSON ({_short(e)})", path) from None
        if isinstance(data, dict):
            data = data.get("classes", data.get("id2label", data))
        if isinstance(data, (dict, list)):
            return ordered_names(data, path)
        raise VitscopeError("expected a list of class names", path)
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise VitscopeError("no class names in file", path)
    return names


def ordered_names(c: dict[Any, Any] | list[Any], where: Path) -> list[str]:
    """Class names from a list or an {index: name} mapping (keys must be integers)."""
    if isinstance(c, list):
        return [str(x) for x in c]
    try:
        return [str(c[k]) for k in sorted(c, key=int)]
    except (TypeError, ValueError):
        raise VitscopeError("id2label/classes keys must be class indices", where) from None


def config_beside(path: Path) -> dict[str, Any]:
    """The config.json in a weights file's folder (heads, image size, classes, mean/std), or {}."""
    cfg_path = path.parent / "config.json"
    return read_json(cfg_path) if cfg_path.is_file() else {}


def config_class_names(config: Mapping[str, Any], where: Path) -> list[str] | None:
    """Class names a config.json gives (``classes``, else ``id2label``), or None."""
    c = config.get("classes") or config.get("id2label")
    return ordered_names(c, where) if isinstance(c, (dict, list)) else None


def _short(e: BaseException) -> str:
    s = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return s[:200]
