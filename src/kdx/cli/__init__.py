"""The `kdx` command line: the only package that imports typer. Each command parses its arguments and
calls the library (kdx.run, kdx.study, kdx.probes, kdx.pool, kdx.explore); it holds no logic of its own."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from kdx.cli.common import DATA_ROOT, split_args
from kdx.cli.export import export_app
from kdx.cli.probe import probe_app
from kdx.cli.synth import synth_cmd
from kdx.errors import KdxError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="kdx: distil a teacher on a chosen distribution of inputs and measure the student.")


@app.command("run")
def run_cmd(config: Optional[Path] = typer.Argument(None, help="YAML config (omit for the defaults)"),
            overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides, e.g. source.name=noise"),
            runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where run directories go"),
            name: Optional[str] = typer.Option(None, "--name", help="run directory name"),
            resume: bool = typer.Option(False, "--resume", help="continue a killed run (skip a finished one)"),
            overwrite: bool = typer.Option(False, "--overwrite", help="delete an existing run directory first"),
            data_root: Optional[Path] = DATA_ROOT):
    """Distil one student and evaluate it on the held-out distributions."""
    from kdx.eval.report import eval_table
    from kdx.run import run
    from kdx.rundir import read_metrics

    if resume and overwrite:
        raise KdxError("--resume and --overwrite exclude each other")
    config, overrides = split_args(config, overrides, data_root)
    run_dir = run(config, overrides, str(runs_dir), name, resume, overwrite)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun rank 0 alone reports
    metrics = read_metrics(run_dir)
    print(eval_table(metrics))
    print(f"wrote {run_dir}")


@app.command("teacher")
def teacher_cmd(config: Optional[Path] = typer.Argument(None), overrides: Optional[List[str]] = typer.Argument(None),
                data_root: Optional[Path] = DATA_ROOT):
    """Train (or find in the cache) the teacher; print its checkpoint and test accuracy."""
    from kdx import config as kconfig
    from kdx.data import load_dataset
    from kdx.distill.teacher import get_teacher
    from kdx.run import validate

    config, overrides = split_args(config, overrides, data_root)
    cfg = kconfig.load_config(config, overrides)
    validate(cfg)
    data = load_dataset(cfg.data)
    t = get_teacher(cfg, data)
    print(f"checkpoint: {t.checkpoint}\ntest_acc: {t.test_acc:.4f}")
    if data.is_text:
        from kdx.data.text import anchor_accuracy

        a = anchor_accuracy(data)
        if a is not None:
            print(f"anchor_test_acc: {a:.4f}  (TF-IDF + logistic regression on the same split)")


BUILDABLE = ("debian-descriptions", "debian-lm")


@app.command("data")
def data_cmd(config: Optional[Path] = typer.Argument(None, help="a run config, or `build CORPUS` (debian-descriptions)"),
             overrides: Optional[List[str]] = typer.Argument(None),
             data_root: Optional[Path] = DATA_ROOT,
             out: Optional[Path] = typer.Option(None, "--out", help="with `build`: the folder to write the corpus to"),
             lists_dir: Path = typer.Option(Path("/var/lib/apt/lists"), "--lists-dir",
                                            help="with `build debian-descriptions`: apt's lists folder")):
    """Load (and, with data.download=true where supported, fetch) the config's dataset and print its shape;
    or `kdx data build debian-descriptions --out DIR`: build that corpus offline from apt's lists."""
    from kdx import config as kconfig
    from kdx.data import load_dataset

    if config is not None and str(config) == "build":
        corpus = (overrides or [None])[0]
        if corpus not in BUILDABLE or len(overrides or []) != 1:
            raise KdxError(f"kdx data build CORPUS --out DIR: the corpora it builds: {', '.join(BUILDABLE)}")
        if out is None:
            raise KdxError(f"kdx data build {corpus} needs --out DIR, the folder to write it to")
        from kdx.data.apt_lists import UPDATE_HINT
        from kdx.data.debian import build_debian_descriptions

        if corpus == "debian-lm":  # every English description, an LM corpus (data.name=lm_text group_column=source)
            from kdx.data.lm_text import build_debian_lm

            try:
                ds = build_debian_lm(out, lists_dir)
            except FileNotFoundError as e:
                raise KdxError(f"{e}; run `{UPDATE_HINT}` (as root) to fetch apt's English descriptions") from None
            print(f"wrote {out}: {len(ds)} descriptions of {len(set(ds['source']))} source packages "
                  f"(use data.name=lm_text data.path={out} data.group_column=source)")
            return
        try:
            dsd = build_debian_descriptions(out, lists_dir)
        except FileNotFoundError as e:
            raise KdxError(f"{e}; run `{UPDATE_HINT}` (as root) to fetch apt's English descriptions") from None
        print(f"wrote {out}: " + ", ".join(f"{k} {len(v)}" for k, v in dsd.items())
              + f" examples, {dsd['train'].features['label'].num_classes} classes (see {out}/class_counts.md)")
        return
    config, overrides = split_args(config, overrides, data_root)
    d = load_dataset(kconfig.load_config(config, overrides).data)
    print(f"{d.name}: train {tuple(d.x_train.shape)} test {tuple(d.x_test.shape)} {d.num_classes} classes, "
          f"{d.x_train.dtype}" + (f", vocabulary {d.vocab_size}, mean length {d.lengths.float().mean():.1f} tokens"
                                  if d.modality in ("text", "lm") else ""))


@app.command("compare")
def compare_cmd(runs: List[Path] = typer.Argument(..., help="run directories"),
                distributions: str = typer.Option("test,train_subset,gaussian_noise-2,rotation-2,uniform_noise",
                                                  help="comma-separated held-out distributions")):
    """One table over several finished runs: student accuracy, agreement and KL per distribution."""
    from kdx.eval.report import compare_table

    print(compare_table(runs, distributions.split(",")))


@app.command("study")
def study_cmd(config: Path = typer.Argument(..., help="study YAML (configs/studies/)"),
              overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides of the study config"),
              runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
              workers: int = typer.Option(1, "--workers", help="independent runs in parallel processes"),
              executor: str = typer.Option("local", "--executor",
                                           help="local (processes here) or ray (Ray tasks over a cluster: kdx[ray])"),
              cpus_per_run: int = typer.Option(1, "--cpus-per-run", help="with --executor ray: CPUs (threads) a run asks for"),
              fail_fast: bool = typer.Option(False, "--fail-fast", help="stop at the first run that fails (by default "
                                             "a failed run is kept in runs.parquet with its error and the study goes on)"),
              table: bool = typer.Option(False, "--table", help="print the table of every run (runs.parquet) as it "
                                         "stands, running nothing")):
    """Run (or resume) a grid of runs, probe them, write summary.csv, summary.md, report.html and runs.parquet."""
    from kdx.study import plan, run_study
    from kdx.study.table import TABLE, failures, runs_table

    if table:
        study, runs = plan(config, overrides or [], build_sources=False)
        out = runs_dir / "studies" / study.name
        frame = runs_table(runs, out)
        with_values = frame.dropna(axis=1, how="all")
        print(with_values[[c for c in with_values.columns if not c.startswith("config.")]].to_string(index=False))
        print(f"{len(frame)} rows; the config columns too in {out / TABLE}")
        return
    out = run_study(config, runs_dir, workers, overrides or [], executor, cpus_per_run, fail_fast=fail_fast)
    if (out / "summary.md").exists():
        print((out / "summary.md").read_text())
    print(f"wrote {out}/summary.csv, summary.md, report.html, {TABLE}, runs.csv")
    failed = failures(out)
    for name, error in failed.items():
        print(f"kdx: run {name} failed: {error}", file=sys.stderr)
    if failed:
        raise typer.Exit(1)


@app.command("findings")
def findings_cmd(runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
                 out: Path = typer.Option(Path("docs/findings.md"), "--out", help="the page; its figures go to a folder "
                                          "named after it (docs/findings/)"),
                 configs: Path = typer.Option(Path("configs"), "--configs", help="the folder holding studies/ and findings.yaml"),
                 run: bool = typer.Option(False, "--run", help="first run (or resume) every findings study and the "
                                          "eigen simulation"),
                 workers: int = typer.Option(1, "--workers", help="with --run: independent runs in parallel processes"),
                 only: str = typer.Option("", "--only", help="comma-separated standalone sections (difficulty, tokens): "
                                          "run/read just their studies and re-render them in the existing page")):
    """docs/findings.md: the seed paper's claims at full budget, from the findings studies' run folders."""
    from kdx.study.findings import write_findings

    parts = [o.strip() for o in only.split(",") if o.strip()] or None
    print(f"wrote {write_findings(runs_dir, out, configs, run=run, workers=workers, only=parts)}")


@app.command("explore")
def explore_cmd(target: Path = typer.Argument(..., help="a probed run directory, or a study's (DIR/studies/NAME)"),
                port: int = typer.Option(8050, "--port", help="port on 127.0.0.1 (0: any free one)"),
                out: Optional[Path] = typer.Option(None, "--out", help="write the page(s) here and exit, without serving"),
                probe: bool = typer.Option(False, "--probe", help="run `kdx probe` first on runs without a map (LM runs: tokens.npz)")):
    """A self-contained explorer page of a probed run or study (Bokeh), served on 127.0.0.1."""
    from kdx.explore import build
    from kdx.explore.serve import server

    folder = build(target, out, probe)
    if out is not None:
        print(f"wrote {folder / 'index.html'}")
        return
    try:
        httpd = server(folder, port)
    except OSError as e:
        raise KdxError(f"cannot listen on 127.0.0.1:{port} ({e.strerror}): pass another --port, or --out DIR "
                       "to write the page without serving it") from None
    print(f"serving {folder} at http://127.0.0.1:{httpd.server_address[1]}/ (Ctrl-C stops)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


@app.command("list")
def list_cmd():
    """List registered datasets, models, sources, views (source.augment) by modality, losses and held-out distributions."""
    from kdx.registry import ALL, VIEWS

    views = {f"{modality} views (source.augment)": reg for modality, reg in VIEWS.items()}
    for kind, reg in {**ALL, **views}.items():
        print(f"{kind}:")
        for e in reg.entries():
            print(f"  {e.name:22s} {e.description}")


app.command("synth", help="Write a pool of N synthesised inputs with the teacher's outputs (a HF dataset on disk).")(synth_cmd)

app.add_typer(export_app, name="export", help="A run for other tools: `kdx export student RUN --format F`, `kdx export fiftyone RUN`.")
app.add_typer(probe_app, name="probe", help="Where the student deviates: `kdx probe RUN` and `kdx probe eigen`.")


def main():
    try:
        app()
    except KdxError as e:
        print(f"kdx: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a full disk under a writer that kdx.io does not wrap (a library's own files)
        from kdx.io import disk_full, disk_full_error

        if not disk_full(e):
            raise
        print(f"kdx: error: {disk_full_error(e.filename, e)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
