"""A study's summary.csv, summary.md and a self-contained report.html (figures inlined as PNG)."""
from __future__ import annotations

import base64
import csv
import html
import io
from collections import defaultdict
from pathlib import Path

import numpy as np

from kdx.eval.statistics import mean_interval
from kdx.io import figure_png, pyplot, write_text
from kdx.study.folders import Run
from kdx.study.plan import PlannedRun

# the eval fields of metrics.json that summary.csv carries, per run and distribution
METRIC_KEYS = ["n", "teacher_acc", "student_acc", "agreement", "kl_teacher_student", "tv", "teacher_nll", "student_nll",
               "teacher_ece", "student_ece", "acc_diff", "acc_diff_ci", "mcnemar_p"]
# and those of causal-LM runs (kdx.eval.lm; per counted token), with their costs in tokens
LM_METRIC_KEYS = ["kl_student_teacher", "student_ppl", "distinct_2"]
LM_COST_KEYS = ["input_tokens", "trained_tokens", "teacher_generated_tokens", "student_generated_tokens"]
ALPHA = 0.05


def beats_loses(evals: list[dict]) -> tuple[int, int]:
    """Seeds whose student beats / loses to its teacher: accuracies differ with exact McNemar p < ALPHA on the
    same inputs (`evals`: one eval entry of metrics.json per seed, or summary rows carrying its fields). LM
    rows carry no McNemar test (positions of a sequence are not independent): there the 95% interval of the
    next-token accuracy difference, resampling whole sequences, excludes 0."""
    def differs(e, sign: int) -> bool:
        if e.get("mcnemar_p") is not None:
            return e["mcnemar_p"] < ALPHA and sign * e["acc_diff"] > 0
        lo, hi = e["acc_diff_ci"] if "acc_diff_ci" in e else (e["acc_diff_lo"], e["acc_diff_hi"])
        return lo is not None and (lo > 0 if sign > 0 else hi < 0)
    return sum(1 for e in evals if differs(e, 1)), sum(1 for e in evals if differs(e, -1))


def _slopes(run: Run) -> dict:
    """{distribution: slope} for the teacher's top-1 class, from the run's probe, if it was probed."""
    return {dist: d["teacher_top1"]["slope"] for dist, d in (run.deviation() or {}).items()
            if isinstance(d, dict) and "teacher_top1" in d}


def collect(runs: list[Run]) -> list[dict]:
    rows = []
    for r in runs:
        m = r.metrics
        slopes = _slopes(r)
        for dist, e in m["eval"].items():
            row = {"run": r.name, **{k: v for k, v in r.axes.items()}, "distribution": dist}
            for k in METRIC_KEYS:
                if k == "acc_diff_ci":
                    row["acc_diff_lo"], row["acc_diff_hi"] = e[k] if e[k] else (None, None)
                else:
                    row[k] = e[k]
            row["deviation_slope"] = slopes.get(dist)
            row["train_seconds"] = m["train"]["seconds"]
            row["anchor_test_acc"] = m["teacher"].get("anchor_test_acc")  # text: the TF-IDF + LR anchor
            cost = m["train"].get("accounting", {})  # runs written before kdx counted forwards lack it
            for k in ("teacher_queries", "teacher_forwards", "student_forwards"):
                row[k] = cost.get(k)
            if "tokens" in e:  # a causal-LM row (kdx.eval.lm): its per-token metrics and its costs in tokens
                row.update({k: e.get(k) for k in LM_METRIC_KEYS})
                row.update({k: cost.get("source", {}).get(k, 0) for k in LM_COST_KEYS})
            rows.append(row)
    return rows


def _group_key(row: dict, axes: list[str]) -> tuple:
    return tuple(row[a] for a in axes if a != "seed")


def fmt_interval(values, digits: int | None = None, percent: bool = True) -> str:
    """Mean [95% t-interval] over seeds (None values dropped; "-" if none), in percent or as is; `digits`
    decimals (default 1 in percent, 3 otherwise, 2 for a lone value)."""
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    m, lo, hi = mean_interval(v)
    s = 100 if percent else 1
    d = digits if digits is not None else (1 if percent else 3)
    if np.isnan(lo):
        return f"{s * m:.{d if digits is not None or percent else 2}f}"
    return f"{s * m:.{d}f} [{s * lo:.{d}f}, {s * hi:.{d}f}]"


def summary_blocks(study, rows: list[dict], axes: list[str]) -> list[tuple]:
    """The summary as blocks, ("h1" | "h2" | "p", text) or ("table", header, rows), rendered to both
    summary.md and report.html (never parsed back from markdown)."""
    groups = defaultdict(lambda: defaultdict(list))
    for row in rows:
        groups[_group_key(row, axes)][row["distribution"]].append(row)
    group_axes = [a for a in axes if a != "seed"]
    if "kl_student_teacher" in rows[0]:
        return lm_blocks(study, groups, group_axes)
    teachers = defaultdict(dict)  # a teacher per dataset where the study has a data axis
    for row in rows:
        teachers[row.get("data")][row["distribution"]] = row["teacher_acc"]
    anchor = next((row.get("anchor_test_acc") for row in rows if row.get("anchor_test_acc") is not None), None)
    blocks = [("h1", f"Study `{study.name}`"),
              ("p", f"Mean and 95% t-interval over seeds ({', '.join(map(str, study.seeds))}); last-step numbers. "
                    f"`beats`/`loses`: seeds where the student's accuracy differs from the teacher's with exact McNemar "
                    f"p < {ALPHA} on the same inputs. Teacher accuracy: "
                    + "; ".join((f"{data}: " if data is not None else "")
                                + ", ".join(f"{d} {100 * teacher[d]:.1f}%" for d in study.report_distributions
                                            if teacher.get(d) is not None) for data, teacher in teachers.items()) + "."
                    + (f" TF-IDF + logistic-regression anchor (text), same split: test {100 * anchor:.1f}%." if anchor is not None else ""))]
    missing = [d for d in study.report_distributions if not any(d in by_dist for by_dist in groups.values())]
    if missing:
        blocks.append(("p", f"Not evaluated by these runs (see `eval.distributions`): {', '.join(missing)}."))
    header = [*group_axes, "student acc %", "agreement %", "KL(t‖s)", "student − teacher (pp)", "McNemar p per seed",
              "beats / loses", "slope (top-1)"]
    for dist in (d for d in study.report_distributions if d not in missing):
        table = []
        for key, by_dist in groups.items():
            rs = by_dist.get(dist)
            if not rs:
                continue
            labeled = rs[0]["student_acc"] is not None
            ps = [r["mcnemar_p"] for r in rs] if labeled else []
            beats, loses = beats_loses(rs) if labeled else (0, 0)
            table.append([*(str(k) for k in key), fmt_interval([r["student_acc"] for r in rs]),
                          fmt_interval([r["agreement"] for r in rs]), fmt_interval([r["kl_teacher_student"] for r in rs], percent=False),
                          fmt_interval([r["acc_diff"] for r in rs]), ", ".join(f"{p:.2g}" for p in ps) or "-",
                          f"{beats} / {loses}" if labeled else "-",
                          fmt_interval([r["deviation_slope"] for r in rs], percent=False)])
        blocks += [("h2", dist), ("table", header, table)]
    return blocks


def lm_blocks(study, groups: dict, group_axes: list[str]) -> list[tuple]:
    """The summary of causal-LM runs: per held-out distribution the per-token fidelity, and one table of
    what each run cost in tokens (equal budgets are set in tokens trained; the costs differ by source)."""
    first = next(iter(groups.values()))
    teacher = {d: rs[0]["teacher_nll"] for d, rs in first.items()}
    blocks = [("h1", f"Study `{study.name}`"),
              ("p", f"Mean and 95% t-interval over seeds ({', '.join(map(str, study.seeds))}); last-step numbers, per "
                    "counted token (a window's real next tokens; a sample's completion). `beats`/`loses`: seeds whose "
                    "student's next-token accuracy differs from the teacher's, the 95% interval (resampling whole "
                    "sequences) excluding 0. Teacher NLL per token: "
                    + ", ".join(f"{d} {teacher[d]:.2f}" for d in study.report_distributions
                                if d in teacher and d != "student_samples")
                    + "; on `student_samples` it is the teacher's NLL of each student's own completions (a quality "
                      "proxy: lower is better) and distinct-2 their diversity.")]
    fmt = lambda rs, k, **kw: fmt_interval([r[k] for r in rs], **kw)  # noqa: E731
    header = [*group_axes, "KL(t‖s)", "KL(s‖t)", "agreement %", "student NLL", "teacher NLL", "distinct-2",
              "student − teacher acc (pp)", "beats / loses", "slope (top-1)"]
    for dist in study.report_distributions:
        table = []
        for key, by_dist in groups.items():
            if rs := by_dist.get(dist):
                beats, loses = beats_loses(rs)
                table.append([*map(str, key), fmt(rs, "kl_teacher_student", percent=False),
                              fmt(rs, "kl_student_teacher", percent=False), fmt(rs, "agreement"),
                              fmt(rs, "student_nll", percent=False), fmt(rs, "teacher_nll", percent=False),
                              fmt(rs, "distinct_2", percent=False), fmt(rs, "acc_diff"), f"{beats} / {loses}",
                              fmt(rs, "deviation_slope", percent=False)])
        if table:
            blocks += [("h2", dist), ("table", header, table)]
    cost = []
    for key, by_dist in groups.items():
        rs = next(iter(by_dist.values()))  # the run's costs, the same on every distribution's row
        mega = lambda k: fmt_interval([r[k] / 1e6 for r in rs], digits=3, percent=False)  # noqa: E731
        cost.append([*map(str, key), mega("trained_tokens"), mega("input_tokens"),
                     fmt_interval([r["teacher_queries"] for r in rs], digits=0, percent=False),
                     mega("teacher_generated_tokens"), mega("student_generated_tokens"),
                     fmt_interval([r["train_seconds"] for r in rs], digits=0, percent=False)])
    blocks += [("h2", "cost"),
               ("p", "Per run: tokens trained on (counted positions), tokens fed (the student's input, and the "
                     "teacher's where it runs each batch), teacher queries (sequences it scored during training; a "
                     "top-k cache scores the corpus once before), tokens generated by each model, training seconds."),
               ("table", [*group_axes, "trained Mtok", "fed Mtok", "teacher queries", "teacher gen Mtok",
                          "student gen Mtok", "train s"], cost)]
    return blocks


def to_markdown(blocks: list[tuple]) -> str:
    lines = []
    for kind, *content in blocks:
        if kind == "table":
            header, table = content
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(row) + " |" for row in table), ""]
        else:
            lines += [{"h1": "# ", "h2": "## ", "p": ""}[kind] + content[0], ""]
    return "\n".join(lines) + "\n"


def to_html(blocks: list[tuple]) -> str:
    out = []
    for kind, *content in blocks:
        if kind == "table":
            header, table = content
            cells = lambda row, tag: "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)  # noqa: E731
            out.append("<table><tr>" + cells(header, "th") + "</tr>"
                       + "".join("<tr>" + cells(row, "td") + "</tr>" for row in table) + "</table>")
        else:
            out.append(f"<{kind}>{html.escape(content[0])}</{kind}>")
    return "\n".join(out)


def _img(png: bytes, alt: str = "figure") -> str:
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def figures(study, rows: list[dict], axes: list[str], runs: list[Run]) -> list[tuple[str, str]]:
    plt = pyplot()

    figs = []
    groups = sorted({_group_key(r, axes) for r in rows}, key=str)
    names = [" / ".join(map(str, g)) for g in groups]
    dists = study.report_distributions

    def cell(g, d, field):
        v = [r[field] for r in rows if _group_key(r, axes) == g and r["distribution"] == d and r[field] is not None]
        return mean_interval(v) if v else (np.nan, np.nan, np.nan)

    agree = np.array([[cell(g, d, "agreement")[0] for d in dists] for g in groups])
    fig, ax = plt.subplots(figsize=(1.6 * len(dists) + 3, 0.5 * len(groups) + 1.5))
    im = ax.imshow(agree, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(dists)), dists, rotation=30, ha="right")
    ax.set_yticks(range(len(groups)), names)
    for i in range(len(groups)):
        for j in range(len(dists)):
            if not np.isnan(agree[i, j]):
                ax.text(j, i, f"{100 * agree[i, j]:.0f}", ha="center", va="center",
                        color="white" if agree[i, j] < 0.6 else "black", fontsize=8)
    fig.colorbar(im, label="top-1 agreement (mean over seeds)")
    ax.set_title("Fidelity: agreement with the teacher, by source and held-out distribution")
    figs.append(("Fidelity heatmap", _img(figure_png(fig, bbox_inches="tight"))))

    test = [cell(g, "test", "student_acc") for g in groups]
    teacher_acc = next((r["teacher_acc"] for r in rows if r["distribution"] == "test"), None)
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(groups) + 2), 3.5))
    means = np.array([t[0] for t in test])
    err = np.array([[m - t[1], t[2] - m] if not np.isnan(t[1]) else [0, 0] for m, t in zip(means, test)]).T
    ax.bar(range(len(groups)), 100 * means, yerr=100 * err, capsize=4, color="tab:blue")
    if teacher_acc is not None:
        ax.axhline(100 * teacher_acc, color="tab:red", ls="--", label=f"teacher {100 * teacher_acc:.1f}%")
        anchor = next((r.get("anchor_test_acc") for r in rows if r.get("anchor_test_acc") is not None), None)
        if anchor is not None:
            ax.axhline(100 * anchor, color="tab:gray", ls=":", label=f"TF-IDF+LR anchor {100 * anchor:.1f}%")
        ax.legend()
    ax.set_xticks(range(len(groups)), names, rotation=30, ha="right")
    ax.set_ylabel("student test accuracy % (95% CI over seeds)")
    figs.append(("Test accuracy against the teacher", _img(figure_png(fig, bbox_inches="tight"))))

    if "switch_at" in axes:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        others = sorted({tuple(r[a] for a in axes if a not in ("seed", "switch_at")) for r in rows}, key=str)
        for o in others:
            xs = sorted({r["switch_at"] for r in rows if tuple(r[a] for a in axes if a not in ("seed", "switch_at")) == o
                         and r["switch_at"] is not None}, key=float)
            stats = [mean_interval([r["student_acc"] for r in rows if r["distribution"] == "test" and r["switch_at"] == x
                                    and tuple(r[a] for a in axes if a not in ("seed", "switch_at")) == o]) for x in xs]
            m = np.array([s[0] for s in stats])
            ax.errorbar([float(x) for x in xs], 100 * m, yerr=100 * np.array([[s[0] - s[1], s[2] - s[0]] for s in stats]).T,
                        capsize=3, marker="o", label=" / ".join(map(str, o)))
        ax.set_xlabel("switch point (fraction of training with one-hot loss first)")
        ax.set_ylabel("test accuracy %")
        ax.legend(fontsize=7)
        figs.append(("Late distillation: final accuracy against the switch point", _img(figure_png(fig, bbox_inches="tight"))))

    by_name = {r.name: r for r in runs}
    for g, name in zip(groups, names):  # the probes' deviation scatter of each group's first seed
        first = next(r["run"] for r in rows if _group_key(r, axes) == g)
        png = by_name[first].deviation_plot("test")
        if png.exists():
            figs.append((f"Deviation on test: {name} ({first})", _img(png.read_bytes(), "deviation")))
    return figs


def write_reports(study, planned: list[PlannedRun], out: Path) -> None:
    """summary.csv, summary.md and report.html in the study folder `out`, from its finished runs."""
    runs = [Run.read(p, out) for p in planned]
    rows = collect(runs)
    axes = list(runs[0].axes)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "summary.csv", buf.getvalue())
    blocks = summary_blocks(study, rows, axes)
    write_text(out / "summary.md", to_markdown(blocks))
    body = to_html(blocks) + "\n".join(f"<h2>{html.escape(t)}</h2>{img}" for t, img in figures(study, rows, axes, runs))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>kdx study " + html.escape(study.name) + "</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#eee}img{max-width:100%}</style>"
            "</head><body>" + body + "</body></html>")
    write_text(out / "report.html", page)
