"""Writing probe outputs atomically (temporary file, then rename), like kdx.io."""
from __future__ import annotations

import io
import math

from kdx.io import _atomic, write_json


def pyplot():
    """matplotlib.pyplot on the Agg backend: probes run on machines without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    _atomic(path, lambda f: f.write(buf.getvalue()))


def save_csv(df, path) -> None:
    _atomic(path, lambda f: f.write(df.to_csv(index=False).encode()))


def save_parquet(df, path, meta: dict | None = None) -> None:
    """A DataFrame as parquet, with `meta` (JSON) in the file's key-value metadata."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if meta is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"kdx": json.dumps(meta).encode()})
    _atomic(path, lambda f: pq.write_table(table, f))


def save_arrays(path, **arrays) -> None:
    """numpy arrays in one .npz file."""
    import numpy as np

    _atomic(path, lambda f: np.savez(f, **arrays))


def read_parquet_meta(path) -> dict | None:
    import json

    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(b"kdx")
    return json.loads(raw) if raw else None


def save_json(path, obj) -> None:
    """JSON with NaN written as null (strict JSON readers reject NaN)."""
    write_json(path, _nan_to_none(obj))


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj
