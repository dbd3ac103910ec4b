"""Where dataset files are: found without reading them and without torch (the command line checks a
--dataset before a screen opens)."""
from __future__ import annotations

import os
from pathlib import Path

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find_file(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz", folder / "raw" / stem, folder / "raw" / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def _search_dirs(name: str, data_dir: str | Path | None) -> list[Path]:
    if data_dir:  # an explicit folder is the only place looked at
        return [Path(data_dir).expanduser()]
    dirs: list[Path] = []
    env = os.environ.get("VITSCOPE_DATA")
    if env:
        dirs += [Path(env) / name, Path(env)]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitscope" / "data"
    tv = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}[name]
    if name == "fashion-mnist":
        dirs.append(DEBIAN_FASHION)
    dirs += [Path("/usr/share/datasets") / name, cache / tv]
    return dirs


def how_to_get(name: str) -> str:
    if name == "fashion-mnist":
        return "install it with 'apt-get install dataset-fashion-mnist', pass --data-dir, or use --download"
    return "pass --data-dir DIR with the IDX files, set VITSCOPE_DATA, or use --download"




def not_found(name: str, split: str, data_dir: str | Path | None, dirs: list[Path]) -> str:
    """The one line that says a split's IDX files are missing: what was looked for, where, and how to get it."""
    where = str(Path(data_dir).expanduser()) if data_dir else ", ".join(str(d) for d in dirs[:3])
    missing = " and ".join(f"{s}(.gz)" for s in IDX_FILES[split])
    return f"{name} {split} split not found: looked for {missing} in {where}; {how_to_get(name)}"
