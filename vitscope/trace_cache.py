"""A cache of traces: reopening a model and image inspected before draws the attention at once,
before torch is imported (which alone takes seconds on GPU machines); the model then loads in the
background and replaces the cached numbers with exact ones.

An entry is one ``.npz`` (numpy only, no pickle) under ``$VITSCOPE_CACHE/traces`` (default
``~/.cache/vitscope/traces``), written atomically. It holds the attention in float16 (relative error
at most 2**-11, about 0.05%, on weights in [0, 1]), the logits, the image the model saw, each
token's block-output norm, and the model description. The key covers the model (a file's path, size
and modification time — hashing a 350 MB checkpoint would cost more than the whole reopen —, or
timm's pretrained name), every load option, the image's bytes (sha256) and the cache format. A random
initialisation is never cached.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_bytes
from .spec import ModelSpec, TokenLayout

FORMAT = 1


def cache_dir() -> Path:
    base = os.environ.get("VITSCOPE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitscope"
    return Path(base) / "traces"


def _file_id(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def cache_key(model: str, image: str | Path, load_kwargs: dict[str, Any]) -> str | None:
    """The entry's key, or None when the model cannot be cached (random initialisation)."""
    kw = {k: v for k, v in load_kwargs.items() if v not in (None, False)}
    try:
        if model.startswith("timm:"):
            if kw.get("weights"):
                ident: Any = ["timm", model, _file_id(Path(kw.pop("weights")).expanduser())]
            elif kw.get("pretrained"):
                ident = ["timm-pretrained", model]
            else:
                return None  # random init: a new model every time
        else:
            path = Path(model).expanduser()
            files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            ident = [_file_id(p) for p in files]
        if kw.get("classes"):
            kw["classes"] = _file_id(Path(kw["classes"]).expanduser())
        digest = hashlib.sha256(Path(image).expanduser().read_bytes()).hexdigest()
    except OSError:
        return None
    parts = {"model": ident, "options": {k: str(v) for k, v in sorted(kw.items())}, "image": digest,
             "format": FORMAT}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def entry_path(key: str) -> Path:
    return cache_dir() / f"{key}.npz"


@dataclass
class CachedTrace:
    """What the fast panes read from a trace, restored from the cache (numpy, no torch)."""

    attn: np.ndarray  # [L, H, N, N] float32 (stored as float16)
    logits: np.ndarray  # [C]
    image: np.ndarray  # uint8 [H, W, 3]
    token_norms: np.ndarray  # [L, rows, cols]
    layout: TokenLayout
    input: Any = None

    @property
    def num_layers(self) -> int:
        return self.attn.shape[0]

    @property
    def num_heads(self) -> int:
        return self.attn.shape[1]


def store(key: str, spec: ModelSpec, trace: Any, token_norms: np.ndarray) -> Path | None:
    """Write an entry for an opened ViT (``trace`` a real Trace). A trace that keeps only its attention
    digest (a big-token model) is not cached: its float16 attention would not fit (None)."""
    from .analysis.attention import as_array

    if trace.attn is None or getattr(trace, "layers", None) is not None:
        return None
    d = asdict(spec)
    d["layout"] = {"prefix_names": list(spec.layout.prefix_names), "grid": list(spec.layout.grid)}
    buf = io.BytesIO()
    np.savez(buf, attn=as_array(trace.attn).astype(np.float16), logits=as_array(trace.logits),
             image=np.asarray(trace.image, dtype=np.uint8), token_norms=np.asarray(token_norms, np.float32),
             spec=np.array(json.dumps(d, default=list)))
    path = entry_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, buf.getvalue())


def load(path: Path) -> tuple[ModelSpec, CachedTrace] | None:
    """The cached spec and trace, or None when the entry is missing or unreadable (then it is recomputed)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            d = json.loads(str(z["spec"]))
            lay = d.pop("layout")
            layout = TokenLayout(tuple(lay["prefix_names"]), tuple(lay["grid"]))
            for k in ("patch_size", "img_size"):
                d[k] = tuple(d[k])
            spec = ModelSpec(layout=layout, **d)
            tr = CachedTrace(attn=z["attn"].astype(np.float32), logits=z["logits"].astype(np.float32),
                             image=z["image"], token_norms=z["token_norms"], layout=layout)
    except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError):
        return None
    if tr.attn.shape[0] != spec.num_layers or tr.attn.shape[-1] != layout.num_tokens:
        return None
    return spec, tr
