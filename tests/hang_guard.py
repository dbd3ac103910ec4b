"""Odd files (FIFOs, sockets, devices, symlink loops...) and a guard that turns a blocked read into a failure.

A reader that opens a FIFO waits for a writer forever; ``no_hang`` runs the call in a thread and, if it is still
running after ``seconds``, opens the FIFOs' write ends (which wakes the reader with end-of-file) and fails the
test, so a regression fails instead of hanging CI.
"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest


def odd_paths(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, words the refusal must contain); all made in ``folder`` except the device."""
    folder.mkdir(parents=True, exist_ok=True)
    d: dict[str, tuple[Path, str]] = {}
    os.mkfifo(folder / "fifo.png")
    d["fifo"] = (folder / "fifo.png", "FIFO")
    (folder / "fifo-link.png").symlink_to(folder / "fifo.png")
    d["symlink_to_fifo"] = (folder / "fifo-link.png", "FIFO")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock.png"))
    sock.close()  # the socket file stays
    d["socket"] = (folder / "sock.png", "socket")
    d["char_device"] = (Path("/dev/zero"), "character device")
    (folder / "zero-link.png").symlink_to("/dev/zero")
    d["symlink_to_device"] = (folder / "zero-link.png", "character device")
    (folder / "adir.png").mkdir()
    d["directory"] = (folder / "adir.png", "is a directory")
    (folder / "loop-a.png").symlink_to(folder / "loop-b.png")
    (folder / "loop-b.png").symlink_to(folder / "loop-a.png")
    d["symlink_loop"] = (folder / "loop-a.png", "symlink loop")
    (folder / "dangling.png").symlink_to(folder / "gone.png")
    d["dangling_symlink"] = (folder / "dangling.png", "dangling symlink")
    d["missing"] = (folder / "nope.png", "no such file")
    (folder / "afile").write_bytes(b"x")
    d["parent_is_a_file"] = (folder / "afile" / "x.png", "not a folder")
    (folder / "empty.png").write_bytes(b"")
    d["empty"] = (folder / "empty.png", "is empty")
    return d


ODD_KINDS = ["fifo", "symlink_to_fifo", "socket", "char_device", "symlink_to_device", "directory", "symlink_loop",
             "dangling_symlink", "missing", "parent_is_a_file", "empty"]


def no_hang(call, fifos: list[Path], seconds: float = 20.0):
    """``call()``'s result (or its exception, re-raised); fails the test if it blocks for ``seconds``."""
    box: dict = {}

    def target():
        try:
            box["result"] = call()
        except BaseException as e:  # handed to the test thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        for f in fifos:  # wake the blocked reader: a writer that closes at once means end-of-file
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        t.join(5)
        pytest.fail(f"blocked for over {seconds:.0f} s (opened a FIFO or read a device?)")
    if "error" in box:
        raise box["error"]
    return box.get("result")


class FifoWatchdog:
    """For code that must run on this thread (a Textual app under Pilot): after ``seconds`` it opens the FIFOs'
    write ends, waking any reader blocked on them; ``fired`` says whether it had to."""

    def __init__(self, fifos: list[Path], seconds: float = 15.0):
        self.fifos, self.seconds, self.fired = fifos, seconds, False
        self._done = threading.Event()

    def _watch(self) -> None:
        if self._done.wait(self.seconds):
            return
        self.fired = True
        while not self._done.is_set():  # until the test ends: each open wakes one blocked reader
            for f in self.fifos:
                try:
                    os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    pass
            self._done.wait(0.2)

    def __enter__(self) -> "FifoWatchdog":
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
