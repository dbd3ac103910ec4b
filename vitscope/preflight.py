"""Checks that run before a screen opens, without torch: is MODEL something vitscope can read, is IMAGE
an image? A bad argument fails here with one line and exit status 2, never as a dead app."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from .errors import VitscopeError
from .paths import check_regular_file


def sniff_checkpoint(path: Path) -> str:
    """'safetensors', 'zip' (torch.save) or 'pickle' (legacy torch.save), from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= 100_000_000 and n + 8 <= path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(8)
                try:
                    json.loads(f.read(n))
                    return "safetensors"
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # nested too deep: not ours
                    pass
    if head.startswith(b"PK"):
        if zipfile.is_zipfile(path):
            return "zip"
        raise VitscopeError("cannot read checkpoint: the file is truncated or corrupt (incomplete zip)", path)
    if head.startswith(b"\x80"):
        return "pickle"
    raise VitscopeError("not a PyTorch checkpoint or safetensors file", path)


def check_model_ref(ref: str, weights: str | None = None) -> None:
    """A MODEL argument: timm:NAME (checked when timm loads), a Hugging Face directory, or a checkpoint."""
    if ref.startswith("timm:"):
        if not ref[5:]:
            raise VitscopeError("timm: needs a model name, e.g. timm:vit_small_patch16_224")
        if weights is not None:
            wpath = Path(weights).expanduser()
            check_regular_file(wpath, "a state dict file for --weights")
            sniff_checkpoint(wpath)
        return
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise VitscopeError("is a directory without config.json; expected a Hugging Face model directory "
                                "or a checkpoint file", path)
        return
    check_regular_file(path, "a model checkpoint file")
    sniff_checkpoint(path)


def check_image(ref: str) -> None:
    """An IMAGE argument: a regular file that Pillow can read (decoded once, with the bomb guard)."""
    from .data.images import read_image

    read_image(Path(ref).expanduser())


def check_dataset(name: str, split: str = "test", data_dir: str | None = None, download: bool = False) -> None:
    """A --dataset argument: a known name whose files are there (found, not read: no torch needed)."""
    from .data.locate import IDX_FILES, _find_file, _search_dirs, not_found

    if name.startswith("folder:"):
        root = Path(name[len("folder:"):]).expanduser()
        if not root.is_dir():
            raise VitscopeError("image folder not found (folder:PATH wants one subfolder per class)", root)
        return
    if name == "cifar10" or download:
        return  # torchvision finds (or downloads) it; its own message names the folder
    if name not in ("fashion-mnist", "mnist"):
        raise VitscopeError(f"unknown dataset {name!r} (known: fashion-mnist, mnist, cifar10, folder:PATH)")
    if split not in IDX_FILES:
        raise VitscopeError(f"unknown split {split!r} (use train or test)")
    dirs = _search_dirs(name, data_dir)
    if not any(_find_file(d, IDX_FILES[split][0]) and _find_file(d, IDX_FILES[split][1]) for d in dirs):
        raise VitscopeError(not_found(name, split, data_dir, dirs))
