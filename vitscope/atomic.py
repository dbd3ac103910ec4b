"""Atomic file writes: a crash or Ctrl-C never leaves a half-written file where the user's was."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0o022)  # read once, at import (os.umask is the only way, and it sets it too)
os.umask(_UMASK)
UMASK = _UMASK  # the process's umask, for modes set by hand (mkstemp / mkdtemp make 0600 / 0700)


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> Path:
    """Write via a temporary file in the same folder, fsync, then rename over the target. The temporary
    name is unique (mkstemp), so two writers of one file, even threads of one process, never share it:
    the last rename wins and the file is always one whole version. ``durable=False`` skips the fsync: for a
    file rewritten twice a second whose loss in a power cut costs nothing (a heartbeat); still never torn."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # as open() would make it (mkstemp's is 0600)
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str, durable: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), durable)


def unused_path(path: str | Path) -> Path:
    """``path``, or ``stem-1.suffix``, ``stem-2.suffix``... : the first name that does not exist yet
    (a save never overwrites an earlier one)."""
    path = Path(path)
    k, out = 1, path
    while out.exists():
        out = path.with_name(f"{path.stem}-{k}{path.suffix}")
        k += 1
    return out


def remove_stale_temps(folder: str | Path, name: str = "*", older_than_s: float = 0.0) -> list[Path]:
    """Remove what atomic writes of ``name`` (every file: ``*``) in ``folder`` left when killed between
    creating their temporary file and renaming it (``.NAME.XXXXXXXX.tmp``). ``older_than_s`` spares the
    temporary files of writers that may still be running (in a folder several processes share)."""
    import glob
    import time

    folder = Path(folder)
    pattern = f".{name if name == '*' else glob.escape(name)}.*.tmp"
    removed = []
    now = time.time()
    for tmp in folder.glob(pattern):
        try:
            if now - tmp.lstat().st_mtime >= older_than_s and not tmp.is_dir():
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass  # gone already (another process cleaned it), or not ours to remove
    return removed


def write_output(path: str | Path, data: bytes) -> Path:
    """:func:`atomic_write_bytes` for a file the person asked for: a failure (a full disk, a read-only
    folder) is one :class:`~vitscope.errors.VitscopeError` naming the file, the previous file as it was."""
    from .errors import VitscopeError

    path = Path(path)
    existed = path.exists()
    try:
        return atomic_write_bytes(path, data)
    except OSError as e:
        kept = "the previous one is intact" if existed else "nothing was written"
        raise VitscopeError(f"cannot write {path.name}: {e.strerror or e} ({kept})", path) from None
