"""The IDX format of MNIST and Fashion-MNIST (optionally gzip-compressed)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import VitscopeError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (magic 0x00 0x00 type ndim, big-endian dims, then data)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise VitscopeError(f"cannot read IDX file ({e})", path) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES or not 1 <= data[3] <= 4:
        raise VitscopeError("corrupt IDX header (expected magic 0x0000 + type + ndim)", path)
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise VitscopeError("corrupt IDX header (truncated dimensions)", path)
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[data[2]])
    n = int(np.prod(dims)) * dtype.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != n:
        raise VitscopeError(f"IDX data has {len(body)} bytes, header says {n} ({'x'.join(map(str, dims))})", path)
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=True)
