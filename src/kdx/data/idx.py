"""IDX files (MNIST, Fashion-MNIST), gzipped or not, read without torchvision's download checks."""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from kdx.errors import KdxError, first_line

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file as a tensor of the dtype and shape its header gives; a file whose header and size
    disagree (cut off, glued onto another, not IDX at all) is refused with a KdxError naming it."""
    opener = gzip.open if str(path).endswith(".gz") else open
    refetch = "delete it and re-fetch the dataset"
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # a cut-off download, a damaged copy
        raise KdxError(f"{path} is truncated or corrupt ({type(e).__name__}: {first_line(e)}); {refetch}") from None
    except OSError as e:
        raise KdxError(f"{path} cannot be read ({type(e).__name__}: {e}); check the file's permissions, or {refetch}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise KdxError(f"{path} is not an IDX file (bad magic number); {refetch}")
    ndim, dtype = raw[3], np.dtype(_DTYPES[raw[2]])
    if len(raw) < 4 + 4 * ndim:
        raise KdxError(f"{path}: the IDX header is cut off ({len(raw)} bytes for {ndim} dimensions); {refetch}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    if any(d < 0 for d in dims):
        raise KdxError(f"{path}: the IDX header gives a negative size {dims}; the file is corrupt: {refetch}")
    want, have = math.prod(dims) * dtype.itemsize, len(raw) - 4 - 4 * ndim  # Python ints: no overflow
    if want != have:
        state = "truncated" if have < want else "longer than its header says (corrupt)"
        raise KdxError(f"{path}: the header says {dims} {dtype.name} values ({want} bytes) but {have} bytes "
                       f"follow; the file is {state}: {refetch}")
    data = np.frombuffer(raw, dtype, offset=4 + 4 * ndim)
    try:
        data = data.reshape(dims)
    except ValueError as e:  # e.g. (0, 2**31-1, 2**31-1): no bytes, but a shape numpy cannot hold
        raise KdxError(f"{path}: the IDX header gives an impossible shape {dims} ({e}); {refetch}") from None
    return torch.from_numpy(data.astype(dtype.newbyteorder("=")))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file (gzipped if the name ends in .gz); used to build test fixtures in the real format."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def find_idx_split(dirs: list[Path], prefix: str) -> tuple[Path, Path] | None:
    """Find `{prefix}-images-idx3-ubyte[.gz]` and its labels in the first directory that has both."""
    for d in dirs:
        for suffix in (".gz", ""):
            img, lab = d / f"{prefix}-images-idx3-ubyte{suffix}", d / f"{prefix}-labels-idx1-ubyte{suffix}"
            if img.exists() and lab.exists():
                return img, lab
    return None
