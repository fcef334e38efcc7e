"""Every file kdx writes goes through here: a temporary file beside the target, then a rename, so a kill
never leaves half a file. Text, JSON, torch checkpoints, figures, CSV, parquet and numpy arrays."""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _umask_mode()  # what open() would give a new file: mkstemp's 0600 would hide pages and results


def _atomic(path: Path, write) -> None:
    path = Path(path)
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


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def write_json(path: Path, obj) -> None:
    """JSON, indented, with NaN written as null (strict JSON readers reject NaN)."""
    write_text(path, json.dumps(_nan_to_none(obj), indent=2, sort_keys=False) + "\n")


def save_torch(path: Path, obj) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


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
