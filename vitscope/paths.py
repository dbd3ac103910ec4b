"""The one check every input file goes through before it is opened: is it a regular, readable file?

Opening a FIFO waits for a writer, and reading /dev/zero or /dev/stdin never ends, so anything that is not
a regular file is refused from its ``stat`` alone, before any ``open``. Each refusal says what the path
is (a directory, a dangling symlink, a symlink loop, a FIFO, no permission...) in one line naming it.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import VitscopeError

NOT_REGULAR = {stat.S_IFIFO: "a FIFO (named pipe): reading it would wait for a writer",
               stat.S_IFSOCK: "a socket",
               stat.S_IFCHR: "a character device (a terminal, or a stream such as /dev/urandom): reading it may "
                             "never end",
               stat.S_IFBLK: "a block device"}


def check_regular_file(path: str | os.PathLike, what: str, folder_hint: str = "") -> Path:
    """``path`` if it is a non-empty regular file this process may read (symlinks followed), else a
    VitscopeError saying what it is instead. ``what`` names what was expected ("an image file");
    ``folder_hint`` is added when the path is a directory (how to give a folder where one is taken)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise VitscopeError(_unreachable(path, e, what), path) from None
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFDIR:
        raise VitscopeError(f"is a directory, expected {what}" + (f"; {folder_hint}" if folder_hint else ""), path)
    if kind != stat.S_IFREG:
        raise VitscopeError(f"is {NOT_REGULAR.get(kind, 'not a regular file')}; expected {what}", path)
    try:  # O_NONBLOCK: should the path have become a FIFO since the stat, the open still returns at once
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise VitscopeError(_unreachable(path, e, what), path) from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise VitscopeError(f"is not a regular file; expected {what}", path)
    if st.st_size == 0:
        raise VitscopeError(f"is empty, expected {what}", path)
    return path


def _unreachable(path: Path, e: OSError, what: str) -> str:
    """Why ``stat`` or ``open`` failed, in words: the errno says which of the usual cases it is."""
    if e.errno == errno.ENOENT:
        if path.is_symlink():
            return f"is a dangling symlink (it points to {os.readlink(path)}, which does not exist); expected {what}"
        return f"no such file (expected {what})"
    if e.errno == errno.ELOOP:
        return f"is a symlink loop (its links never reach a file); expected {what}"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: this user may not read it; expected {what}"
    if e.errno == errno.ENOTDIR:
        return f"no such file: a part of the path is a file, not a folder (expected {what})"
    return f"cannot open ({e.strerror or e}); expected {what}"
