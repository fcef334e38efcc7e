"""Tabular data: float features (N, D), some columns maybe categorical (integer codes with their category
names, one-hot for the models), from CSV or parquet files, scikit-learn's bundled sets (nothing downloaded)
or `make_classification`. Continuous features are standardised with the train split's mean and standard
deviation (so held-out noise in standardised units means the same on every set); codes are left as they are.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdx.data.base import Dataset, index_labels
from kdx.errors import KdxError, first_line
from kdx.registry import DATASETS

# the held-out shifts of kdx.eval.heldout's tabular section, and the uniform box
TABULAR_HELDOUT = ["test", "train_subset", "feature_noise-1", "feature_noise-2", "feature_noise-3", "covariate_shift",
                   "missing_features-2", "uniform_noise"]
BUNDLED = ("breast_cancer", "wine", "digits", "iris")
TABLE_FORMATS = (".csv", ".parquet")


def one_hot(x: torch.Tensor, categories: dict[int, list[str]]) -> torch.Tensor:
    """Model features of tabular inputs: continuous columns as they are, each categorical column's code
    (rounded and clamped to its categories, so noise and mixtures in code space land on one) one-hot."""
    if not categories:
        return x
    parts, start = [], 0
    for c in sorted(categories):
        parts.append(x[:, start:c])
        k = len(categories[c])
        code = x[:, c].round().clamp(0, k - 1).long()
        parts.append(torch.nn.functional.one_hot(code, k).to(x.dtype))
        start = c + 1
    parts.append(x[:, start:])
    return torch.cat(parts, 1)


def one_hot_width(num_features: int, categories: dict[int, list[str]]) -> int:
    return num_features + sum(len(v) - 1 for v in categories.values())


def split_rows(n: int, test_fraction: float, seed: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded (train rows, test rows) split of n rows."""
    if not 0 < test_fraction < 1:
        raise KdxError(f"{where}: test_fraction must be in (0, 1), got {test_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n - n_test < 1:
        raise KdxError(f"{where}: {n} rows leave an empty split at test_fraction={test_fraction}; give more rows")
    return perm[n_test:], perm[:n_test]


def table_dataset(name: str, x_train: np.ndarray, y_train, x_test: np.ndarray, y_test, classes: list[str], *,
                  feature_names: list[str] | None = None, categories: dict[int, list[str]] | None = None) -> Dataset:
    """A tabular Dataset, its continuous columns standardised with the train split's statistics."""
    categories = categories or {}
    x_train, x_test = np.asarray(x_train, dtype=np.float64), np.asarray(x_test, dtype=np.float64)
    cont = [c for c in range(x_train.shape[1]) if c not in categories]
    mean, std = x_train[:, cont].mean(0), x_train[:, cont].std(0)
    std = np.where(std > 0, std, 1.0)  # a constant column stays constant (0)
    for x in (x_train, x_test):
        x[:, cont] = (x[:, cont] - mean) / std
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return Dataset(name, f(x_train), torch.as_tensor(np.asarray(y_train)), f(x_test), torch.as_tensor(np.asarray(y_test)),
                   classes, default_heldout=list(TABULAR_HELDOUT), modality="tabular",
                   feature_names=list(feature_names or [f"x{i}" for i in range(x_train.shape[1])]), categories=categories)


@DATASETS.register()
def sklearn_table(which: str = "breast_cancer", test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A table scikit-learn bundles (breast_cancer, wine, iris; digits as 64 features): nothing downloaded."""
    from sklearn import datasets

    if which not in BUNDLED:
        raise KdxError(f"data.which: '{which}' is not a bundled scikit-learn table; use one of {', '.join(BUNDLED)}")
    d = getattr(datasets, f"load_{which}")()
    tr, te = split_rows(len(d.target), test_fraction, seed, f"sklearn_table '{which}'")
    names = [str(c) for c in d.target_names]
    return table_dataset(which, d.data[tr], d.target[tr], d.data[te], d.target[te], names,
                         feature_names=[str(f) for f in d.feature_names])


@DATASETS.register()
def generated_table(n_samples: int = 20000, n_features: int = 20, n_informative: int = 10, n_redundant: int = 4,
                    n_classes: int = 3, n_clusters_per_class: int = 2, class_sep: float = 1.0, flip_y: float = 0.02,
                    test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's make_classification: size, difficulty (class_sep, flip_y, clusters) and seed stated."""
    from sklearn.datasets import make_classification

    try:
        x, y = make_classification(n_samples=n_samples, n_features=n_features, n_informative=n_informative,
                                   n_redundant=n_redundant, n_classes=n_classes, n_clusters_per_class=n_clusters_per_class,
                                   class_sep=class_sep, flip_y=flip_y, random_state=seed)
    except ValueError as e:
        raise KdxError(f"data (generated_table): {first_line(e)}; set n_informative, n_redundant, n_classes and "
                       "n_clusters_per_class so that they fit n_features") from None
    tr, te = split_rows(n_samples, test_fraction, seed, "generated_table")
    return table_dataset("generated_table", x[tr], y[tr], x[te], y[te], [str(i) for i in range(n_classes)])


def read_table(path: Path, where: str):
    """A CSV or parquet file as a pandas DataFrame, any read failure a KdxError naming the file."""
    import pandas as pd

    if path.suffix not in TABLE_FORMATS:
        raise KdxError(f"{where}: {path} is not a .csv or .parquet file; convert it to one of those")
    if not path.is_file():
        raise KdxError(f"{where}: {path} does not exist (or is not a file); check data.path")
    try:
        if path.suffix == ".csv":
            df = pd.read_csv(path, encoding="utf-8", encoding_errors="strict")
        else:
            df = pd.read_parquet(path)
    except UnicodeDecodeError as e:
        raise KdxError(f"{where}: {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except Exception as e:  # noqa: BLE001 - pandas, its C parser and pyarrow each raise their own types
        raise KdxError(f"{where}: {path} cannot be read as {path.suffix[1:]} ({type(e).__name__}: "
                       f"{first_line(e, 200, 'unreadable')}); fix or re-export the file") from None
    if df.shape[0] == 0 or df.shape[1] < 2:
        raise KdxError(f"{where}: {path} holds {df.shape[0]} rows and {df.shape[1]} columns; give a table with a header "
                       "row, rows, and at least one feature column besides the target")
    return df


def _columns(frames: list, target: str, max_categories: int, path: Path, where: str):
    """(features of each frame as float arrays, feature names, categories) from DataFrames of one header."""
    import pandas as pd

    names = [str(c) for c in frames[0].columns if str(c) != target]
    if any([str(c) for c in f.columns] != [str(c) for c in frames[0].columns] for f in frames[1:]):
        raise KdxError(f"{where}: {path} and its test file have different columns; give both the same header")
    arrays, categories = [np.zeros((len(f), len(names))) for f in frames], {}
    for j, name in enumerate(names):
        cols = [f[{str(c): c for c in f.columns}[name]] for f in frames]
        numeric = all(pd.api.types.is_numeric_dtype(c) and not pd.api.types.is_bool_dtype(c) for c in cols)
        if numeric:
            for a, c in zip(arrays, cols):
                a[:, j] = c.to_numpy(dtype=np.float64, na_value=np.nan)
            bad = sum(int((~np.isfinite(a[:, j])).sum()) for a in arrays)
            if bad:
                raise KdxError(f"{where}: {path}: column '{name}' has {bad} missing or infinite values; fill them "
                               "(e.g. with the column's mean) or drop those rows")
            continue
        values = [c.map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v)) for c in cols]
        if any(v.isna().any() for v in values):
            raise KdxError(f"{where}: {path}: categorical column '{name}' has missing values; fill them "
                           "(e.g. with 'missing') or drop those rows")
        cats = sorted(set().union(*(set(v) for v in values)))
        if len(cats) > max_categories:
            raise KdxError(f"{where}: {path}: column '{name}' has {len(cats)} distinct non-numeric values, more than "
                           f"max_categories={max_categories} (an id or free-text column?); drop it or raise data.max_categories")
        index = {v: i for i, v in enumerate(cats)}
        for a, v in zip(arrays, values):
            a[:, j] = [index[s] for s in v]
        categories[j] = cats
    return arrays, names, categories


@DATASETS.register()
def table_file(path: str = "", target: str = "", test_path: str = "", test_fraction: float = 0.2, seed: int = 0,
               max_categories: int = 100) -> Dataset:
    """A CSV or parquet table: `target` the label column (default: the last); non-numeric columns categorical;
    `test_path` a test table of the same header, else a seeded split."""
    where = "data (table_file)"
    if not path:
        raise KdxError(f"{where}: set data.path to a .csv or .parquet file")
    p = Path(path).expanduser()
    frames = [read_table(p, where)] + ([read_table(Path(test_path).expanduser(), where)] if test_path else [])
    target = target or str(frames[0].columns[-1])
    if target not in [str(c) for c in frames[0].columns]:
        raise KdxError(f"{where}: {p} has no column '{target}'; set data.target to one of "
                       f"{', '.join(map(str, frames[0].columns[:20]))}")
    labels = [f[[c for c in f.columns if str(c) == target][0]] for f in frames]
    labels = [[v.item() if isinstance(v, np.generic) else v for v in col.tolist()] for col in labels]
    arrays, names, categories = _columns(frames, target, max_categories, p, where)
    if test_path:
        (x_train, x_test), (l_train, l_test) = arrays, labels
    else:
        tr, te = split_rows(len(arrays[0]), test_fraction, seed, f"{where}: {p}")
        x_train, x_test = arrays[0][tr.numpy()], arrays[0][te.numpy()]
        l_train, l_test = [labels[0][i] for i in tr.tolist()], [labels[0][i] for i in te.tolist()]
    classes, y_train, y_test = index_labels(l_train, l_test, f"{where}: {p}: column '{target}'")
    if len(classes) < 2:
        raise KdxError(f"{where}: {p}: column '{target}' holds one class only; point data.target at the label column")
    return table_dataset(p.stem, x_train, y_train, x_test, y_test, classes, feature_names=names, categories=categories)
