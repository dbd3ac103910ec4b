"""Make tests/data/mnist/: the first N images of the MNIST test split, in the original IDX(.gz) format.

    python tests/data/make_test_data.py /path/to/mnist [N]

The source folder must hold t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (the standard MNIST test
split). The output keeps the file names and format that vitscope/data/datasets.py looks for; the gzip
header carries no name or time, so the same input gives byte-identical files. Needs only the standard library.
"""
from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

N = 300
NAMES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def read(path: Path) -> tuple[bytes, list[int], bytes]:
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = list(struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim]))
    return data[:4], dims, data[4 + 4 * ndim:]


def write(path: Path, magic: bytes, dims: list[int], body: bytes) -> None:
    raw = magic + struct.pack(f">{len(dims)}I", *dims) + body
    with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as g:
        g.write(raw)


def main(src: Path, n: int = N, out: Path = Path(__file__).resolve().parent / "mnist") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (im_magic, im_dims, im_body), (lb_magic, lb_dims, lb_body) = (read(src / name) for name in NAMES)
    assert im_magic == b"\x00\x00\x08\x03" and im_dims[1:] == [28, 28], (im_magic, im_dims)
    assert lb_magic == b"\x00\x00\x08\x01" and lb_dims[0] == im_dims[0], (lb_magic, lb_dims)
    assert 0 < n <= im_dims[0]
    write(out / NAMES[0], im_magic, [n, 28, 28], im_body[:n * 28 * 28])
    write(out / NAMES[1], lb_magic, [n], lb_body[:n])
    counts = [lb_body[:n].count(d) for d in range(10)]
    print(f"wrote the first {n} of {im_dims[0]} images to {out}; labels per digit: {' '.join(map(str, counts))}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else N)
