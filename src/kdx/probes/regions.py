"""Regions of input space where the student underfits: k-means on teacher features, per-region
fidelity, and coverage (how far the region lies from the inputs the student was distilled on)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from kdx.io import pyplot, save_figure
from kdx.neighbors import search


def coverage(eval_features: np.ndarray, source_features: np.ndarray) -> np.ndarray:
    """Distance from each evaluation point to its nearest distillation input (0: distilled on it)."""
    return search(source_features, eval_features, 1)[0][:, 0]


def share(values: pd.Series, names=None, top: int = 3) -> str:
    """'Shirt 41%, Coat 30%, ...': the most common values and their shares."""
    counts = values.value_counts(normalize=True).head(top)
    return ", ".join(f"{names[v] if names is not None else v} {100 * s:.0f}%" for v, s in counts.items())


def _labeled_mean(g: pd.DataFrame, col: str) -> float:
    lab = g[g["class"] >= 0]
    return float((lab[col] == lab["class"]).mean()) if len(lab) else float("nan")


def region_table(points: pd.DataFrame, classes: list[str], examples: int = 5) -> pd.DataFrame:
    """One row per region (points["region"]), most underfit first: the most negative mean deviation
    phi(p_student) - phi(p_teacher) on the teacher's top class, i.e. where the student is least sure
    of what the teacher says."""
    rows = []
    for region, g in points.groupby("region"):
        rows.append({
            "region": int(region), "size": len(g),
            "dominant_classes": share(g["teacher_class"], classes),
            "distributions": share(g["source"]),
            "teacher_acc": _labeled_mean(g, "teacher_class"), "student_acc": _labeled_mean(g, "student_class"),
            "agreement": float((g["teacher_class"] == g["student_class"]).mean()),
            "mean_deviation": float(g["deviation"].mean()),
            "mean_disagreement": float(g["disagreement"].mean()),
            "coverage_median": float(g["coverage"].median()),
            "examples": " ".join(g["item"].head(examples)),
        })
    table = pd.DataFrame(rows).sort_values(["mean_deviation", "agreement"], kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def coverage_correlation(points: pd.DataFrame) -> dict:
    """Spearman correlation over points between coverage distance and disagreement, pooled and per distribution."""
    from scipy.stats import spearmanr

    def rho(g):
        if g["coverage"].nunique() < 2 or g["disagreement"].nunique() < 2:
            return {"rho": float("nan"), "p": float("nan"), "n": len(g)}
        r = spearmanr(g["coverage"], g["disagreement"])
        return {"rho": float(r.statistic), "p": float(r.pvalue), "n": len(g)}

    return {"all": rho(points), **{d: rho(g) for d, g in points.groupby("source", sort=False)}}


def plot(table: pd.DataFrame, path) -> None:
    """Regions as bubbles: coverage distance against mean deviation, size by points, colour by agreement."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    sc = ax.scatter(table["coverage_median"], table["mean_deviation"], s=20 + 400 * table["size"] / table["size"].max(),
                    c=table["agreement"], cmap="RdYlGn", vmin=0, vmax=1, edgecolors="k", linewidths=0.5)
    for _, r in table.head(5).iterrows():
        ax.annotate(f"#{r['rank']} {r['dominant_classes'].split(',')[0]}", (r["coverage_median"], r["mean_deviation"]),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axhline(0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("coverage: median distance to nearest distillation input (teacher features)")
    ax.set_ylabel("mean phi(p_student) - phi(p_teacher), teacher's top class")
    ax.set_title("regions (k-means on teacher features); lower = student underfits")
    fig.colorbar(sc, label="top-1 agreement")
    fig.tight_layout()
    save_figure(fig, path)
