"""Command line: ``vitscope info | export`` (and, as they land, inspect, compare, sweep, train).

Exit status: 0 on success, 2 on bad input (one line on stderr, no traceback unless ``--debug``),
1 on a bug. Heavy imports (torch, timm) happen inside the commands, not at import time.
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from .errors import VitscopeError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="a vitscope .safetensors checkpoint, a state dict (.pt/.pth/.bin/.safetensors), "
                        "a Hugging Face model directory, or timm:NAME")
    p.add_argument("--weights", metavar="FILE", help="state dict for a timm:NAME model")
    p.add_argument("--pretrained", action="store_true", help="timm:NAME with timm's pretrained weights")
    p.add_argument("--heads", type=int, help="number of attention heads, when the weights cannot say")
    p.add_argument("--img-size", metavar="HxW", type=_size, help="input size, when the weights cannot say")
    p.add_argument("--classes", metavar="FILE", help="class names: one per line, or a JSON list")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow unpickling a checkpoint (runs code from the file: only for files you trust)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _size(text: str) -> int | tuple[int, int]:
    try:
        if "x" in text.lower():
            h, w = text.lower().split("x")
            return int(h), int(w)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitscope", description="See how a Vision Transformer decides.")
    parser.add_argument("--version", action="version", version=f"vitscope {__import__('vitscope').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="describe a model: family, layers, heads, tokens, classes, preprocessing")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the description as JSON")

    p = sub.add_parser("export", help="write trace.npz, prediction.json and attention pictures for one image")
    _add_model_args(p)
    p.add_argument("image", metavar="IMAGE", help="any image Pillow can read")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--token", help="query token: an index (0 = first prefix token) or ROW,COL of a patch; "
                                   "default CLS (mean of patch queries for models without CLS)")
    p.add_argument("--class", dest="target", help="target class (name or index); default the prediction")
    p.add_argument("--head-fusion", default="mean", choices=["mean", "max", "min"], help="rollout head fusion")
    p.add_argument("--discard", type=float, default=0.0, help="rollout: fraction of lowest weights to drop")
    p.add_argument("--start-layer", type=int, default=0, help="rollout: first layer")
    p.add_argument("--cmap", default="inferno", help="colormap: inferno, viridis, magma, plasma, turbo, gray")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for the forward pass (CUDA)")
    p.add_argument("--overwrite", action="store_true", help="replace files a previous export wrote")
    return parser


def open_model(args: argparse.Namespace):
    from .loaders import load

    return load(args.model, weights=args.weights, pretrained=args.pretrained, heads=args.heads,
                img_size=args.img_size, classes=args.classes, trust_checkpoint=args.trust_checkpoint,
                device=args.device)


def parse_token(text: str | None, layout) -> int | None:
    if text is None or text.lower() == "cls":
        if text is not None and layout.cls_index is None:
            raise VitscopeError("--token cls: this model has no CLS token")
        return None
    try:
        if "," in text:
            r, c = (int(x) for x in text.split(","))
            try:
                return layout.patch_token(r, c)
            except IndexError as e:
                raise VitscopeError(f"--token {text}: {e}") from None
        t = int(text)
    except ValueError:
        raise VitscopeError(f"--token {text!r}: expected an index, ROW,COL or cls") from None
    if not 0 <= t < layout.num_tokens:
        raise VitscopeError(f"--token {t} is out of range: this model has {layout.num_tokens} tokens "
                            f"({layout.num_prefix} prefix + {layout.grid[0]}x{layout.grid[1]} patches)")
    return t


def parse_class(text: str | None, classes: list[str]) -> int | None:
    if text is None:
        return None
    lowered = [c.lower() for c in classes]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    close = difflib.get_close_matches(text.lower(), lowered, n=3)
    hint = f" (did you mean {', '.join(repr(classes[lowered.index(c)]) for c in close)}?)" if close else ""
    raise VitscopeError(f"--class {text!r} is not one of the model's {len(classes)} classes{hint}")


def cmd_info(args: argparse.Namespace) -> int:
    loaded = open_model(args)
    s = loaded.spec
    if args.json:
        print(json.dumps(s.summary(), indent=2, default=str))
        return 0
    dc = s.data_config
    lines = [
        ("model", s.source), ("family", f"{s.family} (runs as timm {s.arch})"),
        ("layers x heads", f"{s.num_layers} x {s.num_heads}"), ("dim", str(s.embed_dim)),
        ("patch", "x".join(map(str, s.patch_size))), ("image", "x".join(map(str, s.img_size))),
        ("grid", f"{s.layout.grid[0]} x {s.layout.grid[1]} patches"),
        ("prefix tokens", ", ".join(s.layout.prefix_names) or "none"), ("pooling", s.pooling),
        ("classes", f"{s.num_classes}: " + ", ".join(s.classes[:8]) + (" ..." if s.num_classes > 8 else "")),
        ("params", f"{s.num_params:,}"),
        ("preprocessing", f"{dc['input_size']} mean {dc['mean']} std {dc['std']} {dc['interpolation']} "
                          f"crop_pct {dc['crop_pct']}"),
        ("weights", "RANDOM (no trained weights loaded)" if s.random_weights else "loaded"),
    ]
    w = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{w}}  {v}")
    for n in s.notes:
        print(f"note: {n}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    import timm  # noqa: F401  (timed as imports)
    import torch  # noqa: F401

    from .data.images import load_image
    from .export import ExportSettings, export
    from .tracing import trace

    timings = {"imports": time.perf_counter() - t0}
    t0 = time.perf_counter()
    loaded = open_model(args)
    timings["load"] = time.perf_counter() - t0
    spec = loaded.spec
    token = parse_token(args.token, spec.layout)
    target = parse_class(args.target, spec.classes)
    if args.cmap not in __import__("vitscope.render", fromlist=["COLORMAPS"]).COLORMAPS:
        raise VitscopeError(f"--cmap {args.cmap!r}: unknown colormap")
    if not 0.0 <= args.discard < 1.0:
        raise VitscopeError(f"--discard {args.discard}: must be in [0, 1)")
    if not 0 <= args.start_layer < spec.num_layers:
        raise VitscopeError(f"--start-layer {args.start_layer}: the model has layers 0..{spec.num_layers - 1}")
    t0 = time.perf_counter()
    image = load_image(args.image, spec.data_config)
    t = trace(loaded, image, amp=args.amp)
    timings["trace"] = time.perf_counter() - t0
    settings = ExportSettings(token=token, target=target, head_fusion=args.head_fusion, discard=args.discard,
                              start_layer=args.start_layer, cmap=args.cmap, overwrite=args.overwrite)
    res = export(loaded, t, args.out, settings, timings)
    if spec.random_weights:
        print("WARNING: the model has RANDOM weights; these maps say nothing about a trained model",
              file=sys.stderr)
    best = res.top5[0]
    print(f"prediction: {best['class']} ({best['prob']:.1%})")
    print(f"wrote {len(res.files)} files to {res.out_dir}: trace.npz, prediction.json, heads.png, rollout.png, "
          f"layers/mean_layerNN.png")
    print("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in res.timings.items()))
    return 0


COMMANDS = {"info": cmd_info, "export": cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        return COMMANDS[args.command](args)
    except VitscopeError as e:
        if debug:
            raise
        print(f"vitscope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vitscope: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug: say so in one line; --debug shows the traceback
        if debug:
            raise
        print(f"vitscope: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
