"""What downstream code needs to know about a model: :class:`ModelSpec` and :class:`TokenLayout`.

Everything after loading reads these; nothing downstream asks "is this timm or HF?" again.
"""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import VitscopeError


@dataclass(frozen=True)
class TokenLayout:
    """How the token sequence is laid out: prefix tokens first, then patches row-major.

    ``prefix_names`` names each prefix token in order ("cls", "dist", "reg0", ...).
    ``grid`` is (rows, cols) of the patch grid; it need not be square.
    """

    prefix_names: tuple[str, ...]
    grid: tuple[int, int]

    @property
    def num_prefix(self) -> int:
        return len(self.prefix_names)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    @property
    def cls_index(self) -> int | None:
        return self.prefix_names.index("cls") if "cls" in self.prefix_names else None

    def patch_token(self, row: int, col: int) -> int:
        """Token index of the patch at (row, col)."""
        rows, cols = self.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise IndexError(f"patch ({row}, {col}) is outside the {rows}x{cols} grid")
        return self.num_prefix + row * cols + col

    def patch_position(self, token: int) -> tuple[int, int] | None:
        """(row, col) of a patch token, or None for a prefix token."""
        if token < self.num_prefix:
            return None
        i = token - self.num_prefix
        return divmod(i, self.grid[1])

    def token_name(self, token: int) -> str:
        if token < self.num_prefix:
            return self.prefix_names[token].upper() if self.prefix_names[token] in ("cls", "dist") else self.prefix_names[token]
        r, c = self.patch_position(token)  # type: ignore[misc]
        return f"patch ({r}, {c})"


@dataclass
class ModelSpec:
    """A description of an opened ViT, filled in once by the loader."""

    family: str  # "vitscope", "timm", "hf-vit", "torchvision-vit", "reference"
    arch: str  # a timm model name (every opened ViT runs as a timm VisionTransformer)
    num_layers: int
    num_heads: int
    embed_dim: int
    patch_size: tuple[int, int]
    img_size: tuple[int, int]
    in_chans: int
    layout: TokenLayout
    pooling: str  # "token", "avg", "map", "token+dist", ...
    classes: list[str]
    data_config: dict[str, Any]  # timm form: input_size, mean, std, interpolation, crop_pct
    random_weights: bool
    source: str
    num_params: int = 0
    layer_scale: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)  # timm.create_model kwargs that rebuild it
    notes: list[str] = field(default_factory=list)  # conventions and guesses to show the user
    provenance: dict[str, Any] = field(default_factory=dict)  # a vitscope checkpoint's "train" record and "parent"
    kind: str = "vit"  # "vit", or "cnn" for the CNNs kept for Grad-CAM comparison (no tokens, no attention)
    weights_held: str = ""  # "bfloat16"/"float16": Linear/Conv2d weights held so, computed in float32 (--weight-dtype)

    @property
    def caveats(self) -> list[str]:
        """The notes that qualify the numbers (guesses, held or non-finite weights): what a terminal prints. The
        training record ("trained: {...}") goes only to the JSON outputs."""
        return [n for n in self.notes if not n.startswith("trained:")]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["layout"] = {"prefix_tokens": list(self.layout.prefix_names), "grid": list(self.layout.grid)}
        d["num_classes"] = self.num_classes
        d["classes"] = self.classes if len(self.classes) <= 20 else self.classes[:20] + ["..."]
        return d


def parse_token(text: str | None, layout: TokenLayout) -> int | None:
    """A query token from the command line or a prompt: an index, ``ROW,COL`` of a patch, or ``cls``
    (None: CLS, or the mean of patch queries for a model without CLS)."""
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
    """A class by name (case-insensitive) or index; a near miss is suggested."""
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
