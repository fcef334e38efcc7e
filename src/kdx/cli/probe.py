"""`kdx probe RUN [--on ...]` and `kdx probe eigen`: the `probe` command group of kdx.cli.

A click group parses its own arguments before the subcommand name, so an optional RUN argument on
the group would swallow `eigen`. Instead, a first argument that names no subcommand is taken as a
run directory: `kdx probe RUN` means `kdx probe run RUN` (which also works, e.g. for a run named eigen).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pandas as pd
import typer
from typer.core import TyperGroup

from kdx.probes import ProbeOptions, probe
from kdx.probes.probe import DEFAULT_ON
from kdx.rundir import DEVIATION, PROBES, REGIONS, SUMMARY

DEFAULTS = ProbeOptions()  # the options' one home: kdx.probes.ProbeOptions


class RunOrCommand(TyperGroup):
    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


probe_app = typer.Typer(cls=RunOrCommand, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                        help="Probe where a student deviates from its teacher: kdx probe RUN [--on test,...], "
                             "or kdx probe eigen.")


@probe_app.command("run")
def probe_run_cmd(run: Path = typer.Argument(..., help="a finished run directory (kdx run wrote it)"),
            on: Optional[str] = typer.Option(None, "--on", help="comma-separated held-out distributions "
                                             f"(default: {','.join(DEFAULT_ON)})"),
            regions: int = typer.Option(DEFAULTS.regions, "--regions", help="k of the k-means regions"),
            source_n: int = typer.Option(DEFAULTS.source_n, "--source-n",
                                         help="distillation inputs streamed for coverage"),
            map_: bool = typer.Option(DEFAULTS.map, "--map/--no-map", help="compute the UMAP map (about a minute)"),
            remap: bool = typer.Option(DEFAULTS.remap, "--remap",
                                       help="recompute map.parquet even if a matching one exists"),
            map_source_n: int = typer.Option(DEFAULTS.map_source_n, "--map-source-n",
                                             help="distillation inputs shown on the map"),
            map_epochs: Optional[int] = typer.Option(DEFAULTS.map_epochs, "--map-epochs",
                                                     help="UMAP epochs (default: UMAP's)"),
            neighbors: int = typer.Option(DEFAULTS.neighbors, "--neighbors",
                                          help="neighbour list length in map.parquet"),
            resamples: int = typer.Option(DEFAULTS.resamples, "--resamples",
                                          help="bootstrap resamples for slope intervals"),
            seed: int = typer.Option(DEFAULTS.seed, "--seed")):
    """Probe a finished run (same as `kdx probe RUN`): writes RUN/probes/."""
    opts = ProbeOptions(on=on.split(",") if on else None, regions=regions, source_n=source_n, map=map_, remap=remap,
                        map_source_n=map_source_n, map_epochs=map_epochs, neighbors=neighbors, resamples=resamples,
                        seed=seed)
    summary = probe(run, opts)
    print(report(run / PROBES))
    print(f"seconds: {summary['seconds']}")
    print(f"wrote {run / PROBES}")


def report(probes_dir: Path) -> str:
    """The headline numbers: slope with interval, lowest-decile deviation, the most underfit regions."""
    dev = json.loads((probes_dir / DEVIATION).read_text())
    lines = [f"{'distribution':16s} {'class':13s} {'n':>6s} {'slope [95% CI]':>22s} {'lowest decile dev [CI]':>26s}"]
    for name, fits in dev["distributions"].items():
        for choice, f in fits.items():
            if f is None:
                continue
            d = f["deciles"][0]
            lines.append(f"{name:16s} {choice:13s} {f['n']:6d} {f['slope']:7.3f} [{f['slope_ci'][0]:.3f}, "
                         f"{f['slope_ci'][1]:.3f}] {d['mean_deviation']:+8.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]")
    if not (probes_dir / REGIONS).exists():  # a black-box teacher: the deviation slopes alone
        summary = json.loads((probes_dir / SUMMARY).read_text())
        return "\n".join([*lines, f"deviation only: {summary.get('deviation_only', 'no regions were written')}"])
    table = pd.read_csv(probes_dir / REGIONS)
    tokens = "mean_kl_teacher_student" in table  # an LM run's context regions, ranked by mean KL(t||s)
    lines.append("regions with the largest mean KL(t||s):" if tokens else "most underfit regions:")
    for _, r in table.head(3).iterrows():
        lines.append(f"  #{r['rank']} n={r['size']} {r['dominant_classes']}: agreement {r['agreement']:.3f}, "
                     f"mean deviation {r['mean_deviation']:+.3f}, "
                     + (f"mean KL {r['mean_kl_teacher_student']:.3f}" if tokens else f"coverage {r['coverage_median']:.2f}"))
    if not (probes_dir / SUMMARY).exists():  # a language-model run (kdx.probes.tokens): no coverage
        return "\n".join(lines)
    summary = json.loads((probes_dir / SUMMARY).read_text())
    rho = summary["coverage_vs_disagreement_spearman"]["all"]
    lines.append(f"Spearman(coverage distance, disagreement) over points: {rho['rho']} (n={rho['n']})")
    return "\n".join(lines)


@probe_app.command("eigen")
def eigen_cmd(out: Path = typer.Option(Path("runs/probe-eigen"), "--out", help="folder for eigen.json and eigen.png"),
              seeds: int = typer.Option(5, "--seeds", help="repeat the simulation for seeds 0..N-1"),
              noise: float = typer.Option(8.0, "--noise", help="label-noise sd in the low-eigenvalue directions")):
    """The linear-regression simulation of science.md (Theory): distillation's extra bias toward top eigendirections."""
    from kdx.theory.eigen import EIGEN_JSON, EIGEN_PNG, write_simulations

    results = write_simulations(out, seeds, noise=noise)
    for r in results:
        low, err = r["low_progress"], r["test_error"]
        print(f"seed {r['config']['seed']}: teacher stopped at step {r['teacher_step']}; at matched top progress "
              f"{r['matched_top_progress']:.3f}, low-direction progress one-hot {low['onehot']:.5f} vs distilled "
              f"{low['distilled']:.5f}; test error teacher {err['teacher']:.4f}, one-hot last {err['onehot_last']:.4f}")
    print(f"wrote {out / EIGEN_JSON} and {out / EIGEN_PNG}")
