"""The findings page's sections, each from the studies of its role (configs/findings.yaml): the tables and
numbers its part of templates/findings.md.j2 shows, and its verdicts on the seed paper's claims."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from kdx.data import load_dataset
from kdx.errors import KdxError
from kdx.eval.statistics import mean_interval
from kdx.rundir import load_run
from kdx.study import measure
from kdx.study.figures import copy_figure, curve_figure, difficulty_figure, noise_share_figure
from kdx.study.folders import KD, ONEHOT, Run, Study, curves
from kdx.study.report import ALPHA, beats_loses, fmt_interval, to_markdown
from kdx.theory.eigen import EIGEN_JSON, EIGEN_PNG

CURVES_PNG, NOISE_PNG, DIFFICULTY_PNG = "curves.png", "noise_fraction.png", "difficulty.png"  # the page's own figures
CLASS_CHOICES = ("teacher_top1", "ground_truth")  # the class a deviation fit takes p on


@dataclasses.dataclass
class Section:
    """A section of the page: what its part of the template shows, and its verdict on each claim of the
    seed paper it tests ({claim: {dataset or setting: verdict}})."""

    shows: dict
    verdicts: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)


# -- statistics ------------------------------------------------------------------------------------

def paired(a: list[Run], b: list[Run], dist: str = "test") -> np.ndarray:
    """Per-seed differences a - b in accuracy (runs matched by seed)."""
    by_seed = {r.axes["seed"]: r.acc(dist) for r in b}
    return np.array([r.acc(dist) - by_seed[r.axes["seed"]] for r in a])


def interval_sign(values) -> int:
    """+1 if the t-interval over seeds lies above 0, -1 below, 0 if it contains 0."""
    m, lo, hi = mean_interval(values)
    return 0 if np.isnan(lo) or lo <= 0 <= hi else (1 if lo > 0 else -1)


def fraction_recovered(part: np.ndarray, total: np.ndarray, *, resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float, float]:
    """mean(part) / mean(total) with a percentile bootstrap over seeds (resampled jointly)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(part), (resamples, len(part)))
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = part[idx].mean(1) / total[idx].mean(1)
    boots = boots[np.isfinite(boots)]
    return float(part.mean() / total.mean()), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def accs(runs: list[Run], dist: str = "test") -> list[float]:
    return [r.acc(dist) for r in runs]


def table(header: list[str], rows: list[list]) -> str:
    return to_markdown([("table", header, [[str(c) for c in row] for row in rows])])


# -- 1 and 2: distillation gain at convergence, late distillation -----------------------------------

def gain(selfs: dict[str, Study], budgets: dict[str, Study], longer: dict[str, Study], fig_dir: Path) -> Section:
    """The gain of distillation over one-hot per dataset; where a budget study exists, the budget at which
    it appears, else the learning curves' reading of it; the convergence checks at a larger budget."""
    rows, verdicts = [], {}
    for dataset, s in selfs.items():
        kd, oh = s.select(switch_at=KD), s.select(switch_at=ONEHOT)
        g = paired(kd, oh)
        beats, loses = beats_loses([r.metrics["eval"]["test"] for r in kd])
        rows.append([dataset, f"{kd[0].metrics['student']['params']:,}",
                     f"{s.runs[0].planned.cfg.distill.samples / s.train_size:.0f}",
                     f"{100 * kd[0].metrics['eval']['test']['teacher_acc']:.1f}", fmt_interval(accs(oh)),
                     fmt_interval(accs(kd)), fmt_interval(g, 2), f"{beats} / {loses} of {len(kd)} seeds (McNemar p < {ALPHA})",
                     s.command(kd[0])])
        verdicts[dataset] = {1: "**reproduced**", -1: "**not reproduced** (distillation loses)",
                             0: "**not reproduced** (no gain resolved: the interval over seeds contains 0)"}[interval_sign(g)]
    curve_figure(selfs, fig_dir / CURVES_PNG)
    onsets = [_budget_sweep(dataset, budgets[dataset]) if dataset in budgets else _onset_from_curves(dataset, s)
              for dataset, s in selfs.items()]
    checks = [_longer_budget(dataset, s, selfs[dataset]) for dataset, s in longer.items()]
    return Section({"table": table(["dataset", "params (teacher = student)", "epochs", "teacher test %", "one-hot test %",
                                    "distilled test %", "gain (pp, paired by seed)",
                                    "distilled beats / loses to its teacher", "command"], rows),
                    "figure": CURVES_PNG, "onsets": onsets, "checks": checks}, {"gain": verdicts})


def _budget_sweep(dataset: str, b: Study) -> dict:
    """Runs trained to the end of each budget: the first budget whose gain lies above 0."""
    rows, first = [], None
    for n in b.config.samples:
        kd, oh = b.select(samples=n, switch_at=KD), b.select(samples=n, switch_at=ONEHOT)
        g = paired(kd, oh)
        if first is None and interval_sign(g) > 0:
            first = n
        rows.append([f"{n:,} ({n / b.train_size:.0f} epochs)", fmt_interval(accs(oh)), fmt_interval(accs(kd)),
                     fmt_interval(g, 2), b.command(kd[0]).replace("distill.switch_at=0.0", "distill.switch_at=W")])
    return {"kind": "sweep", "dataset": dataset, "name": b.name, "timing": b.timing(), "seeds": len(b.config.seeds),
            "first": first, "table": table(["budget (samples)", "one-hot test %", "distilled test %", "gain (pp)",
                                            "command"], rows)}


def _onset_from_curves(dataset: str, s: Study) -> dict:
    """Distilled − one-hot at each point of the learning curves (one cosine schedule per run)."""
    x, kd = curves(s.select(switch_at=KD))
    _, oh = curves(s.select(switch_at=ONEHOT))
    signs = [interval_sign(kd[:, i] - oh[:, i]) for i in range(len(x))]
    pos = [i for i, v in enumerate(signs) if v > 0]
    quarter = len(x) * 3 // 4 - 1  # the point that starts the last quarter of training
    return {"kind": "curves", "dataset": dataset, "points": len(x), "below": sum(1 for v in signs if v < 0),
            "above": len(pos), "first_epoch": x[pos[0]] / s.train_size if pos else None,
            "last": kd[:, -1] - oh[:, -1], "onehot_late": oh[:, -1] - oh[:, quarter], "kd_late": kd[:, -1] - kd[:, quarter]}


def _longer_budget(dataset: str, longer: Study, base: Study) -> dict:
    """The convergence check: the same seeds at a larger budget against the base study's runs."""
    rows = []
    for sw, label in ((ONEHOT, "one-hot"), (KD, "distilled")):
        for r in longer.select(switch_at=sw):
            b = next(x for x in base.select(switch_at=sw) if x.axes["seed"] == r.axes["seed"])
            n, n0, size = r.planned.cfg.distill.samples, b.planned.cfg.distill.samples, base.train_size
            rows.append([label, r.axes["seed"], f"{100 * b.acc():.2f} ({n0 / size:.0f} epochs)",
                         f"{100 * r.acc():.2f} ({n / size:.0f} epochs)", f"{100 * (r.acc() - b.acc()):+.2f}",
                         longer.command(r, seeds=False)])
    return {"dataset": dataset, "name": longer.name, "timing": longer.timing(),
            "table": table(["student", "seed", "test % at the study's budget", "test % at the larger budget",
                            "change (pp)", "command"], rows)}


def late(selfs: dict[str, Study]) -> Section:
    """switch_at f against one-hot throughout: the fraction of the distillation gain each recovers."""
    rows, verdicts = [], {}
    for dataset, s in selfs.items():
        oh = s.select(switch_at=ONEHOT)
        total = paired(s.select(switch_at=KD), oh)
        for sw in s.config.switch_at:
            runs = s.select(switch_at=sw)
            part = paired(runs, oh)
            frac, lo, hi = fraction_recovered(part, total)
            rows.append([dataset, sw, fmt_interval(accs(runs)), fmt_interval(part, 2),
                         "-" if sw in (KD, ONEHOT) else f"{frac:.2f} [{lo:.2f}, {hi:.2f}]", s.command(runs[0])])
            if sw == 0.5:
                verdicts[dataset] = _late_verdict(frac, lo, hi, interval_sign(total))
    return Section({"table": table(["dataset", "switch_at (one-hot share)", "test %", "gain over one-hot (pp)",
                                    "fraction of the distillation gain recovered [bootstrap 95%]", "command"], rows)},
                   {"late": verdicts})


def _late_verdict(frac: float, lo: float, hi: float, total_sign: int) -> str:
    if total_sign <= 0:
        return f"**not testable here** (no resolved distillation gain to recover; switch_at 0.5 ratio {frac:.2f} [{lo:.2f}, {hi:.2f}])"
    return (("**reproduced**" if lo > 0.5 else "**not reproduced**" if hi < 0.5 else "**not resolved**")
            + f" (switch_at 0.5 recovers {frac:.2f} [{lo:.2f}, {hi:.2f}] of the gain)")


# -- 3: deviation slope ------------------------------------------------------------------------------

def slope(selfs: dict[str, Study], temperatures: dict[str, Study], fig_dir: Path) -> Section:
    """The deviation slope of distilled and one-hot students per input set and class choice; the
    temperature control beside the self study of its dataset."""
    rows, fits_of = [], {}
    for dataset, s in selfs.items():
        for label, sw in (("distilled", KD), ("one-hot (control)", ONEHOT)):
            devs = [r.deviation() for r in s.select(switch_at=sw)]
            for dist in s.config.probe_on:
                for cls in CLASS_CHOICES:
                    fits = [d[dist][cls] for d in devs]
                    slopes = [f["slope"] for f in fits]
                    m, lo, hi = mean_interval(slopes)
                    verdict = "slope > 1" if lo > 1 else ("slope < 1" if hi < 1 else "not resolved")
                    rows.append([dataset, label, dist, cls,
                                 "; ".join(f"{f['slope']:.2f} [{f['slope_ci'][0]:.2f}, {f['slope_ci'][1]:.2f}]" for f in fits),
                                 fmt_interval(slopes, 2, percent=False),
                                 fmt_interval([f["deciles"][0]["mean_deviation"] for f in fits], 2, percent=False),
                                 fmt_interval([f["deciles"][-1]["mean_deviation"] for f in fits], 2, percent=False), verdict])
                    if sw == KD:
                        fits_of[(dataset, dist, cls)] = verdict
    figures = []  # the deviation plot of the first distilled seed, on test
    for dataset, s in selfs.items():
        if copy_figure(s.select(switch_at=KD)[0].deviation_plot("test"), fig_dir / f"deviation_{s.name}.png"):
            figures.append({"dataset": dataset, "file": f"deviation_{s.name}.png"})
    word = {"slope > 1": "**reproduced**", "slope < 1": "**reversed** (slope < 1)", "not resolved": "**not resolved**"}
    verdicts = {f"slope_{dist}": {d: f"top-1 {word[fits_of[(d, dist, 'teacher_top1')]]}, ground truth "
                                     f"{word[fits_of[(d, dist, 'ground_truth')]]}" for d in selfs}
                for dist in ("test", "train_subset")}
    return Section({"table": table(["dataset", "student", "inputs", "class p is taken on",
                                    "slope per seed [bootstrap 95% over inputs]", "slope over seeds [t 95%]",
                                    "lowest-decile mean y − x", "highest-decile mean y − x", "verdict"], rows),
                    "figures": figures,
                    "controls": [_temperature_control(dataset, t, selfs[dataset]) for dataset, t in temperatures.items()]},
                   verdicts)


def _temperature_control(dataset: str, t: Study, default: Study) -> dict:
    """The distilled students at each temperature of `t`, and the self study's at its own."""
    arms = [(t, x, t.select(temperature=x)) for x in t.config.temperature]
    arms.append((default, default.runs[0].planned.cfg.distill.temperature, default.select(switch_at=KD)))
    rows = [[temp, fmt_interval(accs(runs)),
             *(fmt_interval([r.deviation()[dist]["teacher_top1"]["slope"] for r in runs], 2, percent=False)
               for dist in t.config.probe_on), study.command(runs[0])] for study, temp, runs in arms]
    return {"dataset": dataset, "name": t.name, "seeds": len(t.config.seeds),
            "table": table(["temperature", "test %", *(f"slope, {d}" for d in t.config.probe_on), "command"], rows)}


# -- 4: the train+uniform puzzle -------------------------------------------------------------------

def puzzle(studies: dict[str, Study], fig_dir: Path) -> Section:
    """Per dataset: the teacher's outputs on uniform noise, the students by budget and noise share, the
    real-sample control; and the facts the seed questions and the explanation read (`datasets`)."""
    teacher_rows, rows, panels, datasets = [], [], [], []
    for dataset, s in studies.items():
        first = load_run(s.runs[0].dir)  # the teacher (shared by the study's runs), its data and held-out sets
        data = first.data
        t_noise, t_test = measure.teacher_outputs(first)
        order = np.argsort(-t_noise["top1_share"])
        teacher_rows.append([dataset, f"{t_test['entropy']:.3f}", f"{t_test['confidence']:.3f}", f"{t_noise['entropy']:.3f}",
                             f"{t_noise['confidence']:.3f}",
                             ", ".join(f"{data.classes[i]} {100 * t_noise['top1_share'][i]:.0f}%" for i in order[:3]),
                             f"{int((t_noise['top1_share'] > 0).sum())} of {len(data.classes)}"])
        gauss = [d for d in s.config.report_distributions if d.startswith("gaussian_noise")][0]
        by, panel = {}, {"dataset": dataset, "seeds": len(s.config.seeds), "budgets": {},
                         "teacher_acc": first.metrics["eval"]["test"]["teacher_acc"]}
        shares = [float(src["label"].removeprefix("noise")) for src in s.config.sources]
        for budget in s.config.samples:
            for src, fr in zip(s.config.sources, shares):
                runs = s.select(source=src["label"], samples=budget)
                conf = [measure.student_confidence(r, data)["confidence"] for r in runs]
                e = [r.metrics["eval"] for r in runs]
                beats, loses = beats_loses([x[gauss] for x in e])
                rows.append([dataset, f"{budget:,}", fr, fmt_interval(accs(runs)), fmt_interval(accs(runs, gauss)),
                             fmt_interval([x[gauss]["acc_diff"] for x in e], 1), f"{beats} / {loses}",
                             fmt_interval(conf, 3, percent=False),
                             fmt_interval([x["test"]["student_ece"] for x in e], 3, percent=False),
                             fmt_interval([x["test"]["student_nll"] for x in e], 3, percent=False),
                             fmt_interval([x["uniform_noise"]["agreement"] for x in e], 2, percent=False),
                             s.command(runs[0])])
                recal = ([measure.recalibrated_acc(r, data) for r in runs] if budget == s.config.samples[-1]
                         and fr in (0.0, 0.5) else None)
                by[(budget, fr)] = {"acc": accs(runs), "conf": conf, "recalibrated": recal, "gauss": accs(runs, gauss),
                                    "sd": float(np.std(accs(runs), ddof=1))}
            panel["budgets"][budget] = (shares, [mean_interval(by[(budget, fr)]["acc"]) for fr in shares])
        panels.append(panel)
        datasets.append(_puzzle_facts(dataset, by, t_noise, t_test))
    noise_share_figure(panels, fig_dir / NOISE_PNG)
    control = [row for f in datasets for row in f["control"]]
    return Section({"noise_n": first.cfg.eval.n, "datasets": datasets, "figure": NOISE_PNG,
                    "timings": [{"name": s.name, "timing": s.timing()} for s in studies.values()],
                    "teacher_table": table(["dataset", "test: entropy", "test: confidence", "uniform noise: entropy",
                                            "uniform noise: confidence", "top classes on noise", "classes named on noise"],
                                           teacher_rows),
                    "students_table": table(["dataset", "budget", "noise share", "test %", "gaussian-noise %",
                                             "student − teacher, gaussian (pp)", "beats / loses teacher on gaussian",
                                             "test confidence", "test ECE", "test NLL", "agreement on uniform noise",
                                             "command"], rows),
                    "control_table": table(["dataset", "mix", "train only, same train inputs", "test: mix − train only (pp)",
                                            "gaussian-noise: mix − train only (pp)"], control) if control else None})


def _puzzle_facts(dataset: str, by: dict, t_noise: dict, t_test: dict) -> dict:
    """One dataset's students by (budget, share), read per budget against train only (share 0)."""
    budgets, shares = sorted({b for b, _ in by}), sorted({fr for _, fr in by})
    per_budget = []
    for b in budgets:
        means = [np.mean(by[(b, fr)]["acc"]) for fr in shares]
        best = shares[int(np.argmax(means))]
        mix, train = by[(b, 0.5)], by[(b, 0.0)]
        per_budget.append({"budget": b, "best": best, "best_acc": by[(b, best)]["acc"], "train": train, "mix": mix,
                           "mix_change": np.mean(mix["acc"]) - np.mean(train["acc"]),
                           "mix_vs_train": np.subtract(mix["acc"], train["acc"]),
                           "mix_vs_train_gauss": np.subtract(mix["gauss"], train["gauss"])})
    control = []  # a mix at budget B against train only with its B x (1 - share) train inputs
    for (b, fr), v in sorted(by.items()):
        real = round(b * (1 - fr))
        if fr > 0 and (real, 0.0) in by:
            control.append([dataset, f"{b:,} with share {fr}", f"{real:,} train only",
                            fmt_interval(np.array(v["acc"]) - np.array(by[(real, 0.0)]["acc"]), 1),
                            fmt_interval(np.array(v["gauss"]) - np.array(by[(real, 0.0)]["gauss"]), 1)])
    top = budgets[-1]
    return {"dataset": dataset, "budgets": per_budget, "top": top, "control": control,
            "top_conf": [(fr, by[(top, fr)]["conf"]) for fr in shares], "top_train": by[(top, 0.0)], "top_mix": by[(top, 0.5)],
            "teacher_noise": t_noise, "teacher_test": t_test, "noise_top_share": t_noise["top1_share"].max(),
            "noise_classes": int((t_noise["top1_share"] > 0.01).sum())}


# -- 5: eigenspace theory --------------------------------------------------------------------------

def eigen(eigen_dir: Path, seeds: int, fig_dir: Path) -> Section:
    """The linear simulation's progress per direction against Theorem 4.1's closed form, per seed."""
    path = eigen_dir / EIGEN_JSON
    if not path.exists():
        raise KdxError(f"findings: {path} is missing; run `kdx probe eigen --out {eigen_dir} --seeds {seeds}`")
    rows, ratio_gaps, lows = [], [], []
    for r in json.loads(path.read_text())["runs"]:
        p, t = r["progress"], r["theory"]
        m = max(1, int(round(r["config"]["share"] * r["config"]["dim"])))
        # the closed form is noise-free: per-input label noise moves the least-squares target off w* (mostly
        # along the low directions, a little along every one), so progress is a_k(t) times the target's own
        # progress; in the distilled / one-hot ratio that factor cancels
        top_gap = max(float(np.max(np.abs(np.array(p[k][:m]) - np.array(t[k][:m])))) for k in ("teacher", "onehot", "distilled"))
        all_gap = max(float(np.max(np.abs(np.array(p[k]) - np.array(t[k])))) for k in ("teacher", "onehot", "distilled"))
        ratio_gap = float(np.max(np.abs(np.array(p["distilled"]) / np.array(p["onehot"])
                                        - np.array(t["distilled"]) / np.array(t["onehot"]))))
        low, err = r["low_progress"], r["test_error"]
        ratio_gaps.append(ratio_gap)
        lows.append(low["distilled"] - low["onehot"])
        rows.append([r["config"]["seed"], r["teacher_step"], f"{r['steps']['onehot']} / {r['steps']['distilled']}",
                     f"{low['onehot']:.4f}", f"{low['distilled']:.4f}", f"{ratio_gap:.1e}", f"{top_gap:.1e}",
                     f"{all_gap:.2f}", f"{err['onehot_matched']:.4f} / {err['distilled_matched']:.4f}"])
    copy_figure(eigen_dir / EIGEN_PNG, fig_dir / EIGEN_PNG)
    low_less = sum(1 for v in lows if v < 0)
    return Section({"table": table(["seed", "teacher step T", "steps to matched top progress: one-hot / distilled",
                                    "low-direction progress, one-hot", "low-direction progress, distilled",
                                    "max gap to the closed form: distilled / one-hot ratio, every direction",
                                    "max gap: progress on the top directions",
                                    "max gap: progress, every direction (noise-free form)",
                                    "test error at matched progress: one-hot / distilled"], rows),
                    "figure": EIGEN_PNG, "seeds": seeds, "low_less": low_less, "n": len(lows), "ratio_gap": max(ratio_gaps)},
                   {"eigen": {"linear simulation": "**reproduced**" if low_less == len(lows) else "**not reproduced**"}})


# -- 6: the map: where the teacher is unsure ---------------------------------------------------------

def _word(values, above: float = 0.0) -> str:
    """Where the t-interval over seeds of `values` lies against `above`."""
    m, lo, hi = mean_interval(values)
    return "not resolved" if np.isnan(lo) or lo <= above <= hi else ("above" if lo > above else "below")


def _slopes(runs: list[Run], dist: str, cls: str, key: str | None = None) -> list[float]:
    """Each run's deviation slope on `dist`, class choice `cls`: least squares, or a robust estimator's."""
    fits = [r.deviation()[dist][cls] for r in runs]
    return [f["slope"] if key is None else f["robust"][key]["slope"] for f in fits]


def model_label(spec: dict) -> str:
    """A model spec in one line: its name and its scalar settings (`bert layers=2 hidden=128 pretrain`)."""
    args = [f"{k}={v}" if not isinstance(v, (dict, list)) else k for k, v in spec.items() if k != "name"]
    return " ".join([spec["name"], *args])


def _cell(dataset: str, s: Study, label: str) -> dict:
    """One cell of the map: the teacher, the gain, late distillation and the slopes of distilled and one-hot."""
    kd, oh, late = (s.select(data=label, switch_at=sw) for sw in (KD, ONEHOT, 0.5))
    spec = kd[0].planned.cfg.data
    test = kd[0].metrics["eval"]["test"]
    gain = paired(kd, oh)
    cell = {"dataset": dataset, "label": label, "train_size": spec.get("train_size") or len(load_dataset(spec).x_train),
            "label_noise": float(spec.get("label_noise", 0.0)), "teacher_acc": test["teacher_acc"],
            "teacher_confidence": test.get("teacher_confidence"), "seeds": len(kd),
            "onehot": accs(oh), "distilled": accs(kd), "gain": gain, "gain_word": _word(gain),
            "command": s.command(kd[0]), "slopes": {}}
    if late:
        # late's own gain over one-hot is shown in every cell that has late runs: it can be resolved where full
        # distillation's is not (Fashion-MNIST's noisy 5,000-image cells), and the fraction it recovers of
        # the full gain means something only where that gain is resolved
        late_gain = paired(late, oh)
        cell["late"] = {"acc": accs(late), "gain": late_gain, "gain_word": _word(late_gain),
                        "verdict": _late_verdict(*fraction_recovered(late_gain, gain), interval_sign(gain))}
    for dist in ("test", "train_subset"):
        for cls in CLASS_CHOICES:
            if kd[0].deviation()[dist][cls] is None:
                continue
            ls_kd, ls_oh = _slopes(kd, dist, cls), _slopes(oh, dist, cls)
            by_seed = {r.axes["seed"]: v for r, v in zip(oh, ls_oh)}
            excess = [v - by_seed[r.axes["seed"]] for r, v in zip(kd, ls_kd)]
            cell["slopes"][(dist, cls)] = {
                "distilled": ls_kd, "onehot": ls_oh, "excess": excess, "word": _word(ls_kd, 1.0),
                "excess_word": _word(excess), "orthogonal": _slopes(kd, dist, cls, "orthogonal"),
                "binned_medians": _slopes(kd, dist, cls, "binned_medians")}
    return cell


def _late_cell(c: dict) -> str:
    """The table's late-distillation column: its accuracy and paired gain over one-hot, and where the full
    distillation gain is resolved, the fraction of it that late distillation recovers."""
    if "late" not in c:
        return "-"
    shown = f"{fmt_interval(c['late']['acc'])}, vs one-hot {fmt_interval(c['late']['gain'], 2)} pp"
    return shown + (f"; {c['late']['verdict']}" if c["gain_word"] == "above" else "")


def difficulty(studies: dict[str, list[Study]], fig_dir: Path) -> Section:
    """Self-distillation over label noise x train size, a dataset's cells from one study or several: per cell
    the teacher's accuracy and confidence, the gain over one-hot, late distillation's gain over one-hot (and
    the share of the full gain it recovers where that gain is resolved), and the slope by every estimator with
    the one-hot student's slope as the baseline; the map as grids and a figure; a verdict per cell."""
    cells, shows = [], {"datasets": []}
    for dataset, several in studies.items():
        mine = [_cell(dataset, s, label) for s in several for label in dict.fromkeys(r.axes["data"] for r in s.runs)]
        cells += mine
        sizes = sorted({c["train_size"] for c in mine})
        noises = sorted({c["label_noise"] for c in mine})
        at = {(c["train_size"], c["label_noise"]): c for c in mine}

        def grid(value) -> str:
            return table(["label noise \\ train size", *(f"{n:,}" for n in sizes)],
                         [[f"{100 * q:.0f}%", *(value(at[(n, q)]) if (n, q) in at else "-" for n in sizes)] for q in noises])

        top1 = ("test", "teacher_top1")
        cfg = several[0].runs[0].planned.cfg
        teacher, student = cfg.teacher.model, cfg.student.model
        shows["datasets"].append({
            "dataset": dataset, "studies": [{"name": s.name, "timing": s.timing(), "seeds": len(s.config.seeds)}
                                            for s in several],
            "models": ("self-distillation: teacher and student are the same model, `" + model_label(student) + "`"
                       if teacher == student else f"distillation into another model: teacher `{model_label(teacher)}`, "
                       f"student `{model_label(student)}`"),
            "teacher_grid": grid(lambda c: f"{100 * c['teacher_acc']:.1f}% (conf. {c['teacher_confidence']:.2f})"),
            "gain_grid": grid(lambda c: fmt_interval(c["gain"], 2)),
            "slope_grid": grid(lambda c: fmt_interval(c["slopes"][top1]["distilled"], 2, percent=False)),
            "excess_grid": grid(lambda c: fmt_interval(c["slopes"][top1]["excess"], 2, percent=False)),
            "table": table(
                ["cell", "teacher test % (mean confidence)", "one-hot test %", "distilled test %", "gain (pp, paired)",
                 "late (switch_at 0.5)", "command"],
                [[c["label"], f"{100 * c['teacher_acc']:.1f} ({c['teacher_confidence']:.2f})", fmt_interval(c["onehot"]),
                  fmt_interval(c["distilled"]), fmt_interval(c["gain"], 2),
                  _late_cell(c), c["command"]] for c in mine]),
            "slope_table": table(
                ["cell", "inputs", "class p is taken on", "distilled slope (least squares)", "one-hot slope (baseline)",
                 "excess over one-hot (paired)", "binned medians", "orthogonal"],
                [[c["label"], dist, cls, fmt_interval(v["distilled"], 2, percent=False), fmt_interval(v["onehot"], 2, percent=False),
                  fmt_interval(v["excess"], 2, percent=False), fmt_interval(v["binned_medians"], 2, percent=False),
                  fmt_interval(v["orthogonal"], 2, percent=False)] for c in mine for (dist, cls), v in c["slopes"].items()])})
    shows["figure"] = DIFFICULTY_PNG
    difficulty_figure(cells, fig_dir / DIFFICULTY_PNG)
    shows["cells"] = [{**c, "gain_interval": fmt_interval(c["gain"], 2),
                       "late_interval": fmt_interval(c["late"]["gain"], 2) if "late" in c else "",
                       "late_word": c["late"]["gain_word"] if "late" in c else "",
                       "slope_interval": fmt_interval(c["slopes"][("test", "teacher_top1")]["distilled"], 2, percent=False),
                       "slope_word": c["slopes"][("test", "teacher_top1")]["word"],
                       "excess_word": c["slopes"][("test", "teacher_top1")]["excess_word"],
                       "train_slope_interval": fmt_interval(c["slopes"][("train_subset", "teacher_top1")]["distilled"], 2,
                                                            percent=False),
                       "train_slope_word": c["slopes"][("train_subset", "teacher_top1")]["word"],
                       "train_excess_word": c["slopes"][("train_subset", "teacher_top1")]["excess_word"]} for c in cells]
    name = lambda c: f"{c['dataset']} {c['label']}"  # noqa: E731
    shows["gain_cells"] = [name(c) for c in shows["cells"] if c["gain_word"] == "above"]
    shows["late_cells"] = [name(c) for c in shows["cells"] if c["late_word"] == "above"]
    shows["late_tried"] = sum("late" in c for c in cells)
    shows["slope_cells"] = [name(c) for c in shows["cells"] if c["slope_word"] == "above"]
    shows["train_slope_cells"] = [name(c) for c in shows["cells"] if c["train_slope_word"] == "above"]
    shows["excess_cells"] = [name(c) for c in shows["cells"] if c["excess_word"] == "above"]
    shows["verdict_word"] = {"above": "**reproduced**", "below": "**reversed**", "not resolved": "**not resolved**"}
    return Section(shows)  # its verdicts are the cells' words, in the template's own table


# -- 7: the slope asked of next tokens ---------------------------------------------------------------

def tokens(studies: dict[str, Study]) -> Section:
    """The token deviation slope (probes/tokens.py) of every source x loss of an LM study, over seeds, on each
    held-out set and class choice: least squares with its robust companions, and the excess over the
    one-hot-trained student (loss onehot: next-token cross-entropy on the corpus) of the same seed when the
    study has one. Verdicts on held-out corpus text, teacher top-1."""
    shows, verdicts = {"datasets": []}, {"tokens_slope": {}}
    word = {"above": "**reproduced** (slope > 1)", "below": "**not reproduced** (slope < 1)",
            "not resolved": "**not resolved**"}
    for dataset, s in studies.items():
        groups = {}
        for r in s.runs:
            groups.setdefault((r.axes["source"], r.planned.cfg.distill.loss), []).append(r)
        base = next((runs for (_, loss), runs in groups.items() if loss == "onehot"), None)
        sets = list(s.runs[0].deviation())
        rows = []
        for (source, loss), runs in groups.items():
            for dist in sets:
                for cls in CLASS_CHOICES:
                    ls = _slopes(runs, dist, cls)
                    excess = "-"
                    if base is not None and loss != "onehot":
                        by_seed = {r.axes["seed"]: v for r, v in zip(base, _slopes(base, dist, cls))}
                        excess = fmt_interval([v - by_seed[r.axes["seed"]] for r, v in zip(runs, ls)], 2, percent=False)
                    low = [r.deviation()[dist][cls]["deciles"][0]["mean_deviation"] for r in runs]
                    rows.append([source, loss, dist, cls, fmt_interval(ls, 2, percent=False),
                                 fmt_interval(_slopes(runs, dist, cls, "binned_medians"), 2, percent=False),
                                 fmt_interval(_slopes(runs, dist, cls, "orthogonal"), 2, percent=False), excess,
                                 fmt_interval(low, 2, percent=False), s.command(runs[0])])
                    if dist == sets[0] and cls == "teacher_top1":
                        verdicts["tokens_slope"][f"{dataset}, {source}, {loss}"] = (
                            f"{word[_word(ls, 1.0)]}: {fmt_interval(ls, 2, percent=False)}"
                            + (f", excess over one-hot {excess}" if excess != "-" else ""))
        shows["datasets"].append({
            "dataset": dataset, "name": s.name, "timing": s.timing(), "seeds": len(s.config.seeds), "sets": sets,
            "baseline": base is not None,
            "table": table(["source", "loss", "held-out set", "class p is taken on", "slope (least squares)",
                            "binned medians", "orthogonal", "excess over one-hot (paired)",
                            "least-confident decile mean y − x", "command"], rows)})
    return Section(shows, verdicts)
