"""Command line: ``vitscope inspect | info | export | sweep | crossval | train`` (argparse only; the work is elsewhere).

Exit status: 0 on success, 2 on bad input (one line on stderr, no traceback unless ``--debug``),
1 on a bug (one line too, also for a crash inside a screen of the TUI). Heavy imports (torch, timm)
happen inside the commands, not at import time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from .errors import VitscopeError
from .spec import parse_class, parse_token


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
    _add_weight_dtype(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_weight_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weight-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="hold the Linear and Conv2d weights in memory in this precision (half the memory: ViT-L "
                        "1.2 -> 0.6 GB); computed in float32 on the rounded weights (relative error per weight "
                        "at most 2^-8 for bfloat16, 2^-11 for float16; none for a file stored in it)")


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
    p.add_argument("image", metavar="IMAGE", nargs="?",
                   help="any image Pillow can read (not with a run directory as MODEL: then its probes' attention "
                        "forming is written, probes.png and probe-K.png)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--token", help="query token: an index (0 = first prefix token) or ROW,COL of a patch; "
                                   "default CLS (mean of patch queries for models without CLS)")
    p.add_argument("--class", dest="target", help="target class (name or index); default the prediction")
    p.add_argument("--head-fusion", default="mean", choices=["mean", "max", "min"], help="rollout head fusion")
    p.add_argument("--discard", type=float, default=0.0, help="rollout: fraction of lowest weights to drop")
    p.add_argument("--start-layer", type=int, default=0, help="rollout: first layer")
    p.add_argument("--cmap", default="viridis", help="colormap: viridis, inferno, magma, plasma, turbo, gray")
    p.add_argument("--view", metavar="PANE", help="write only this pane's picture (attention, overview, rollout, "
                                                  "gradcam, chefer, grad_rollout, projection, norms)")
    p.add_argument("--layer", type=int, help="layer of the attention/projection/norms pictures (default 0)")
    p.add_argument("--head", help="head of --view attention: an index or mean (default mean)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for the forward pass (CUDA)")
    p.add_argument("--overwrite", action="store_true", help="replace files a previous export wrote")
    p.add_argument("--faithfulness", action="store_true",
                   help="also write faithfulness.json: deletion/insertion AUC of every map method")
    p.add_argument("--flow", action="store_true",
                   help="also compute attention flow (max-flow; models up to 200 tokens, its time is reported)")
    p.add_argument("--no-analyses", action="store_true",
                   help="attention and rollout only (skip projections, Grad-CAM, relevance, head ablation)")
    p.add_argument("--convention", default="paper", choices=["paper", "stream", "lens"],
                   help="class projections: paper = updates read at attn.proj / mlp.fc2 (before LayerScale), "
                        "final norm + head; stream = the same path, updates as added to the stream; lens = "
                        "updates as added, norm scale and head weight only (no biases)")
    p.add_argument("--layers", metavar="LIST", help="trace.npz: only these blocks' attn, resid, attn_out, mlp_out "
                                                    "(e.g. 0,5,-1 or 0..3,-1; default all)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                   help="trace.npz: precision of attn, resid, attn_out, mlp_out (float16: half the size, "
                        "relative error at most 2^-11)")

    p = sub.add_parser("inspect", help="the interactive inspector (keyboard-driven TUI); with --dataset, the "
                                       "misclassification browser of a test split")
    _add_model_args(p)
    p.add_argument("image", metavar="IMAGE", nargs="?",
                   help="any image Pillow can read (optional with --dataset: the browser opens first)")
    _add_data_args(p, required=False)
    p.add_argument("--split", default="test", choices=["train", "test"], help="the split the browser lists")
    p.add_argument("--no-cache", action="store_true", help="browser: sweep again even when a cached sweep exists")
    p.add_argument("--render", default=os.environ.get("VITSCOPE_RENDER", "auto"),
                   choices=["auto", "kitty", "sixel", "halfcell", "unicode"],
                   help="how pictures are drawn (default: half-cell blocks, which work everywhere)")
    p.add_argument("--truecolor", action="store_true", help="assume a 24-bit colour terminal")
    p.add_argument("--token", help="start with this query token (index, ROW,COL or cls)")
    p.add_argument("--class", dest="target", help="start with this target class")
    p.add_argument("--layer", type=int, help="start at this layer")
    p.add_argument("--head", help="start at this head (index or mean)")
    p.add_argument("--save-dir", metavar="DIR", help="where `s` saves pictures (default: the current directory)")

    p = sub.add_parser("sweep", help="run a whole dataset split: accuracy, confusions, per-image results (cached)")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-cache", action="store_true", help="recompute even when a cached sweep exists (and "
                                                            "replace it)")
    p.add_argument("--out", metavar="FILE", help="also write the per-image results (.npz)")
    p.add_argument("--label-issues", action="store_true",
                   help="rank suspected label errors (confident learning; needs a model that never trained on "
                        "this split, else see `vitscope crossval`)")
    p.add_argument("--projections", action="store_true",
                   help="also the class-embedding curves across blocks (Vilas et al. 2023), label as target, "
                        "against a random-init copy of the model (in the JSON: projections)")
    p.add_argument("--convention", default="paper", choices=["paper", "stream", "lens"],
                   help="class projections' read point and path (see vitscope export --help)")
    p.add_argument("--random-limit", type=int, default=1000, metavar="N",
                   help="with --projections: the random-init baseline on the first N images (0: all; default 1000)")
    p.add_argument("--probes", action="store_true",
                   help="with --projections: a linear probe per block on the CLS and mean image token (trained on "
                        "half of each class's images, tested on the other half) beside the projection's top-1 "
                        "accuracy on the same images (in the JSON: projections.probes)")
    p.add_argument("--probe-shots", type=int, metavar="N",
                   help="with --probes: few-shot, N training images per class (the authors use 10)")
    p.add_argument("--probe-kind", default="logistic", choices=["logistic", "ridge"],
                   help="with --probes: logistic regression (default) or the authors' ridge on +1/-1 targets")
    p.add_argument("--tui", action="store_true",
                   help="with --projections: show the curves on the projection-curves screen (as `V` in the "
                        "browser does)")

    p = sub.add_parser("crossval", help="out-of-sample probabilities for a whole split by K-fold cross-validation, "
                                        "and the label issues they reveal")
    p.add_argument("--dataset", required=True, help="fashion-mnist, mnist or cifar10")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--data-dir", metavar="DIR", help="where the dataset's files are")
    p.add_argument("--folds", type=int, default=None, metavar="K", help="number of folds (default 5)")
    p.add_argument("--preset", default=None, metavar="PRESET",
                   help="model trained per fold: a preset (cnn-small, vit-4x4, ...) or timm:NAME (default cnn-small)")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="epochs per fold (default 5)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="fold-k/ run directories, sweep.npz and crossval.json go here")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (default 128)")
    p.add_argument("--seed", type=int, default=0, help="fold assignment and training seed")
    p.add_argument("--limit", type=int, help="only the first N images of the split")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", action="store_true",
                   help="print the summary and the ranked label_issues [{index, given, suggested, score}] as JSON")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain every fold, replacing a crossval already in DIR (without it, the same command "
                        "continues where a stopped one left off)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")

    p = sub.add_parser("train", help="train a ViT (or a CNN for comparison) and write vitscope checkpoints")
    p.add_argument("--model", default="vit-4x4", help="a preset (vit-4x4, vit-4x4-p4, vit-6x4-p4, vit-ti, "
                                                      "cnn-small) or timm:NAME")
    p.add_argument("--model-kwargs", type=json.loads, default={}, metavar="JSON", help="extra timm kwargs")
    _add_data_args(p, required=False)
    p.add_argument("--out", default=None, metavar="RUN_DIR", help="run directory (default runs/MODEL-DATASET)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--augment", default="auto", choices=["auto", "none", "shift", "flip-shift"],
                   help="auto: shifts for digits, flips + shifts otherwise")
    p.add_argument("--mixup", type=float, default=0.0, help="timm Mixup alpha")
    p.add_argument("--cutmix", type=float, default=0.0, help="timm CutMix alpha")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-train", type=int, help="train on the first N images of each epoch's shuffle")
    p.add_argument("--limit-test", type=int, help="evaluate on the first N test images")
    p.add_argument("--finetune", metavar="CKPT", help="start from a vitscope or timm checkpoint")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory's files")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--quiet", action="store_true", help="one line per epoch, no progress bar")
    p.add_argument("--tui", action="store_true",
                   help="train in a background process and watch it in the training screen (curves, attention "
                        "forming, pause/stop); quitting can leave it training")
    p.add_argument("--debug", action="store_true", help="show tracebacks")

    p = sub.add_parser("compare", help="two models on one image: side by side, the change per head, which map is "
                                       "more faithful (headless with --out)")
    p.add_argument("refs", nargs="+", metavar="MODEL_A MODEL_B IMAGE",
                   help="two models and an image; or a finetuned checkpoint and an image (its parent is found "
                        "from the sha256 it records)")
    p.add_argument("--out", metavar="DIR", help="write a/, b/ (as vitscope export), compare.json, compare.npz and "
                                               "the pictures; without it, the split view opens")
    p.add_argument("--parent", metavar="FILE", help="the parent checkpoint of a finetune (checked by sha256)")
    p.add_argument("--dataset", help="also average head_js over --limit images of this dataset, with accuracies")
    p.add_argument("--data-dir", metavar="DIR")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--limit", type=int, default=200, help="images of --dataset (default 200)")
    p.add_argument("--overwrite", action="store_true", help="replace what an earlier compare wrote in DIR")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow unpickling checkpoints (runs code from the file: only for files you trust)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    _add_weight_dtype(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks")

    p = sub.add_parser("watch", help="the training screen for a run directory: one training now (headless, under "
                                     "torchrun, started elsewhere) or a finished one")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run's directory (holds run.json)")
    p.add_argument("--save-dir", metavar="DIR", help="where the inspector opened from here saves pictures")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--dataset", required=required, help="fashion-mnist, mnist, cifar10 or folder:PATH")
    p.add_argument("--data-dir", metavar="DIR", help="where the dataset's files are")
    p.add_argument("--download", action="store_true", help="download the dataset with torchvision (internet)")
    p.add_argument("--split-train", type=int, metavar="K",
                   help="hold out: the first K images of the split train, the rest evaluate")


def open_model(args: argparse.Namespace, allow_cnn: bool = False, notes: bool = True):
    """Open MODEL as the flags say; its notes (guessed preprocessing, half-precision weights, NaN weights)
    go to stderr, since they explain numbers a person may otherwise not trust (a bare state dict's
    guessed preprocessing scores 88.2% where the same weights as a checkpoint score 91.3%)."""
    preflight_model(args)
    from .loaders import load

    loaded = load(args.model, weights=args.weights, pretrained=args.pretrained, heads=args.heads,
                  img_size=args.img_size, classes=args.classes, trust_checkpoint=args.trust_checkpoint,
                  device=args.device, allow_cnn=allow_cnn, weight_dtype=args.weight_dtype)
    for note in loaded.spec.caveats if notes else ():
        print(f"note: {note}", file=sys.stderr)
    return loaded


def preflight_model(args: argparse.Namespace) -> None:
    """MODEL, --weights and --classes checked before torch is imported: a FIFO or a device fails at once."""
    from .paths import check_regular_file
    from .preflight import check_model_ref

    check_model_ref(args.model, args.weights)
    if getattr(args, "classes", None):
        check_regular_file(Path(args.classes).expanduser(), "a class-name file")


def cmd_info(args: argparse.Namespace) -> int:
    loaded = open_model(args, allow_cnn=True, notes=False)
    s = loaded.spec
    if args.json:
        print(json.dumps(s.summary(), indent=2, default=str))
        return 0
    dc = s.data_config
    if s.kind == "cnn":
        print(f"model  {s.source}\nkind   CNN (timm {s.arch}), for Grad-CAM comparison\n"
              f"grid   {s.layout.grid[0]} x {s.layout.grid[1]} (last feature map)\n"
              f"classes {s.num_classes}: {', '.join(s.classes[:8])}\nparams {s.num_params:,}\n"
              f"preprocessing {dc['input_size']} mean {dc['mean']} std {dc['std']}")
        return 0
    lines = [
        ("model", s.source), ("family", f"{s.family} (runs as timm {s.arch})"),
        ("layers x heads", f"{s.num_layers} x {s.num_heads}"), ("dim", str(s.embed_dim)),
        ("patch", "x".join(map(str, s.patch_size))), ("image", "x".join(map(str, s.img_size))),
        ("grid", f"{s.layout.grid[0]} x {s.layout.grid[1]} patches"),
        ("prefix tokens", ", ".join(s.layout.prefix_names) or "none"), ("pooling", s.pooling),
        ("classes", f"{s.num_classes}: " + ", ".join(s.classes[:8]) + (" ..." if s.num_classes > 8 else "")
         if s.num_classes else "none: a backbone without a classifier (outputs are features; class panes are off)"),
        ("params", f"{s.num_params:,}"),
        ("preprocessing", f"{dc['input_size']} mean {dc['mean']} std {dc['std']} {dc['interpolation']} "
                          f"crop_pct {dc['crop_pct']}"),
        ("weights", ("RANDOM (no trained weights loaded)" if s.random_weights else "loaded")
         + (f", held as {s.weights_held} (computed in float32)" if s.weights_held else "")),
    ]
    w = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{w}}  {v}")
    for n in s.notes:
        print(f"note: {n}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if (Path(args.model).expanduser() / "run.json").is_file():
        return _export_run(args)
    if args.image is None:
        raise VitscopeError("IMAGE is missing (MODEL IMAGE --out DIR; or a run directory as MODEL)")
    from .preflight import check_image

    preflight_model(args)
    check_image(args.image)
    t0 = time.perf_counter()
    import timm  # noqa: F401  (timed as imports)
    import torch  # noqa: F401

    from .export import ExportSettings, export_image, parse_layers
    from .render import COLORMAPS

    timings = {"imports": time.perf_counter() - t0}
    t0 = time.perf_counter()
    loaded = open_model(args, allow_cnn=True)
    timings["load"] = time.perf_counter() - t0
    spec = loaded.spec
    if args.cmap not in COLORMAPS:
        raise VitscopeError(f"--cmap {args.cmap!r}: unknown colormap ({', '.join(COLORMAPS)})")
    if not 0.0 <= args.discard < 1.0:
        raise VitscopeError(f"--discard {args.discard}: must be in [0, 1)")
    cnn = spec.kind == "cnn"
    if not cnn and not 0 <= args.start_layer < spec.num_layers:
        raise VitscopeError(f"--start-layer {args.start_layer}: the model has layers 0..{spec.num_layers - 1}")
    token = None if cnn else parse_token(args.token, spec.layout)
    target = parse_class(args.target, spec.classes)
    head = args.head if args.head in (None, "mean") else _int_arg("--head", args.head)
    settings = ExportSettings(token=token, target=target, head_fusion=args.head_fusion, discard=args.discard,
                              start_layer=args.start_layer, cmap=args.cmap, overwrite=args.overwrite,
                              analyses=not args.no_analyses, faithfulness=args.faithfulness,
                              convention=args.convention, flow=args.flow, view=args.view,
                              layer=args.layer or 0, head=head or "mean", dtype=args.dtype,
                              layers=None if cnn or args.layers is None else parse_layers(args.layers, spec.num_layers))
    # the trace keeps the exported layers' attention in the exported precision when it fits, else only the
    # digest the pictures need; either way it streams that attention into trace.npz as the forward makes it
    session, res = export_image(loaded, args.image, args.out, settings, timings)
    if spec.random_weights:
        print("WARNING: the model has RANDOM weights; these maps say nothing about a trained model",
              file=sys.stderr)
    for note in res.notes:
        print(f"warning: {note}", file=sys.stderr)
    if res.top5 and not all(math.isfinite(float(v)) for v in session.logits):
        print("prediction: none (the model's outputs are NaN or infinite; prediction.json holds null for them)")
    elif res.top5:
        best = res.top5[0]
        print(f"prediction: {best['class']} ({best['prob']:.1%})")
    elif not session.has_classifier and args.view is None:
        print(f"prediction: none (a backbone without a classifier: features of dim {spec.embed_dim})")
    names = sorted({p.name if p.parent == res.out_dir else f"{p.parent.name}/" for p in res.files})
    print(f"wrote {len(res.files)} files to {res.out_dir}: {', '.join(names)}")
    for name, row in res.faithfulness.items():
        print(f"  {name:<26} deletion AUC {row['deletion_auc']:.3f}  insertion AUC {row['insertion_auc']:.3f}")
    print("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in res.timings.items()))
    return 0


def _export_run(args: argparse.Namespace) -> int:
    """``vitscope export RUN_DIR --out DIR``: the run's attention forming as picture strips."""
    from .render import COLORMAPS
    from .views.probes import export_run

    if args.image is not None:
        raise VitscopeError(f"{args.model} is a run directory: it takes no IMAGE (its probe images are recorded)")
    if args.cmap not in COLORMAPS:
        raise VitscopeError(f"--cmap {args.cmap!r}: unknown colormap ({', '.join(COLORMAPS)})")
    head = None if args.head in (None, "mean") else _int_arg("--head", args.head)
    files = export_run(args.model, args.out, head=head, cmap=args.cmap, overwrite=args.overwrite)
    print(f"wrote {len(files)} files to {Path(args.out).expanduser()}: {', '.join(p.name for p in files)}")
    return 0


def _int_arg(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise VitscopeError(f"{flag} {text!r}: expected an integer or mean") from None


def choose_renderer(requested: str, env: dict[str, str] | None = None) -> tuple[str, str | None]:
    """The renderer, and a warning when the request cannot work here. auto: Kitty graphics only in a
    local Kitty; half-cell blocks under tmux, over SSH and elsewhere (terminal queries are slow and
    unreliable there, and tmux drops graphics without passthrough)."""
    env = dict(os.environ if env is None else env)
    if requested != "auto":
        if requested in ("kitty", "sixel") and env.get("TMUX"):
            return "halfcell", (f"--render {requested} does not pass through tmux here; "
                                "drawing with half-cell blocks instead")
        return requested, None
    if env.get("TMUX") or env.get("SSH_CONNECTION") or env.get("SSH_TTY"):
        return "halfcell", None
    if env.get("TERM") == "xterm-kitty" or env.get("KITTY_WINDOW_ID"):
        return "kitty", None
    return "halfcell", None


def cmd_inspect(args: argparse.Namespace) -> int:
    from .preflight import check_dataset, check_image, check_model_ref

    sweep_dir = Path(args.model).expanduser() if (Path(args.model).expanduser() / "sweep.npz").is_file() else None
    if sweep_dir is None:
        check_model_ref(args.model, args.weights)  # fail before a screen opens (no torch needed)
    if args.image is None and args.dataset is None and sweep_dir is None:
        raise VitscopeError("IMAGE is missing: give an image to inspect, or --dataset NAME to browse a test split")
    if args.image is not None:
        check_image(args.image)
    if args.dataset is not None:
        check_dataset(args.dataset, args.split, args.data_dir, args.download)
    save_dir = Path(args.save_dir or ".").expanduser()
    if not save_dir.is_dir():
        raise VitscopeError("--save-dir is not a directory", save_dir)
    truecolor = os.environ.get("COLORTERM", "").lower() in ("truecolor", "24bit")
    if args.truecolor:
        os.environ["COLORTERM"] = "truecolor"
        truecolor = True
    renderer, warning = choose_renderer(args.render)
    if warning:
        print(f"vitscope: warning: {warning}", file=sys.stderr)
    import asyncio

    from .tui.app import InspectorApp, Options
    from .tui.screens.browser import BrowserOptions

    load_kwargs = dict(weights=args.weights, pretrained=args.pretrained, heads=args.heads, img_size=args.img_size,
                       classes=args.classes, trust_checkpoint=args.trust_checkpoint, device=args.device,
                       weight_dtype=args.weight_dtype)
    browse = None
    if args.dataset is not None or sweep_dir is not None:
        browse = BrowserOptions(model="" if sweep_dir else args.model, dataset=args.dataset or "", split=args.split,
                                data_dir=args.data_dir, split_train=args.split_train, download=args.download,
                                sweep_dir=str(sweep_dir) if sweep_dir else None, load_kwargs=load_kwargs,
                                use_cache=not args.no_cache, save_dir=str(save_dir))
    opts = Options(model=args.model, image=args.image or "", browse=browse, render=renderer, token=args.token,
                   target=args.target, layer=args.layer, head=args.head, save_dir=str(save_dir),
                   truecolor_missing=not truecolor and not os.environ.get("NO_COLOR"), load_kwargs=load_kwargs)
    app = InspectorApp(opts, tracebacks=getattr(args, "debug", False))
    loop = asyncio.new_event_loop()  # not asyncio.run: its shutdown would wait for running workers
    try:
        app.run(loop=loop)
    finally:
        _leave_now_if_workers_run(app)
    return _inspect_exit(app)


def _inspect_exit(app) -> int:
    if app.last_saved:
        print(f"last saved view: {app.last_saved}")
    if app.crash is not None:  # a bug inside the app: one line as for any other (--debug: Textual's traceback)
        if not app.tracebacks:
            print(internal_error(app.crash), file=sys.stderr)
        return 1
    if app.error:
        print(f"vitscope: error: {app.error}", file=sys.stderr)
    return app.return_code or 0


def _leave_now_if_workers_run(app) -> None:
    """Quit returns to the shell within a second whatever runs: cancelled workers stop at their next
    model block; one still busy after 0.5 s (inside a single long op) is not waited for."""
    import threading

    deadline = time.perf_counter() + 0.5
    while time.perf_counter() < deadline:
        busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()
                and t.name.startswith("asyncio")]
        if not busy:
            return
        time.sleep(0.02)
    code = _inspect_exit(app)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _print_projection_curves(p: dict) -> None:
    print(f"class-embedding curves ({p['convention']} convention, updates read at {p['read_point']}; target = label; "
          f"{p['model']['n']} images); trained / random init:")
    names = [k for k in ("cls_identifiability", "image_identifiability", "image_identifiability_r",
                         "attn_update_rate", "mlp_update_rate", "block_change_rate") if k in p["model"]]
    print("block  " + "  ".join(f"{k:>28}" for k in names))
    for b in range(len(p["model"][names[0]])):
        print(f"{b:>5}  " + "  ".join(f"{p['model'][k][b]:>13.3f} / {p['random_init'][k][b]:<12.3f}" for k in names))
    if "probes" in p:
        q = p["probes"]
        shots = f"{q['shots']} per class" if q["shots"] else "all"
        print(f"linear probes ({q['kind']}, trained on {q['n_train']} images: {shots}; tested on {q['n_test']}) "
              f"vs the projection's top-1 accuracy on the same images:")
        print("block  " + "  ".join(f"{t + ' probe / projection':>32}" for t in q["tokens"]))
        for b in range(len(q[f"{q['tokens'][0]}_probe_accuracy"])):
            print(f"{b:>5}  " + "  ".join(f"{q[t + '_probe_accuracy'][b]:>17.3f} / {q[t + '_projection_accuracy'][b]:<12.3f}"
                                          for t in q["tokens"]))


def _projection_sweep(args: argparse.Namespace, loaded, ds) -> dict:
    """``sweep --projections [--probes]``: the curves, kept for the projection-curves screen."""
    if loaded.spec.kind == "cnn" or not loaded.spec.num_classes:
        raise VitscopeError("--projections needs a ViT with a classifier head", loaded.spec.source)
    from .sweep import projection_sweep, save_projection_curves

    p = projection_sweep(loaded, ds, args.batch_size, args.limit, args.convention,
                         random_limit=args.random_limit or None, probes=args.probes, probe_shots=args.probe_shots,
                         probe_kind=args.probe_kind)
    save_projection_curves(loaded, ds, p, args.limit)
    return p


def _check_projection_args(args: argparse.Namespace) -> None:
    """Before anything loads: the probe and screen options go with --projections."""
    for flag, given in (("--probes", args.probes), ("--tui", args.tui), ("--probe-shots", args.probe_shots is not None)):
        if given and not args.projections:
            raise VitscopeError(f"{flag} goes with --projections")
    if args.probe_shots is not None and (args.probe_shots < 1 or not args.probes):
        raise VitscopeError(f"--probe-shots must be at least 1 and goes with --probes (got {args.probe_shots})")
    if args.tui and args.json:
        raise VitscopeError("--tui and --json exclude each other")


def _show_projection_curves(args: argparse.Namespace, curves: dict) -> int:
    from .tui.app import InspectorApp, Options
    from .tui.screens.projection_curves import ProjectionCurvesScreen

    title = f"{Path(str(args.model)).name} on {args.dataset} {args.split}"
    app = InspectorApp(Options(model=str(args.model), image=""), start=ProjectionCurvesScreen(curves, title),
                       tracebacks=getattr(args, "debug", False))
    app.run()
    return _inspect_exit(app)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .data.datasets import get_dataset
    from .sweep import run_sweep

    _check_projection_args(args)
    out = _sweep_out(args.out) if args.out else None  # before minutes of sweeping
    loaded = open_model(args, allow_cnn=True)
    ds = get_dataset(args.dataset, args.split, args.data_dir, args.download, args.split_train)
    if len(ds.classes) != loaded.spec.num_classes:
        raise VitscopeError(f"the model has {loaded.spec.num_classes} classes, {args.dataset} has {len(ds.classes)}")
    if ds.channels != loaded.spec.in_chans and not args.json:
        print(f"note: {args.dataset} has {ds.channels} channel(s), the model takes {loaded.spec.in_chans}: converted",
              file=sys.stderr)
    bar = None if args.json or not sys.stderr.isatty() else _progress(stderr=True)
    task = bar.add_task("sweep", total=None, info="") if bar else None
    if bar:
        bar.start()
    try:
        res = run_sweep(loaded, ds, args.batch_size, args.limit, args.amp, use_cache=not args.no_cache,
                        progress=(lambda d, n: bar.update(task, completed=d, total=n)) if bar else None)
    finally:
        if bar:
            bar.stop()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: leave the group together
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        if int(os.environ.get("RANK", "0")) != 0:  # rank 0 gathered the shards and reports
            return 0
    for note in res.notes:
        print(f"warning: {note}", file=sys.stderr)
    if out is not None:
        from .atomic import write_output

        write_output(out, res.to_npz())
    summary = res.summary()
    issues_note = None
    if args.label_issues:
        summary.update(_label_issue_summary(res))
        if res.meta.get("out_of_sample") is False:
            issues_note = ("the model trained on this split: its probabilities are in-sample and hide label errors; "
                           "use `vitscope crossval` for out-of-sample ones")
            summary["label_issues_warning"] = issues_note
    if args.projections:
        summary["projections"] = _projection_sweep(args, loaded, ds)
    if args.json:
        print(json.dumps(summary))
        return 0
    if args.projections:
        _print_projection_curves(summary["projections"])
        if args.tui:
            return _show_projection_curves(args, summary["projections"])
    print(f"{args.dataset} {args.split}: {res.n} images, accuracy {res.accuracy:.2%}"
          f"{' (cached)' if res.cached else ''}")
    for a, b, c in res.worst_confusions():
        print(f"  {c:5d} x {a} -> {b}")
    worst = sorted(summary["per_class_accuracy"].items(), key=lambda kv: kv[1])[:3]
    print("  weakest classes: " + ", ".join(f"{k} {v:.1%}" for k, v in worst))
    if args.label_issues:
        if issues_note:
            print(f"warning: {issues_note}", file=sys.stderr)
        _print_label_issues(summary)
    return 0


def _sweep_out(text: str) -> Path:
    """``sweep --out FILE``, checked before the sweep; what a sweep killed while writing it left is removed."""
    from .atomic import remove_stale_temps

    out = Path(text).expanduser()
    if out.is_dir():
        raise VitscopeError("--out is a directory: give the file to write (.npz)", out)
    if not out.parent.is_dir():
        raise VitscopeError("--out: no such folder to write into", out.parent)
    remove_stale_temps(out.parent, out.name)
    return out


def _label_issue_summary(res) -> dict:
    """The ranked label issues of a sweep, for JSON and for the terminal."""
    from .label_issues import SCORE_DEFINITION, issue_records

    issues = res.label_issues
    if issues is None:
        raise VitscopeError(f"--label-issues needs every class's probability; this model has {len(res.classes)} "
                            f"classes (kept up to 100)")
    return {"label_issues": issue_records(issues, res.index, res.label, res.classes),
            "label_issue_count": int(issues.is_issue.sum()), "label_issue_method":
            "confident learning (Northcutt et al. 2021): confident-joint off-diagonals, ranked by self-confidence",
            "score_definition": SCORE_DEFINITION, "out_of_sample": res.meta.get("out_of_sample")}


def _print_label_issues(summary: dict, top: int = 10) -> None:
    rows = summary["label_issues"]
    print(f"  {summary['label_issue_count']} suspected label errors (confident learning); the {min(top, len(rows))} "
          "most suspect:")
    for r in rows[:top]:
        print(f"    #{r['index']:<6d} labelled {r['given']:<14} looks like {r['suggested']:<14} score {r['score']:.3f}")


WEAK_MODEL_ACCURACY = 0.9  # below this, say that label issues are mostly the models' own errors


def cmd_crossval(args: argparse.Namespace) -> int:
    import shlex

    from .crossval import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_FOLDS, DEFAULT_PRESET, CrossValidation

    def given(value, default):  # the defaults live in crossval.py; 0 is a value (and an error), not "unset"
        return default if value is None else value

    # every input check (dataset, folds, preset, DIR) happens here, before any training
    cv = CrossValidation(args.dataset, args.split, given(args.folds, DEFAULT_FOLDS), given(args.preset, DEFAULT_PRESET),
                         given(args.epochs, DEFAULT_EPOCHS), args.out, args.data_dir,
                         given(args.batch_size, DEFAULT_BATCH_SIZE), args.seed, args.limit, args.device,
                         args.overwrite, command="vitscope " + shlex.join(sys.argv[1:]))
    interrupted: list[bool] = []

    def on_sigint(_sig, _frame):  # first Ctrl-C: stop after this step, fold state saved; second: abandon the step
        if not interrupted:
            interrupted.append(True)
            cv.stop()
            return
        try:
            cv.interrupt()  # raises only within a step or an evaluation, or between folds: never while saving
        except KeyboardInterrupt:
            _ignore_interrupts(args)  # the step is abandoned and the process leaves
            raise

    # progress goes to stderr, so that --json leaves stdout to the one JSON object
    bar = _progress(stderr=True) if sys.stderr.isatty() else None
    task = None
    K = cv.folds
    terminated = []

    def on_sigterm(_sig, _frame):  # kill, systemd, a scheduler's preemption: stop as on Ctrl-C, saving
        terminated.append(True)
        cv.stop()

    old = signal.signal(signal.SIGINT, on_sigint)
    old_term = signal.signal(signal.SIGTERM, on_sigterm)
    events = cv.events()
    try:
        for ev in events:
            d = ev.data
            head = f"fold {ev.fold + 1}/{K}"
            if ev.kind == "fold_start":
                if d["status"] == "reuse":
                    line = f"{head}: reused the finished model in {d['run_dir']}"
                else:
                    verb = {"train": "training", "resume": f"resuming at epoch {d['epoch'] + 1}"}[d["status"]]
                    line = f"{head}: {verb} {cv.preset} on {d['n_train']} images, {d['n_held_out']} held out"
                if bar:
                    bar.console.print(line)
                    if d["status"] != "reuse":
                        if task is None:
                            bar.start()
                            task = bar.add_task(head, total=d["steps_per_epoch"], info="")
                        bar.reset(task, total=d["steps_per_epoch"], description=f"{head} epoch {d['epoch'] + 1}")
                else:  # one line per fold: begun here, finished at fold_done
                    print(line, end="", file=sys.stderr, flush=True)
            elif ev.kind == "step" and bar:
                bar.update(task, completed=d["batch"], description=f"{head} epoch {d['epoch'] + 1}/{cv.epochs}",
                           info=f"loss {d['loss']:.3f}")
            elif ev.kind == "epoch_end" and bar:
                bar.console.print(f"  {head} epoch {d['epoch']}: loss {d['loss']:.4f}, held-out accuracy "
                                  f"{d['accuracy']:.2%} ({d['time']:.1f}s)")
            elif ev.kind == "fold_done":
                line = f"held-out accuracy {d['accuracy']:.2%} (last checkpoint, {d['time_s']:.1f}s)"
                if bar:
                    bar.console.print(f"{head}: {line}")
                else:
                    print(f"; {line}", file=sys.stderr, flush=True)
            elif ev.kind == "stopped":
                if interrupted or terminated:
                    _ignore_interrupts(args)  # leaving: nothing may interrupt what follows
                if bar:
                    bar.stop()
                else:
                    print("; stopped", file=sys.stderr)
                print(f"stopped in fold {ev.fold + 1}/{K}; its state is saved. Continue with the same command "
                      f"(finished folds are reused).", file=sys.stderr)
                return 143 if terminated else 130 if interrupted else 0
    finally:
        events.close()  # here, while on_sigint holds: a Ctrl-C in its finaliser later would print a traceback
        _restore_interrupts(args, old, bool(interrupted or terminated))
        signal.signal(signal.SIGTERM, old_term)
        if bar:
            bar.stop()
    s = cv.summary
    assert s is not None
    if args.json:
        print(json.dumps(s))
        return 0
    reused = f", {len(s['reused_folds'])} fold(s) reused" if s["reused_folds"] else ""
    print(f"{args.dataset} {args.split}: {s['n']} images, {K} folds of {s['preset']} x {s['epochs']} epochs, "
          f"out-of-sample accuracy {s['accuracy']:.2%} ({s['time_s']:.0f}s{reused})")
    issues = s["label_issues"]
    if s["accuracy"] < WEAK_MODEL_ACCURACY:
        print(f"note: the fold models are weak ({s['accuracy']:.0%} accuracy): many flags will be their mistakes, "
              "not wrong labels; train longer (--epochs) or a stronger --preset", file=sys.stderr)
    print(f"label issues: {s['label_issue_count']} flagged ({s['score_definition']})")
    if issues:
        print(f"  {'index':>6}  {'given':>8} -> {'suggested':<9}  score")
        for r in issues[:10]:
            print(f"  {r['index']:>6}  {r['given']:>8} -> {r['suggested']:<9}  {r['score']:.3f}")
        if len(issues) > 10:
            print(f"  ... {len(issues) - 10} more in {Path(args.out) / 'crossval.json'} (or --json)")
    print(f"results: {Path(args.out) / 'sweep.npz'}, {Path(args.out) / 'crossval.json'}")
    return 0


def _progress(stderr: bool = False):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=True,
                    console=Console(stderr=True) if stderr else None)


def cmd_train(args: argparse.Namespace) -> int:
    import shlex

    if args.resume:
        _refuse_live_run(Path(args.resume).expanduser())
    if args.tui:
        return _train_tui(args)
    from .train import TrainConfig, Trainer

    if args.finetune and not args.resume:
        _check_finetune(args.finetune)
    if args.resume:
        trainer = Trainer(TrainConfig(), resume=args.resume)
    else:
        if not args.dataset:
            raise VitscopeError("--dataset is required (fashion-mnist, mnist, cifar10 or folder:PATH)")
        out = _default_out(args)
        cfg = TrainConfig(model=args.model, dataset=args.dataset, out=out, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                          warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
                          clip_grad=args.clip_grad or None, drop_path=args.drop_path, augment=args.augment,
                          mixup=args.mixup, cutmix=args.cutmix, seed=args.seed, data_dir=args.data_dir,
                          split_train=args.split_train, limit_train=args.limit_train, limit_test=args.limit_test,
                          finetune=args.finetune, device=args.device, amp=args.amp, model_kwargs=args.model_kwargs,
                          command="vitscope " + shlex.join(sys.argv[1:]))
        trainer = Trainer(cfg, overwrite=args.overwrite)
    rank0 = trainer.rank == 0
    interrupted: list[bool] = []

    def on_sigint(_sig, _frame):  # first Ctrl-C: stop cleanly after this step; second: abandon the step
        if not interrupted:
            interrupted.append(True)
            trainer.stop()
            return
        try:
            trainer.interrupt()  # raises only within a step or an evaluation: never while saving
        except KeyboardInterrupt:
            _ignore_interrupts(args)  # the step is abandoned and the process leaves
            raise

    terminated = []

    def on_sigterm(_sig, _frame):  # kill, systemd, a scheduler's preemption: stop as on Ctrl-C, saving
        terminated.append(True)
        trainer.stop()

    old = signal.signal(signal.SIGINT, on_sigint)
    old_term = signal.signal(signal.SIGTERM, on_sigterm)
    bar = _progress() if rank0 and not args.quiet and sys.stdout.isatty() else None
    task = None
    events = trainer.events()
    try:
        for ev in events:
            if not rank0:
                continue
            if ev.kind == "start":
                d = ev.data
                procs = f", {d['world_size']} processes" if d["world_size"] > 1 else ""
                print(f"training {d['arch']} {d['kwargs']} on {trainer.cfg.dataset} ({d['n_train']} images), "
                      f"{d['epochs']} epochs{' (resumed)' if d['resumed'] else ''}{procs} -> {d['run_dir']}")
                if bar:
                    bar.start()
                    task = bar.add_task(f"epoch {ev.epoch + 1}", total=d["steps_per_epoch"], info="")
            elif ev.kind == "step" and bar:
                bar.update(task, completed=ev.data["batch"], description=f"epoch {ev.epoch + 1}",
                           info=f"loss {ev.data['loss']:.3f} lr {ev.data['lr']:.2e}")
            elif ev.kind == "epoch_end":
                r = ev.data
                line = (f"epoch {r['epoch']}: loss {r['loss']:.4f} test accuracy {r['accuracy']:.2%} "
                        f"({r['images_per_s']:.0f} img/s, {r['time']:.1f}s)")
                (bar.console.print(line) if bar else print(line, flush=True))
                if bar:
                    bar.reset(task, total=trainer.steps_per_epoch)
            elif ev.kind == "stopped":
                if interrupted or terminated:
                    _ignore_interrupts(args)  # leaving: nothing may interrupt what follows
                if bar:
                    bar.stop()
                if ev.data.get("saved", True):
                    print(f"stopped; state saved to {ev.data['state']}; continue with: vitscope train --resume "
                          f"{trainer.run_dir}")
                else:
                    print(f"stopped within a weight update: the state saved last, {ev.data['state']}, stands; "
                          f"continue from it with: vitscope train --resume {trainer.run_dir}")
                return 143 if terminated else 130 if interrupted else 0
            elif ev.kind == "finished":
                if bar:
                    bar.stop()
                print(f"done: best accuracy {ev.data['best_accuracy']:.2%}, checkpoint {ev.data['best']}")
    finally:
        events.close()  # here, while on_sigint holds: a Ctrl-C in its finaliser later would print a traceback
        _restore_interrupts(args, old, bool(interrupted or terminated))
        signal.signal(signal.SIGTERM, old_term)
        if bar:
            bar.stop()
        if trainer.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()  # rank 0 may still be writing checkpoints
                dist.destroy_process_group()
    return 0


def _check_finetune(ref: str) -> None:
    """--finetune CKPT checked before torch is imported (a FIFO or a device fails at once), the flag named."""
    from .preflight import check_model_ref

    try:
        check_model_ref(ref)
    except VitscopeError as e:
        raise VitscopeError(f"--finetune: {e}") from None


def _refuse_live_run(run: Path) -> None:
    """Two processes training one directory would overwrite each other's state: refuse a resume of a run
    that still beats (its process alive on this host, or a fresh heartbeat from another)."""
    from .train.monitor import LIVE_STATES, RunMonitor

    mon = RunMonitor(run)
    if (run / "status.json").is_file() and mon.poll().verdict in LIVE_STATES:
        where = mon.status.get("host", "another host")
        raise VitscopeError(f"the run is still training (pid {mon.status.get('pid')} on {where}); watch it with "
                            f"vitscope watch {run}, or stop it first", run)


def _default_out(args: argparse.Namespace) -> str:
    return args.out or f"runs/{args.model.replace('timm:', '')}-{args.dataset}"


def _train_tui(args: argparse.Namespace) -> int:
    """``train --tui``: the same arguments go to a child ``vitscope train`` (checked here first, so a mistake
    is one line before any screen), and the training screen watches its run directory."""
    from .preflight import check_dataset
    from .train.monitor import start_run
    from .train.runfiles import check_new_run, check_resumable

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise VitscopeError("--tui under torchrun: start the run headless and watch it with vitscope watch RUN_DIR")
    argv = [a for a in args.argv[1:] if a != "--tui"]
    if args.resume:
        run = check_resumable(args.resume)
    else:
        if not args.dataset:
            raise VitscopeError("--dataset is required (fashion-mnist, mnist, cifar10 or folder:PATH)")
        for split in (("test",) if args.split_train else ("train", "test")):
            check_dataset(args.dataset, split, args.data_dir, args.download)
        if args.finetune:
            _check_finetune(args.finetune)
        if args.epochs < 1 or args.batch_size < 1:
            raise VitscopeError("--epochs and --batch-size must be at least 1")
        run = check_new_run(_default_out(args), args.overwrite)
        if not args.out:
            argv += ["--out", str(run)]
    proc = start_run(argv, run, append_log=bool(args.resume))
    return _run_training_app(run, proc, args)


def cmd_compare(args: argparse.Namespace) -> int:
    from .preflight import check_dataset, check_image, check_model_ref

    if len(args.refs) not in (2, 3):
        raise VitscopeError("compare takes MODEL_A MODEL_B IMAGE, or FINETUNED IMAGE (its parent is found)")
    *models, image = args.refs
    for ref in models:
        check_model_ref(ref)
    check_image(image)
    if args.dataset:
        check_dataset(args.dataset, args.split, args.data_dir)
    if args.limit is not None and args.limit < 1:
        raise VitscopeError("--limit must be at least 1")
    from .compare import check_out, compare, find_parent, recorded_parent

    if args.out is not None:
        check_out(args.out, args.overwrite)  # before the models load (seconds for a big one)
    from .loaders import load
    from .loaders.checkpoint import file_hash

    opts = dict(allow_cnn=True, trust_checkpoint=args.trust_checkpoint, device=args.device,
                weight_dtype=args.weight_dtype)
    loaded = [load(ref, **opts) for ref in models]
    parent = None
    if len(models) == 1:  # a finetune alone: A is its parent
        child = loaded[0]
        sha = recorded_parent(child)
        if sha is None and args.parent is None:
            raise VitscopeError("records no parent checkpoint (not a vitscope finetune): give MODEL_A MODEL_B IMAGE",
                                models[0])
        found = find_parent(models[0], sha, args.parent)
        if found is None:
            raise VitscopeError(f"its parent (sha256 {sha[:12]}…) is not next to it, in its run directory's parent "
                                "or in samples/: pass --parent FILE", models[0])
        path, how = found
        loaded.insert(0, load(str(path), **opts))
        models.insert(0, str(path))
        parent = {"parent": str(path), "child": models[1], "sha256": sha, "found": how}
        names = ("parent", "finetuned")
    else:
        if args.parent:
            raise VitscopeError("--parent goes with FINETUNED IMAGE (two models name both sides already)")
        names = ("A", "B")
        for (i, j) in ((0, 1), (1, 0)):
            sha = recorded_parent(loaded[j])
            if sha and Path(models[i]).is_file() and file_hash(models[i]) == sha:
                parent = {"parent": models[i], "child": models[j], "sha256": sha, "found": "given (sha256 matches)"}
    side_notes = [f"{name}: {note}" for name, side in zip(names, loaded) for note in side.spec.caveats]
    for note in side_notes:  # as open_model does for one model: what explains the numbers
        print(f"note: {note}", file=sys.stderr)
    if args.out is None:
        link = ""  # in the split view's words (it would hash both files again to find this)
        if parent and len(args.refs) == 2:
            link = "finetune of its parent (sha256)"
        elif parent:
            child, par = ("B", "A") if parent["child"] == models[1] else ("A", "B")
            link = f"{child} finetuned from {par} (sha256)"
        return _compare_app(models, loaded, image, names, args, link)
    dataset = None
    if args.dataset:
        from .data.datasets import get_dataset

        dataset = get_dataset(args.dataset, args.split, args.data_dir)
    res = compare(loaded[0], loaded[1], image, args.out, names=names, parent=parent, overwrite=args.overwrite,
                  dataset=dataset, limit=args.limit)
    for side in ("a", "b"):
        r = res[side]
        best = r["top5"][0] if r["top5"] else None
        pred = f"{best['class']} ({best['prob']:.1%})" if best else "none"
        print(f"{side} = {r['name']}: {Path(r['model']).name} ({r['kind']}): prediction {pred}")
    if parent:
        print(f"parent: {Path(parent['parent']).name} -> {Path(parent['child']).name} ({parent['found']})")
    if "head_js" in res:
        h = res["head_js"]
        print(f"head_js: mean {h['mean']:.3f} over {h['on']}" + (
            f"; accuracy {res['accuracy']['a']:.1%} vs {res['accuracy']['b']:.1%}" if "accuracy" in res else ""))
    for row in res["faithfulness"]["table"][:3]:
        print(f"  {row['model']} {row['method']:<26} insertion - deletion {row['score']:+.3f}")
    for note in (n for n in res["notes"] if n not in side_notes):  # each side's were printed as they loaded
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {Path(args.out).expanduser()}: a/, b/, compare.json, compare.npz, compare-*.png")
    return 0


def _compare_app(models: list[str], loaded: list, image: str, names: tuple[str, str],
                 args: argparse.Namespace, parent_link: str) -> int:
    import asyncio

    from .tui.app import InspectorApp, Options
    from .tui.screens.compare import CompareScreen

    dataset = None
    if args.dataset:
        from .data.datasets import get_dataset

        dataset = get_dataset(args.dataset, args.split, args.data_dir)
    opts = Options(model=models[0], image=image, truecolor_missing=not os.environ.get("COLORTERM", "").lower() in
                   ("truecolor", "24bit") and not os.environ.get("NO_COLOR"))
    screen = CompareScreen(models[0], models[1], image, names=names, loaded=loaded, dataset=dataset, limit=args.limit,
                           parent_link=parent_link)
    app = InspectorApp(opts, start=screen, tracebacks=getattr(args, "debug", False))
    loop = asyncio.new_event_loop()
    try:
        app.run(loop=loop)
    finally:
        _leave_now_if_workers_run(app)
    return _inspect_exit(app)


def cmd_watch(args: argparse.Namespace) -> int:
    from .train.monitor import is_run_dir

    run = Path(args.run_dir).expanduser()
    if not run.is_dir():
        raise VitscopeError("no such run directory", run)
    if not is_run_dir(run):
        raise VitscopeError("not a vitscope run directory (no run.json; a run starting now writes it in a "
                            "moment)", run)
    return _run_training_app(run, None, args)


def _run_training_app(run: Path, proc, args: argparse.Namespace) -> int:
    import asyncio

    from .tui.app import InspectorApp, Options
    from .tui.screens.training import TrainingScreen

    truecolor = os.environ.get("COLORTERM", "").lower() in ("truecolor", "24bit")
    opts = Options(model="", image="", save_dir=str(Path(getattr(args, "save_dir", None) or ".").expanduser()),
                   truecolor_missing=not truecolor and not os.environ.get("NO_COLOR"))
    app = InspectorApp(opts, start=TrainingScreen(run, proc), tracebacks=getattr(args, "debug", False))
    loop = asyncio.new_event_loop()
    try:
        app.run(loop=loop)
    finally:
        for line in app.farewell:
            print(line)
        _leave_now_if_workers_run(app)
    return _inspect_exit(app)


COMMANDS = {"info": cmd_info, "export": cmd_export, "inspect": cmd_inspect, "sweep": cmd_sweep,
            "crossval": cmd_crossval, "train": cmd_train, "watch": cmd_watch,
            "compare": cmd_compare}


def _interrupt_once(_sig, _frame) -> None:
    """Ctrl-C when vitscope is the program: stop what runs (KeyboardInterrupt: exit 130 in main) and ignore
    further Ctrl-Cs while the process leaves (see _ignore_interrupts)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _ignore_interrupts(args: argparse.Namespace) -> None:
    """The process is leaving after a Ctrl-C or a kill: ignore further Ctrl-Cs. One raised in a finaliser or
    during the interpreter's shutdown prints an 'Exception ignored ... KeyboardInterrupt' traceback, and once
    shutdown has put back the default handler, one kills the process (status -2, not 130). Only when
    vitscope is the program: a caller of main() keeps its own handler."""
    if getattr(args, "owns_process", False):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def forget_caught_interrupt() -> None:
    """Clear CPython's note that a KeyboardInterrupt went unhandled. CPython (3.11) sets it whenever a
    KeyboardInterrupt leaves an exec() of a string -- dataclasses and namedtuple build their methods so, and a
    Ctrl-C landing there is caught by main() all the same -- and at exit then kills the process with SIGINT
    (status -2, which a shell reads as killed) instead of exiting with main()'s 130. Each exec() of a string
    resets the note first and sets it again only if a KeyboardInterrupt leaves it: this one raises nothing."""
    exec("None")


def _restore_interrupts(args: argparse.Namespace, old, leaving: bool) -> None:
    """Put back the SIGINT handler a command replaced, unless the process is leaving on a signal."""
    if leaving and getattr(args, "owns_process", False):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGINT, old)


def main(argv: Sequence[str] | None = None) -> int:
    # the process is vitscope's own when main() is the program (argv None): a Ctrl-C then ends it quietly
    owns_process = argv is None and threading.current_thread() is threading.main_thread()
    if owns_process:
        signal.signal(signal.SIGINT, _interrupt_once)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # IMAGE is optional (nargs="?"), so argparse gives it up when an option comes between it and MODEL
    # (`inspect model.pt --weight-dtype bfloat16 img.png`): the first argument left over is IMAGE
    if (extra and not extra[0].startswith("-") and getattr(args, "image", "") is None
            and args.command in ("export", "inspect")):
        args.image = extra.pop(0)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.owns_process = owns_process
    debug = getattr(args, "debug", False)
    try:
        return COMMANDS[args.command](args)
    except VitscopeError as e:
        if debug:
            raise
        print(f"vitscope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _ignore_interrupts(args)
        print("vitscope: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug: say so in one line; --debug shows the traceback
        if debug:
            raise
        print(internal_error(e), file=sys.stderr)
        return 1
    finally:
        _ignore_interrupts(args)  # the command is over: a Ctrl-C now would only break the interpreter's exit
        forget_caught_interrupt()


def internal_error(e: BaseException) -> str:
    return f"vitscope: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)"
