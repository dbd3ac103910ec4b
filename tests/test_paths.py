"""Every reader refuses what is not a regular readable file from its stat, in one line that says what it is."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from vitscope.errors import VitscopeError

from conftest import ROOT, tiny_timm
from hang_guard import ODD_KINDS, no_hang, odd_paths


def readers():
    """Every function that takes a user's path to an image, checkpoint or class-name file."""
    from vitscope import load
    from vitscope.data.images import read_image
    from vitscope.loaders.files import read_checkpoint, read_class_names
    from vitscope.paths import check_regular_file
    from vitscope.preflight import check_image, check_model_ref

    return {
        "check_regular_file": lambda p: check_regular_file(p, "an image file"),
        "read_image": read_image,
        "check_image": lambda p: check_image(str(p)),
        "read_checkpoint": read_checkpoint,
        "load": load,
        "check_model_ref": lambda p: check_model_ref(str(p)),
        "weights": lambda p: check_model_ref("timm:vit_tiny_patch16_224", str(p)),
        "read_class_names": read_class_names,
    }


READERS = ["check_regular_file", "read_image", "check_image", "read_checkpoint", "load", "check_model_ref",
           "weights", "read_class_names"]


@pytest.mark.parametrize("kind", ODD_KINDS)
@pytest.mark.parametrize("reader", READERS)
def test_odd_paths_are_refused_saying_what_they_are(tmp_path, reader, kind):
    paths = odd_paths(tmp_path)
    path, words = paths[kind]
    fifos = [p for p, _ in paths.values() if p.name == "fifo.png"]
    with pytest.raises(VitscopeError) as e:
        no_hang(lambda: readers()[reader](path), fifos)
    msg = str(e.value)
    assert str(path) in msg and words in msg and "\n" not in msg, msg


def test_directory_given_as_image_says_how_to_use_a_folder(tmp_path):
    from vitscope.data.images import read_image

    with pytest.raises(VitscopeError, match="--dataset folder:"):
        read_image(tmp_path)


def test_a_regular_file_passes_and_a_link_to_one_too(tmp_path):
    from vitscope.data.images import read_image
    from vitscope.paths import check_regular_file

    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    assert check_regular_file(tmp_path / "link.png", "an image file") == tmp_path / "link.png"
    assert read_image(tmp_path / "link.png").getpixel((3, 3)) == (200, 10, 10)


UNREADABLE = """
import sys
from vitscope.errors import VitscopeError
from vitscope.data.images import read_image
from vitscope.loaders.files import read_checkpoint
for read in (read_image, read_checkpoint):
    try:
        read(sys.argv[1])
    except VitscopeError as e:
        print(e)
"""


def test_no_permission_says_so(tmp_path):
    """Root reads any file: as root the check runs without the capabilities that bypass permissions."""
    p = tmp_path / "secret.png"
    Image.new("RGB", (16, 16)).save(p)
    p.chmod(0)
    cmd = [sys.executable, "-c", UNREADABLE, str(p)]
    if os.geteuid() == 0:
        if shutil.which("capsh") is None:
            pytest.skip("needs Debian's libcap2-bin (capsh) when run as root: root reads any file unless capsh "
                        "drops its permission-bypassing capabilities")
        cmd = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c",
               " ".join(f"'{a}'" for a in cmd)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and all(str(p) in s and "permission denied" in s for s in lines), (r.stdout, r.stderr)


def test_image_folder_dataset_refuses_a_fifo_inside(tmp_path):
    from vitscope.data.datasets import load_folder

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (16, 16)).save(tmp_path / c / "a.png")
    os.mkfifo(tmp_path / "dog" / "b.png")
    with pytest.raises(VitscopeError, match="FIFO") as e:
        no_hang(lambda: load_folder(tmp_path), [tmp_path / "dog" / "b.png"])
    assert str(tmp_path / "dog" / "b.png") in str(e.value)
