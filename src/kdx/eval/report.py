"""Plain-text tables of results, for the terminal and the README."""
from __future__ import annotations

from pathlib import Path

from kdx.io import reading
from kdx.rundir import METRICS, read_metrics, redo


def _pct(v):
    return "  -  " if v is None else f"{100 * v:5.1f}"


def anchor_note(teacher: dict) -> str:
    """For text: the teacher's test accuracy beside the TF-IDF + logistic-regression anchor's (same split)."""
    a = teacher.get("anchor_test_acc")
    if a is None:
        return ""
    t = teacher.get("test_acc")
    return (f"\nteacher test acc {_pct(t).strip()}%" if t is not None else "\n") + f"  TF-IDF+LR anchor test acc {_pct(a).strip()}%"


def members_note(metrics: dict) -> str:
    """An ensemble teacher: its members and their test accuracies (metrics.json's teacher.members)."""
    members = metrics["teacher"].get("members")
    if not members:
        return ""
    return "\nensemble of " + ", ".join(f"{m['arch']} (test acc {_pct(m['test_acc']).strip()}%)" for m in members)


def eval_table(metrics: dict, distributions: list[str] | None = None) -> str:
    ev = metrics["eval"]
    names = distributions or list(ev)
    lines = [f"source {metrics['source']}  teacher {metrics['teacher']['arch']} "
             f"({metrics['teacher']['params']:,} params)  student {metrics['student']['arch']} "
             f"({metrics['student']['params']:,} params)  {metrics['train']['samples_per_s']:,.0f} samples/s"
             + anchor_note(metrics["teacher"]) + members_note(metrics),
             f"{'distribution':34s} {'n':>6s} {'t_acc':>6s} {'s_acc':>6s} {'agree':>6s} {'KL':>7s} {'diff CI':>15s} {'McN p':>7s}"]
    for name in names:
        m = ev[name]
        ci = m["acc_diff_ci"]
        ci_s = "" if ci is None else f"[{100 * ci[0]:+.1f},{100 * ci[1]:+.1f}]"
        p = "" if m["mcnemar_p"] is None else f"{m['mcnemar_p']:.3g}"
        members = "  members " + " ".join(_pct(a).strip() for a in m["member_acc"]) if m.get("member_acc") else ""
        lines.append(f"{name:34s} {m['n']:6d} {_pct(m['teacher_acc']):>6s} {_pct(m['student_acc']):>6s} "
                     f"{_pct(m['agreement']):>6s} {m['kl_teacher_student']:7.3f} {ci_s:>15s} {p:>7s}{members}")
    return "\n".join(lines)


def compare_table(run_dirs, distributions: list[str]) -> str:
    """Rows: runs; columns: per distribution student acc / agreement / KL(t||s)."""
    runs = [(Path(d), read_metrics(d)) for d in run_dirs]
    head = f"| {'run':28s} | {'source':30s} | " + " | ".join(f"{d} acc / agree / KL" for d in distributions) + " |"
    lines = [head, "|" + "---|" * (2 + len(distributions))]
    if runs:
        t = runs[0][1]["eval"]
        with reading(runs[0][0] / METRICS, redo(runs[0][0])):
            lines.insert(0, "teacher: " + ", ".join(f"{d} acc {_pct(t[d]['teacher_acc']).strip()}" for d in distributions
                                                   if d in t and t[d]["teacher_acc"] is not None))
    for d, m in runs:
        with reading(d / METRICS, redo(d)):  # a field missing or mistyped in a damaged metrics.json
            lines.append(_compare_row(d, m, distributions))
    return "\n".join(lines)


def _compare_row(d: Path, m: dict, distributions: list[str]) -> str:
    """One run's row: its source and, per distribution, student acc / agreement / KL(t||s)."""
    src = ", ".join(f"{k}={v}" for k, v in m["source"].items() if k != "name" and v not in ({}, None))
    cells = []
    for name in distributions:
        e = m["eval"].get(name)
        cells.append("n/a" if e is None else
                     f"{_pct(e['student_acc']).strip()} / {_pct(e['agreement']).strip()} / {e['kl_teacher_student']:.3f}")
    return f"| {d.name:28s} | {m['source']['name'] + (' (' + src + ')' if src else ''):30s} | " + " | ".join(cells) + " |"
