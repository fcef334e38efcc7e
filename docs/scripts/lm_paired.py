"""docs/lm.md's tables from a finished `kdx study configs/studies/sources_lm.yaml` (its summary.csv):
per held-out distribution, each source's KL(t||s) and its difference from the corpus source with the same
loss (for a loss the corpus did not run with: from the same source with forward KL), paired by seed (mean
and 95% t-interval over seeds).

  python docs/scripts/lm_paired.py runs/studies/sources_lm/summary.csv
"""
from __future__ import annotations

import sys

import pandas as pd

from kdx.eval.statistics import mean_interval


def cell(values, digits: int = 3) -> str:
    m, lo, hi = mean_interval(list(values))
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def main(path: str, metric: str = "kl_teacher_student") -> None:
    df = pd.read_csv(path)
    dists = list(dict.fromkeys(df["distribution"]))
    order = list(dict.fromkeys(df["source"]))
    print(f"## {metric}: mean [95% CI] over seeds; below it, minus corpus with the same loss, paired by seed\n")
    print("| source | loss | " + " | ".join(dists) + " |")
    print("|---|---|" + "---|" * len(dists))
    for loss in sorted(df["loss"].unique()):
        for source in order:
            rows = df[(df.source == source) & (df.loss == loss)]
            if rows.empty:
                continue
            base_source, base_loss = ("corpus", loss) if ((df.source == "corpus") & (df.loss == loss)).any() \
                else (source, "forward_kl")
            cells, diffs = [], []
            for d in dists:
                r = rows[rows.distribution == d].set_index("seed")[metric]
                base = df[(df.source == base_source) & (df.loss == base_loss) & (df.distribution == d)]
                cells.append(cell(r))
                diffs.append(cell((r - base.set_index("seed")[metric]).dropna()))
            print(f"| {source} | {loss} | " + " | ".join(cells) + " |")
            if (source, loss) != (base_source, base_loss):
                print(f"| − {base_source} {base_loss} | | " + " | ".join(diffs) + " |")


if __name__ == "__main__":
    main(sys.argv[1], *(sys.argv[2:3]))
