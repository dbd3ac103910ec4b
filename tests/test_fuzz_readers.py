"""Property-based fuzzing of the two readers that take untrusted bytes: checkpoint reading (the preflight's
sniffing, ``read_checkpoint`` and the whole ``vitscope.load``) and image reading (``read_image``).

Inputs are random bytes and mutations (overwritten bytes, truncations, inserted or deleted runs, a changed
safetensors header) of real small files built here. Every input must end in success or a VitscopeError naming
the file; any other exception is a bug (the minimal examples found are regular tests below). Hypothesis runs
derandomized without a database, so CI sees the same examples every run; about 30 s in all
(VITSCOPE_FUZZ_SCALE below fuzzes longer).
"""
from __future__ import annotations

import io
import json
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from vitscope.errors import VitscopeError

from conftest import TIMM_TINY, tiny_timm

# VITSCOPE_FUZZ_SCALE=20 fuzzes 20x longer with fresh random examples (to hunt locally); CI runs the fixed set
SCALE = float(os.environ.get("VITSCOPE_FUZZ_SCALE", "1"))
FUZZ = settings(deadline=None, derandomize=SCALE == 1, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


# ---- the real small files that get mutated ----

def _safetensors_bytes() -> bytes:
    from safetensors.torch import save

    from vitscope.loaders.timm_vit import default_data_config

    m = tiny_timm(**dict(TIMM_TINY, embed_dim=24, depth=1, num_heads=2, num_classes=3))
    meta = {"format": "vitscope/1", "arch": "vit_tiny_patch16_224",
            "kwargs": dict(TIMM_TINY, embed_dim=24, depth=1, num_heads=2, num_classes=3),
            "classes": ["a", "b", "c"], "data_config": default_data_config(m), "parent": None, "train": {}}
    return save({k: v.contiguous() for k, v in m.state_dict().items()}, metadata={"vitscope": json.dumps(meta)})


def _torch_zip_bytes() -> bytes:
    """torch.save's zip, its serialization id (which differs between processes) zeroed: the same bytes every
    run, so the derandomized examples are too (torch does not check that record's checksum)."""
    buf = io.BytesIO()
    torch.save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}, buf)
    data = buf.getvalue()
    m = re.search(rb"serialization_idFB..Z*(\d+)", data, re.S)
    return data[:m.start(1)] + b"0" * len(m.group(1)) + data[m.end(1):]


def _torch_legacy_bytes(key: bytes = b"1") -> bytes:
    """torch's legacy format; its storage key (a memory address) replaced by a fixed one, the same bytes every
    run. ``key=None`` puts a different key in the closing key list only: it then names no storage."""
    buf = io.BytesIO()
    t = torch.arange(4, dtype=torch.float32)
    torch.save({"w": t}, buf, _use_new_zipfile_serialization=False)
    data, address = buf.getvalue(), str(t.untyped_storage()._cdata).encode()
    fixed = b"1" * len(address)
    data = data.replace(address, fixed)
    if key is None:  # the last occurrence is in the closing list of storage keys
        at = data.rfind(fixed)
        data = data[:at] + b"2" * len(fixed) + data[at + len(fixed):]
    return data


CHECKPOINTS = {"vitscope.safetensors": _safetensors_bytes(), "state.pt": _torch_zip_bytes(),
               "legacy.pt": _torch_legacy_bytes()}


def _image_bytes(fmt: str, mode: str = "RGB") -> bytes:
    a = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    img = Image.fromarray(a).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _png16() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(120, dtype=np.uint16) * 500).reshape(12, 10)).save(buf, format="PNG")
    return buf.getvalue()


IMAGES = {"png": _image_bytes("PNG"), "png16": _png16(), "jpeg": _image_bytes("JPEG"),
          "bmp": _image_bytes("BMP"), "gif": _image_bytes("GIF", "P"), "tiff": _image_bytes("TIFF"),
          "webp": _image_bytes("WEBP")}


# ---- mutations ----

@st.composite
def mutated(draw, bases: dict[str, bytes]) -> tuple[str, bytes]:
    """(name of the base, its bytes with 1-4 mutations): the kinds of damage a disk, a download or a hostile
    file does, drawn so that most mutants still start like the real format."""
    name = draw(st.sampled_from(sorted(bases)))
    data = bytearray(bases[name])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "set", "truncate", "insert", "delete", "int"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "int" and len(data) >= at + 4:  # a length or count field gone wrong
            data[at:at + 4] = struct.pack("<I", draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 65536])))
    return name, bytes(data)


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64), st.text(max_size=8),
                      st.floats(allow_nan=True))


@st.composite
def mutated_safetensors_header(draw, metadata: bool) -> bytes:
    """The vitscope checkpoint with its JSON header changed: a tensor's dtype, shape or offsets, the header
    length, and with ``metadata`` the vitscope metadata's fields."""
    data = CHECKPOINTS["vitscope.safetensors"]
    n = int.from_bytes(data[:8], "little")
    header, body = json.loads(data[8:8 + n]), data[8 + n:]
    keys = sorted(k for k in header if k != "__metadata__")
    meta = json.loads(header["__metadata__"]["vitscope"])
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(keys + ["__metadata__"] * metadata))
        if key == "__metadata__":
            field = draw(st.sampled_from(sorted(meta)))
            meta[field] = draw(st.one_of(JSON_LEAF, st.lists(JSON_LEAF, max_size=3),
                                         st.dictionaries(st.text(max_size=6), JSON_LEAF, max_size=3)))
            header["__metadata__"]["vitscope"] = draw(st.sampled_from([json.dumps(meta), "{", "[]", "null"]))
            continue
        part = draw(st.sampled_from(["dtype", "shape", "data_offsets", "drop"]))
        if part == "drop":
            del header[key]
            keys.remove(key)
            if not keys:
                break
        elif part == "dtype":
            header[key]["dtype"] = draw(st.sampled_from(["F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "X", 3]))
        else:
            header[key][part] = draw(st.lists(st.integers(-1, 2**40), max_size=4))
    raw = json.dumps(header).encode()
    length = draw(st.sampled_from([len(raw), len(raw), 0, len(raw) + 1, len(raw) - 1, 2**40]))
    return length.to_bytes(8, "little") + raw + body


# ---- the properties ----

def _only_vitscope_errors(call, path: Path) -> None:
    """Success or a VitscopeError naming the file, and no warning (the CLI's error is its one line of stderr)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            call(path)
            event("read")  # --hypothesis-show-statistics: how many mutants still read
        except VitscopeError as e:
            assert str(path) in str(e), f"the message does not name the file: {e}"
            event("refused")
    assert not caught, [str(w.message) for w in caught]


def _write(folder: Path, name: str, data: bytes) -> Path:
    p = folder / name
    p.write_bytes(data)
    return p


def _checkpoint_readers():
    import vitscope
    from vitscope.loaders.files import read_checkpoint
    from vitscope.preflight import check_model_ref

    return [lambda p: check_model_ref(str(p)), read_checkpoint, vitscope.load]


def _every_reader_only_vitscope_errors(p: Path) -> None:
    for read in _checkpoint_readers():
        _only_vitscope_errors(read, p)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.slow
@settings(FUZZ, max_examples=int(700 * SCALE))
@given(case=mutated(CHECKPOINTS), suffix=st.sampled_from([".safetensors", ".pt"]))
def test_mutated_checkpoints_end_in_success_or_a_vitscope_error(fuzz_dir, case, suffix):
    _name, data = case
    _every_reader_only_vitscope_errors(_write(fuzz_dir, "ckpt" + suffix, data))


@pytest.mark.slow
@settings(FUZZ, max_examples=int(500 * SCALE))
@given(data=mutated_safetensors_header(metadata=False), suffix=st.sampled_from([".safetensors", ".bin"]))
def test_safetensors_with_a_mutated_header_ends_in_success_or_a_vitscope_error(fuzz_dir, data, suffix):
    _every_reader_only_vitscope_errors(_write(fuzz_dir, "header" + suffix, data))


@pytest.mark.slow
@settings(FUZZ, max_examples=int(250 * SCALE))
@given(data=mutated_safetensors_header(metadata=True), suffix=st.sampled_from([".safetensors", ".bin"]))
def test_safetensors_with_mutated_metadata_ends_in_success_or_a_vitscope_error(fuzz_dir, data, suffix):
    """The vitscope metadata's fields replaced by other JSON (null, numbers, lists, objects, broken JSON)."""
    _every_reader_only_vitscope_errors(_write(fuzz_dir, "meta" + suffix, data))


@pytest.mark.slow
@settings(FUZZ, max_examples=int(250 * SCALE))
@given(head=st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x05", b"\x10\x00\x00\x00\x00\x00\x00\x00{"]),
       data=st.binary(min_size=1, max_size=300), suffix=st.sampled_from([".safetensors", ".pt"]))
def test_random_bytes_as_a_checkpoint(fuzz_dir, head, data, suffix):
    _every_reader_only_vitscope_errors(_write(fuzz_dir, "random" + suffix, head + data))


@pytest.mark.slow
@settings(FUZZ, max_examples=int(1500 * SCALE))
@given(case=mutated(IMAGES))
def test_mutated_images_end_in_success_or_a_vitscope_error(fuzz_dir, case):
    from vitscope.data.images import read_image

    name, data = case
    _only_vitscope_errors(read_image, _write(fuzz_dir, "img." + name.rstrip("16"), data))


@pytest.mark.slow
@settings(FUZZ, max_examples=int(400 * SCALE))
@given(head=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF89a", b"II*\x00",
                             b"RIFF\x00\x00\x00\x00WEBPVP8 "]),
       data=st.binary(min_size=0, max_size=300))
def test_random_bytes_as_an_image(fuzz_dir, head, data):
    from vitscope.data.images import read_image

    if head + data:
        _only_vitscope_errors(read_image, _write(fuzz_dir, "random.img", head + data))


# ---- the minimal failing examples the fuzzing found, as regular tests ----

@pytest.mark.parametrize("data,why", [
    pytest.param(b"\x80", "IndexError in the unpickler", id="IndexError"),
    pytest.param(b"\x80\x02G", "struct.error: a float opcode without its 8 bytes", id="struct.error"),
    pytest.param(b"\x80\x02h\x00", "KeyError: a memo reference to nothing", id="KeyError"),
    pytest.param(b"\x80\x05\x00", "torch warned about the protocol before the error", id="UserWarning"),
    pytest.param(_torch_legacy_bytes(key=None), "AssertionError: torch's legacy loader on an unknown storage key",
                 id="AssertionError"),
    pytest.param(b"\x80\x02ctorch\nFloatStorage\n)\x81.", "TypeError: NEWOBJ of a storage type", id="TypeError"),
])
def test_damaged_pickles_are_refused_in_one_line(tmp_path, data, why):
    from vitscope.loaders.files import read_checkpoint

    p = tmp_path / "damaged.pt"
    p.write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(VitscopeError, match="truncated or corrupt|pickled Python objects") as e:
            read_checkpoint(p)
    assert str(p) in str(e.value) and not caught, why


def test_corrupt_exif_warns_nothing(tmp_path):
    """Pillow warned 'Corrupt EXIF data' on stderr before the one-line error (found by fuzzing)."""
    from vitscope.data.images import read_image

    p = tmp_path / "bad.tif"
    p.write_bytes(b"II*\x00\x00\x00\x00\x01")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(VitscopeError, match="not an image"):
            read_image(p)
    assert not caught


def test_cli_says_one_line_for_a_damaged_checkpoint_and_image(tmp_path):
    from conftest import ROOT, run_cli

    (tmp_path / "bad.pt").write_bytes(b"\x80\x05\x00")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00\x00\x00\x00\x01")
    for args in (["info", str(tmp_path / "bad.pt")],
                 ["inspect", str(ROOT / "samples" / "fashion-vit-p7.safetensors"), str(tmp_path / "bad.tif")]):
        r = run_cli(*args, timeout=120)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_deeply_nested_header_is_refused(tmp_path, suffix):
    """A safetensors-looking header nested 100,000 deep: json.loads in the preflight's sniffing raised
    RecursionError (an internal error, exit 1)."""
    body = b'{"a":' + b"[" * 100_000
    p = tmp_path / f"deep{suffix}"
    p.write_bytes(len(body).to_bytes(8, "little") + body)
    for read in _checkpoint_readers():
        with pytest.raises(VitscopeError):
            read(p)


def test_deeply_nested_json_files_are_refused(tmp_path):
    """config.json of a Hugging Face directory and a --classes JSON file, nested too deep for json."""
    import vitscope
    from vitscope.loaders.files import read_class_names

    deep = "[" * 100_000
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"a": ' + deep)
    (tmp_path / "classes.json").write_text(deep)
    with pytest.raises(VitscopeError, match="config.json"):
        vitscope.load(tmp_path / "hf")
    with pytest.raises(VitscopeError, match="classes.json"):
        read_class_names(tmp_path / "classes.json")
