"""Every file kdx writes goes through here: a temporary file beside the target, then a rename, so a kill
never leaves half a file. Text, JSON, torch checkpoints, figures, CSV, parquet, numpy arrays, whole folders
(`atomic_dir`) and appended log lines (`append_text`, cut back to its last whole line if a write fails).
A full disk is named (the file, its folder, what to do) as a KdxError, never a traceback. Reading back what
kdx wrote goes through `reading` (and `read_json`): a damaged file is a KdxError naming it and the fix."""
from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from kdx.errors import DiskFullError, KdxError, first_line


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _umask_mode()  # what open() would give a new file: mkstemp's 0600 would hide pages and results
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL


def disk_full_error(path: str | Path | None, e: OSError) -> DiskFullError:
    """The one-line error for a file that a full disk (or quota) kept from being written."""
    what = f"{Path(path).name} in {Path(path).parent}" if path else "a file"
    return DiskFullError(f"cannot write {what}: the disk is full ({e.strerror}). Free space there, or write elsewhere "
                    "(--runs-dir, --out, $KDX_CACHE), and run the command again (`kdx run ... --resume` continues a "
                    "run, a study resumes by itself)")


@contextlib.contextmanager
def _named_when_full(path):
    try:
        yield
    except OSError as e:
        if disk_full(e):
            raise disk_full_error(path, e) from None
        raise


def _atomic(path: Path, write) -> None:
    path = Path(path)
    with _named_when_full(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def append_text(path: Path, text: str) -> None:
    """Append to a log (e.g. one JSON line): if the write fails (a full disk) the file is cut back to what
    it held before, so it never ends in half a line."""
    path = Path(path)
    data = memoryview(text.encode())
    with _named_when_full(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data):]
            except BaseException:
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(out: Path):
    """A folder written whole or not at all: the body fills the hidden temporary folder it is given, which
    then replaces `out` (a kill mid-write leaves that temporary folder, never a half folder at `out`)."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with _named_when_full(out):
        try:
            yield tmp
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


@contextlib.contextmanager
def reading(path, fix: str):
    """Read a file kdx wrote (and the fields it should hold) inside this block: anything that fails on a damaged
    file (cut short, bytes flipped, edited by hand, a missing or mistyped field) becomes one KdxError naming the
    file and `fix` (e.g. "delete RUN and run it again"). KdxErrors pass through unchanged."""
    try:
        yield
    except KdxError:
        raise
    except Exception as e:  # noqa: BLE001 - json, yaml, torch, pyarrow and pandas each raise their own types
        raise KdxError(f"{path} is damaged or not what kdx wrote ({type(e).__name__}: {first_line(e, 160, 'unreadable')}); {fix}") from None


def read_json(path, fix: str):
    """A JSON file kdx wrote (UTF-8); a damaged one is a KdxError naming it and `fix`."""
    with reading(path, fix):
        return json.loads(Path(path).read_bytes().decode("utf-8"))


def write_json(path: Path, obj) -> None:
    """JSON, indented, with NaN written as null (strict JSON readers reject NaN)."""
    write_text(path, json.dumps(_nan_to_none(obj), indent=2, sort_keys=False) + "\n")


def save_torch(path: Path, obj) -> None:
    # serialised in memory first: torch writing to a full disk raises a bare RuntimeError ("unexpected pos"),
    # while the file's own write raises ENOSPC, which is named
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic(path, lambda f: f.write(buf.getbuffer()))


def pyplot():
    """matplotlib.pyplot on the Agg backend: probes run on machines without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig, **savefig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, **savefig)
    pyplot().close(fig)
    return buf.getvalue()


def save_figure(fig, path) -> None:
    png = figure_png(fig)
    _atomic(path, lambda f: f.write(png))


def save_csv(df, path) -> None:
    _atomic(path, lambda f: f.write(df.to_csv(index=False).encode()))


def save_parquet(df, path, meta: dict | None = None) -> None:
    """A DataFrame as parquet, with `meta` (JSON) in the file's key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if meta is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"kdx": json.dumps(meta).encode()})
    _atomic(path, lambda f: pq.write_table(table, f))


def save_arrays(path, **arrays) -> None:
    """numpy arrays in one .npz file."""
    _atomic(path, lambda f: np.savez(f, **arrays))


def read_parquet_meta(path) -> dict | None:
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(b"kdx")
    return json.loads(raw) if raw else None


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj
