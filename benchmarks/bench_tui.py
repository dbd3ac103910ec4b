"""Inspector speed, measured as a person meets it: in a real tmux (160x48), keys sent with send-keys.

1. Key -> screen updated: after a warm-up pass that computes every map once, 'l'/'h'/'j'/'k' keys
   are sent one at a time and the pane is polled until the title line changes. Median, p90, max and
   the count over 100 ms, on the 4x4 sample and on timm:vit_base_patch16_224 (random init, 224 px,
   12 x 12 heads); the ratio ViT-B / sample is in the same run. The polling floor (one
   capture-pane) is reported too: it is part of every figure.
2. Launch -> attention shown in tmux, against the plain work it has to do in the same run:
   `python -c "import torch, timm; load; one forward"` (the baseline).
3. Quit -> shell while a head ablation runs on ViT-B.
4. Exact head ablation on ViT-B against its FLOP bound H(L+1)/2 forwards (forward timed in the same run).
Run: python benchmarks/bench_tui.py [--quick]
"""
from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = (str(ROOT / "samples" / "fashion-vit-p7.safetensors"), str(ROOT / "samples" / "fashion_0000_ankle-boot.png"))
VITB = ("timm:vit_base_patch16_224", str(ROOT / "samples" / "photo_rgb.png"))


class Tmux:
    count = 0

    def __init__(self, name: str) -> None:
        Tmux.count += 1
        self.sock = f"vitscope-bench-{os.getpid()}-{name}-{Tmux.count}"
        self.dir = Path(tempfile.mkdtemp())
        self.rc = self.dir / "rc"

    def start(self, args: str, cache: str | None = None) -> float:
        cmd = f"{shlex.quote(sys.executable)} -m vitscope {args}; echo $? > {self.rc}"
        env = {k: v for k, v in os.environ.items() if k not in ("TMUX",)}
        env["COLORTERM"] = "truecolor"
        env["VITSCOPE_CACHE"] = cache or str(self.dir / "cache")
        t0 = time.perf_counter()
        subprocess.run(["tmux", "-L", self.sock, "new-session", "-d", "-s", "b", "-x", "160", "-y", "48", "-c",
                        str(self.dir), cmd], check=True, env=env)
        return t0

    def screen(self) -> str:
        return subprocess.run(["tmux", "-L", self.sock, "capture-pane", "-p", "-t", "b"], capture_output=True,
                              text=True).stdout

    def title(self) -> str:
        """The view title (the line that names layer and head), wherever a banner puts it."""
        return next((ln for ln in self.screen().splitlines() if "query CLS" in ln), "")

    def keys(self, *k: str) -> None:
        subprocess.run(["tmux", "-L", self.sock, "send-keys", "-t", "b", *k], check=True)

    def wait(self, text: str, timeout: float = 180) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if text in self.screen():
                return time.perf_counter()
            time.sleep(0.01)
        raise TimeoutError(f"{text!r} never appeared:\n{self.screen()}")

    def max_rss_mb(self) -> float | None:
        """The peak RSS so far (VmHWM) of the vitscope process in the pane (a child of the pane's shell)."""
        shell = subprocess.run(["tmux", "-L", self.sock, "list-panes", "-t", "b", "-F", "#{pane_pid}"],
                               capture_output=True, text=True).stdout.split()
        kids = subprocess.run(["pgrep", "-P", shell[0]], capture_output=True, text=True).stdout.split() if shell else []
        for pid in kids + shell:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            if "python" in Path(f"/proc/{pid}/cmdline").read_text():
                return int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1]) / 1024
        return None

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True)


def key_latency(model: str, image: str, rounds: int) -> dict:
    t = Tmux("keys")
    t.start(f"inspect {model} {image}")
    try:
        t.wait("query CLS")
        deadline = time.perf_counter() + 120
        while "loading" in t.screen() and time.perf_counter() < deadline:  # the exact session, not the cached one
            time.sleep(0.05)
        # a cycle that never presses against an edge: every key changes the title
        seq = ["h", "h", "h", "j", "l", "l", "l", "k"] * (2 * rounds)
        for k in seq:  # warm-up: every map on the way is computed once
            before = t.title()
            t.keys(k)
            _changed(t, before)
        lat, by_key = [], {}
        for k in seq:
            before = t.title()
            t0 = time.perf_counter()
            t.keys(k)
            lat.append(_changed(t, before) - t0)
            by_key.setdefault(k, []).append(round(lat[-1] * 1e3))
        if os.environ.get("BENCH_VERBOSE"):
            print(by_key)
        floor = []
        for _ in range(20):
            t0 = time.perf_counter()
            t.screen()
            floor.append(time.perf_counter() - t0)
        rss = t.max_rss_mb()
        t.keys("q")
        return {"max_rss_mb": rss, "median_ms": 1e3 * statistics.median(lat), "p90_ms": 1e3 * sorted(lat)[int(0.9 * len(lat))],
                "max_ms": 1e3 * max(lat), "over_100ms": sum(x > 0.1 for x in lat), "n": len(lat),
                "poll_floor_ms": 1e3 * statistics.median(floor)}
    finally:
        t.close()


def _changed(t: Tmux, before: str, timeout: float = 30) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if t.title() != before:
            return time.perf_counter()
    raise TimeoutError("the screen did not change")


def launch(model: str, image: str, cache: str | None = None) -> dict:
    code = ("import time; t0 = time.perf_counter(); import torch, timm\n"
            "from vitscope.loaders import load\nfrom vitscope.tracing import trace\n"
            f"m = load({model!r}); trace(m, {image!r}); print(time.perf_counter() - t0)")
    t0 = time.perf_counter()
    inner = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    baseline = time.perf_counter() - t0
    t = Tmux("launch")
    t0 = t.start(f"inspect {model} {image}", cache)
    try:
        shown = t.wait("query CLS") - t0
        deadline = time.perf_counter() + 120
        while "loading" in t.screen() and time.perf_counter() < deadline:
            time.sleep(0.05)
        t.keys("q")
        while not t.rc.exists():
            time.sleep(0.02)
    finally:
        t.close()
    return {"attention_shown_s": shown, "baseline_s": baseline, "baseline_inner_s": inner,
            "ratio": shown / baseline}


def reopen(model: str, image: str) -> dict:
    """Launch twice with one cache: the second draws from the trace cache, before torch is imported."""
    cache = tempfile.mkdtemp()
    first = launch(model, image, cache)
    second = launch(model, image, cache)
    return {"first_s": first["attention_shown_s"], "reopen_s": second["attention_shown_s"],
            "import_torch_timm_load_trace_s": second["baseline_s"],
            "ratio_reopen_over_baseline": second["attention_shown_s"] / second["baseline_s"]}


def quit_while_ablating() -> dict:
    t = Tmux("quit")
    t.start(f"inspect {VITB[0]} {VITB[1]}")
    try:
        t.wait("query CLS")
        t.keys("n", "n", "n")
        t.wait("ablating every head")
        time.sleep(1.0)
        t0 = time.perf_counter()
        t.keys("q")
        while not t.rc.exists():
            time.sleep(0.005)
        return {"quit_to_shell_s": time.perf_counter() - t0, "exit_status": int(t.rc.read_text())}
    finally:
        t.close()


def ablation_vs_bound() -> dict:
    import torch

    from vitscope.analysis.ablation import head_ablation
    from vitscope.loaders import load
    from vitscope.tracing import trace

    loaded = load(VITB[0])
    tr = trace(loaded, VITB[1])
    x = tr.input[None]
    with torch.inference_mode():
        loaded.model(x)
        t0 = time.perf_counter()
        for _ in range(5):
            loaded.model(x)
        fwd = (time.perf_counter() - t0) / 5
    t0 = time.perf_counter()
    head_ablation(loaded.model, tr, 0)
    abl = time.perf_counter() - t0
    L, H = tr.num_layers, tr.num_heads
    bound = H * (L + 1) / 2 * fwd
    return {"forward_s": fwd, "ablation_s": abl, "flop_bound_s": bound, "ratio": abl / bound}


def main() -> None:
    quick = "--quick" in sys.argv
    rounds = 1 if quick else 3
    res = {"keys_sample": key_latency(*SAMPLE, rounds), "keys_vit_base": key_latency(*VITB, rounds)}
    res["keys_ratio_vit_base_over_sample"] = res["keys_vit_base"]["median_ms"] / res["keys_sample"]["median_ms"]
    res["launch_sample"] = launch(*SAMPLE)
    res["launch_vit_base"] = launch(*VITB)
    res["reopen_sample"] = reopen(*SAMPLE)
    res["quit_while_ablating_vit_base"] = quit_while_ablating()
    res["ablation_vit_base"] = ablation_vs_bound()
    for k, v in res.items():
        print(f"{k}: " + (", ".join(f"{a} {b:.3g}" for a, b in v.items()) if isinstance(v, dict) else f"{v:.3g}"))


if __name__ == "__main__":
    main()
