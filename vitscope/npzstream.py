"""An ``.npz`` written one entry at a time, and one array of it a slice at a time.

``np.savez`` takes every array at once (and ``savez_compressed`` into a buffer holds the file a
second time); a big-token trace cannot afford either. numpy has no streaming writer, so this is
written by hand on ``zipfile`` and ``np.lib.format`` (the same entries ``np.savez`` makes, so
``np.load`` reads the file as ever). Entries are stored, not deflated: float32 attention compresses
little (0.79 of its size for a random-init DINOv2-S at 518 px) and deflating it was most of that
export's 65 s.
"""
from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np


class NpzWriter:
    """``add`` whole arrays; ``stream`` one array of known shape in order, slice by slice."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._zip = zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True)

    def add(self, name: str, array: Any) -> None:
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)

    @contextlib.contextmanager
    def stream(self, name: str, shape: tuple[int, ...], dtype: Any) -> Iterator[Callable[[Any], None]]:
        """Yields ``put(part)``: parts are written in order (C order) and must fill ``shape`` exactly."""
        dtype = np.dtype(dtype)
        expected = int(np.prod(shape)) * dtype.itemsize
        written = 0
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as f:
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
            np.lib.format.write_array_header_2_0(f, header)

            def put(part: Any) -> None:
                nonlocal written
                a = np.ascontiguousarray(part, dtype=dtype)
                f.write(memoryview(a).cast("B"))
                written += a.nbytes

            yield put
            if written != expected:
                raise ValueError(f"{name}: wrote {written} of {expected} bytes")

    @property
    def names(self) -> list[str]:
        """The entries written so far (``attn.npy``, ...)."""
        return self._zip.namelist()

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> "NpzWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
