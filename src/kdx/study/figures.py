"""The findings page's figures: the self-distillation learning curves, student accuracy by noise share, and
the probes' own plots copied beside the page."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from kdx.eval.statistics import mean_interval
from kdx.io import pyplot, save_figure
from kdx.study.folders import KD, ONEHOT, Study, curves

SWITCH_COLORS = ["tab:red", "tab:orange", "tab:olive", "tab:cyan", "tab:blue"]


def curve_figure(studies: dict[str, Study], path: Path) -> None:
    """One panel per dataset: mean test accuracy over seeds against epochs, one line per switch_at (95%
    band for distilled and one-hot throughout), the teacher dashed."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(studies), figsize=(6 * len(studies), 4))
    for ax, (dataset, s) in zip(axes, studies.items()):
        size = s.train_size
        for sw, color in zip(s.config.switch_at, SWITCH_COLORS):
            x, acc = curves(s.select(switch_at=sw))
            m = acc.mean(0)
            ax.plot(x / size, 100 * m, color=color, lw=1.5, label={KD: "distilled (switch_at 0)",
                                                                    ONEHOT: "one-hot (switch_at 1)"}.get(sw, f"switch_at {sw}"))
            if sw in (KD, ONEHOT) and len(acc) > 1:
                lo, hi = zip(*[mean_interval(acc[:, i])[1:] for i in range(acc.shape[1])])
                ax.fill_between(x / size, 100 * np.array(lo), 100 * np.array(hi), color=color, alpha=0.15)
        teacher = s.runs[0].metrics["eval"]["test"]["teacher_acc"]
        ax.axhline(100 * teacher, color="k", ls="--", lw=1, label=f"teacher {100 * teacher:.1f}%")
        top = max(100 * teacher, 100 * max(r.acc() for r in s.runs))
        ax.set_ylim(top - 8, top + 1)
        ax.set_xlabel("epochs seen")
        ax.set_ylabel("test accuracy % (mean over seeds; band: 95% CI)")
        ax.set_title(f"{dataset}: self-distillation, {len(s.config.seeds)} seeds", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def noise_share_figure(panels: list[dict], path: Path) -> None:
    """One panel per dataset ({dataset, seeds, teacher_acc, budgets: {budget: (shares, [mean_interval])}}):
    student test accuracy against the share of the budget from uniform noise, one line per budget."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4))
    for ax, panel in zip(axes, panels):
        for budget, (shares, accs) in panel["budgets"].items():
            m = np.array([a[0] for a in accs])
            err = np.array([[a[0] - a[1], a[2] - a[0]] for a in accs]).T
            ax.errorbar(shares, 100 * m, yerr=100 * err, marker="o", capsize=3, label=f"{budget:,} samples")
        ax.axhline(100 * panel["teacher_acc"], color="k", ls="--", lw=1, label="teacher")
        ax.set_xlabel("share of the budget from uniform noise")
        ax.set_ylabel("student test accuracy % (95% CI over seeds)")
        ax.set_title(f"{panel['dataset']} ({panel['seeds']} seeds)", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def copy_figure(src: Path, dst: Path) -> bool:
    """A probe's plot beside the page, if the probe made it."""
    if not src.exists():
        return False
    shutil.copyfile(src, dst)
    return True


def difficulty_figure(cells: list[dict], path: Path) -> None:
    """One row per dataset: the distillation gain (pp; hollow: late distillation's, where it ran) and the
    deviation slope on test (teacher top-1; filled: distilled, hollow: the one-hot baseline) against the
    teacher's test accuracy, one point per cell of label noise (marker) x train size (colour), 95%
    t-intervals over seeds."""
    plt = pyplot()
    datasets = list(dict.fromkeys(c["dataset"] for c in cells))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 4.2 * len(datasets)), squeeze=False)
    sizes = sorted({c["train_size"] for c in cells})
    colors = dict(zip(sizes, ["tab:red", "tab:orange", "tab:blue", "tab:green", "tab:purple"]))
    markers = dict(zip(sorted({c["label_noise"] for c in cells}), "osD^v"))

    def point(ax, x, values, c, filled=True, offset=0.0):
        m, lo, hi = mean_interval(values)
        err = None if np.isnan(lo) else [[m - lo], [hi - m]]
        ax.errorbar(x + offset, m, yerr=err, fmt=markers[c["label_noise"]], color=colors[c["train_size"]], capsize=3,
                    mfc=colors[c["train_size"]] if filled else "white", ms=7)

    for row, dataset in zip(axes, datasets):
        mine = [c for c in cells if c["dataset"] == dataset]
        for c in mine:
            x = 100 * c["teacher_acc"]
            point(row[0], x, 100 * np.asarray(c["gain"]), c)
            if "late" in c:
                point(row[0], x, 100 * np.asarray(c["late"]["gain"]), c, filled=False, offset=0.3)
            v = c["slopes"][("test", "teacher_top1")]
            point(row[1], x, v["distilled"], c)
            point(row[1], x, v["onehot"], c, filled=False, offset=0.3)
        row[0].axhline(0, color="k", lw=1)
        row[1].axhline(1, color="k", ls="--", lw=1)
        row[0].set_ylabel("gain: distilled − one-hot test accuracy (pp)")
        row[1].set_ylabel("deviation slope on test, teacher top-1")
        xs = [100 * c["teacher_acc"] for c in mine]
        for ax in row:
            ax.set_xlabel("teacher test accuracy %")
            ax.set_title(f"{dataset}: {mine[0]['seeds']} seeds a cell", fontsize=10)
            if max(xs) - min(xs) < 4:  # one teacher (or near): a few points either side, not a 0.3-point-wide axis
                ax.set_xlim(min(xs) - 2, max(xs) + 2.3)
        # the legend names this dataset's train sizes and noise levels only
        handles = [plt.Line2D([], [], color=colors[n], marker="o", ls="", label=f"{n:,} train inputs")
                   for n in sorted({c["train_size"] for c in mine})]
        handles += [plt.Line2D([], [], color="grey", marker=markers[q], ls="", label=f"{100 * q:.0f}% label noise")
                    for q in sorted({c["label_noise"] for c in mine})]
        hollow = lambda label: plt.Line2D([], [], color="grey", marker="o", mfc="white", ls="", label=label)  # noqa: E731
        row[0].legend(handles=[*handles, hollow("late distillation (switch_at 0.5) − one-hot")], fontsize=7)
        row[1].legend(handles=[*handles, hollow("one-hot student (baseline)")], fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
