"""Where `vitscope export` of a big-token model spends its memory: peak RSS per phase (import, load, trace,
each export step), read from the kernel's high-water mark (VmHWM, reset before each phase through
/proc/self/clear_refs; tracemalloc does not see torch's allocations), and the RSS left after each phase.

Run: python benchmarks/profile_bigtoken.py CHECKPOINT IMAGE [export options as in the CLI: --layers 0,-1 --dtype float16
     --weight-dtype bfloat16]
(bench_bigtoken.py makes the ViT-L/14@518 checkpoint; this script only profiles).
"""
from __future__ import annotations

import contextlib
import functools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

ROWS: list[tuple[str, float, float, float]] = []
_OPEN: list[list[float]] = []  # per open phase: the largest peak of the phases inside it (their resets hide it)


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    t0 = time.perf_counter()
    _OPEN.append([0.0])
    try:
        yield
    finally:
        peak = max(_status("VmHWM"), _OPEN.pop()[0])
        if _OPEN:
            _OPEN[-1][0] = max(_OPEN[-1][0], peak)
        ROWS.append((name, peak, _status("VmRSS"), time.perf_counter() - t0))


def timed(owner: Any, attr: str, name: str | None = None) -> None:
    """Wrap owner.attr so that each call is one phase."""
    fn: Callable = getattr(owner, attr)

    @functools.wraps(fn)
    def wrapper(*a, **k):
        with phase(name or attr):
            return fn(*a, **k)
    setattr(owner, attr, wrapper)


def main() -> None:
    ckpt, image, *rest = sys.argv[1:]
    with phase("import torch+timm+vitscope"):
        import timm  # noqa: F401
        import torch  # noqa: F401

        import vitscope
        from vitscope import export as ex
        from vitscope.views import Session
    with phase("load"):
        held = rest[rest.index("--weight-dtype") + 1] if "--weight-dtype" in rest else "float32"
        loaded = vitscope.load(ckpt, weight_dtype=held)
    with phase("plain fused forward (the baseline's)"):
        from vitscope.data.images import load_image

        with torch.inference_mode():
            loaded.model(load_image(image, loaded.spec.data_config).input[None])
    layers = rest[rest.index("--layers") + 1] if "--layers" in rest else None
    dtype = rest[rest.index("--dtype") + 1] if "--dtype" in rest else "float32"
    s = ex.ExportSettings(dtype=dtype, layers=None if layers is None else ex.parse_layers(layers, loaded.spec.num_layers))
    for attr in ("write_attention", "vit_arrays", "analysis_arrays", "_write_data", "_write_all", "_move_in"):
        if hasattr(ex, attr):
            timed(ex, attr)
    timed(Session, "head_stats")
    timed(Session, "open", "trace (Session.open)")
    with tempfile.TemporaryDirectory(dir=Path(ckpt).parent) as d, phase("export, all of it"):
        if hasattr(ex, "export_image"):  # the trace streams the attention into trace.npz
            ex.export_image(loaded, image, Path(d) / "out", s)
        else:
            session = Session.open(loaded, image, capture=__import__("vitscope.tracing").tracing.Capture(
                layers=s.layers, attn_dtype=s.dtype))
            ex.export(session, Path(d) / "out", s)
    print(f"{'phase':<38} {'peak MB':>8} {'after MB':>9} {'s':>7}")
    for name, peak, after, sec in ROWS:
        print(f"{name:<38} {peak:8.0f} {after:9.0f} {sec:7.1f}")
    print(f"max RSS of the process (the largest phase peak): {max(r[1] for r in ROWS):.0f} MB")


if __name__ == "__main__":
    main()
