"""`kdx findings` (docs/findings.md) end to end on tiny digits versions of the five findings studies,
the learning curve it reads, the `samples` study axis, and the one-line command behind every run."""
import json
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import FAST
from kdx import config as kconfig
from kdx.cli import app
from kdx.errors import KdxError
from kdx.study import plan
from kdx.study.findings import load_manifest
from kdx.study.folders import load_study
from kdx.study.sections import fraction_recovered as _fraction

MANIFEST = load_manifest("configs/findings.yaml")

SELF_RUN = """data: {name: digits}
teacher:
  model: {name: cnn, channels: [8, 16], convs_per_block: 1, hidden: 32}
  train: {epochs: 15, lr: 0.05, schedule: cosine}
  seed: 1000
student:
  model: {name: cnn, channels: [8, 16], convs_per_block: 1, hidden: 32}
distill: {samples: 3000, batch_size: 128, curve_every: 1000, checkpoint_every: 10, log_every: 5}
eval: {n: 300, bootstrap: 200, distributions: [test, train_subset, gaussian_noise-2, uniform_noise]}
"""
SELF_STUDY = """name: {name}
base: ../self.yaml
seeds: [0, 1]
switch_at: [0.0, 0.5, 1.0]
probe_source_n: 200
report_distributions: [test, train_subset]
"""
BUDGET_STUDY = """name: budget_mnist1d
base: ../self.yaml
overrides: [distill.curve_every=0]
seeds: [0, 1]
samples: [1500, 3000]
switch_at: [0.0, 1.0]
probe: false
report_distributions: [test]
"""
LONGER_STUDY = """name: budget_fashion_mnist
base: ../self.yaml
seeds: [0]
samples: [4500]
switch_at: [0.0, 1.0]
probe: false
report_distributions: [test]
"""
TEMP_STUDY = """name: temperature_mnist1d
base: ../self.yaml
overrides: [distill.curve_every=0]
seeds: [0, 1]
temperature: [1.0]
probe_source_n: 200
report_distributions: [test]
"""
PUZZLE_STUDY = """name: {name}
base: ../puzzle.yaml
seeds: [0, 1]
samples: [1500, 3000]
sources:
  - {{name: train, label: noise0}}
  - {{name: mixture, label: noise0.5, components: [{{name: train, weight: 0.5}}, {{name: noise, kind: uniform, weight: 0.5}}]}}
probe: false
report_distributions: [test, gaussian_noise-2, uniform_noise]
"""
DIFFICULTY_STUDY = """name: {name}
base: ../self.yaml
overrides: [distill.curve_every=0]
seeds: [0, 1]
switch_at: [0.0, 0.5, 1.0]
probe_source_n: 200
report_distributions: [test, train_subset]
data:
  - {cell}
"""
# one dataset's map in two studies (as Fashion-MNIST's is, so that each fits the hour): one grid, both studies named
DIFFICULTY_CELLS = {"difficulty_mnist1d": "{name: digits, label: all-noise0, switch_at: [0.0, 1.0]}",
                    "difficulty_mnist1d_n600": "{name: digits, label: n600-noise30, train_size: 600, label_noise: 0.3, "
                                               "overrides: [teacher.train.epochs=30]}"}
# the findings studies the fixture builds: all but the LM one, and for the difficulty map the two tiny studies above
STUDIES = [s.name for s in MANIFEST.studies if s.role not in ("tokens", "difficulty")] + list(DIFFICULTY_CELLS)


@pytest.fixture(scope="module")
def findings(tmp_path_factory):
    """`kdx findings --run` over tiny configs; returns (configs, runs, page path, cli output)."""
    root = tmp_path_factory.mktemp("findings")
    configs, runs = root / "configs", root / "runs"
    (configs / "studies").mkdir(parents=True)
    # the page's list of studies, less the LM one (tests/test_lm.py renders its section from a tiny LM study) and
    # the difficulty map's (the two tiny MNIST-1D studies below stand for them all)
    shipped = open("configs/findings.yaml").read().splitlines()
    kept = [line for line in shipped if "role: tokens" not in line and "role: difficulty" not in line]
    at = max(i for i, line in enumerate(kept) if line.startswith("  - {name: ")) + 1  # the end of `studies:`
    kept[at:at] = [f"  - {{name: {name}, role: difficulty, dataset: MNIST-1D}}" for name in DIFFICULTY_CELLS]
    (configs / "findings.yaml").write_text("\n".join(kept) + "\n")
    for name, cell in DIFFICULTY_CELLS.items():
        (configs / "studies" / f"{name}.yaml").write_text(DIFFICULTY_STUDY.format(name=name, cell=cell))
    (configs / "self.yaml").write_text(SELF_RUN)
    # the puzzle's base: the FAST setting (the digits_teacher fixture's teacher) as a YAML file
    puzzle = kconfig.load_config(None, FAST)
    (configs / "puzzle.yaml").write_text(json.dumps({"data": puzzle.data, "teacher": {"model": puzzle.teacher.model,
                                                     "train": {"epochs": 40, "lr": 0.05}},
                                                     "student": {"model": puzzle.student.model},
                                                     "distill": {"batch_size": 128},
                                                     "eval": {"n": 300, "bootstrap": 200, "distributions":
                                                              ["test", "gaussian_noise-2", "uniform_noise"]}}))
    for name in ("selfdistill_mnist1d", "selfdistill_fashion_mnist"):
        (configs / "studies" / f"{name}.yaml").write_text(SELF_STUDY.format(name=name))
    (configs / "studies" / "budget_mnist1d.yaml").write_text(BUDGET_STUDY)
    (configs / "studies" / "temperature_mnist1d.yaml").write_text(TEMP_STUDY)
    (configs / "studies" / "budget_fashion_mnist.yaml").write_text(LONGER_STUDY)
    for name in ("noise_fraction_mnist1d", "noise_fraction_fashion_mnist"):
        (configs / "studies" / f"{name}.yaml").write_text(PUZZLE_STUDY.format(name=name))
    out = root / "docs" / "findings.md"
    res = CliRunner().invoke(app, ["findings", "--run", "--runs-dir", str(runs), "--configs", str(configs),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return configs, runs, out, res.output


def test_findings_page_has_every_section_and_figure(findings):
    configs, runs, out, output = findings
    page = out.read_text()
    assert f"wrote {out}" in output
    for heading in ("## Verdicts", "## The seed questions", "## 1. Distillation gain at convergence",
                    "## 2. Late distillation", "## 3. Deviation slope", "## 4. The train+uniform puzzle",
                    "## 5. Eigenspace theory"):
        assert heading in page
    for png in ("curves.png", "noise_fraction.png", "eigen.png", "deviation_selfdistill_mnist1d.png"):
        assert (out.parent / "findings" / png).stat().st_size > 1000 and f"findings/{png}" in page
    for name in STUDIES:  # every study's wall time, recorded by kdx study
        timing = json.loads((runs / "studies" / name / "timing.json").read_text())
        assert timing[0]["seconds"] > 0 and f"`{name}` | {timing[0]['seconds'] / 60:.1f} min wall, --workers 1" in page


def test_findings_gain_and_fraction_agree_with_the_metrics_files(findings):
    configs, runs, out, _ = findings
    page = out.read_text()

    def acc(study, run):
        return json.loads((runs / "studies" / study / "runs" / run / "metrics.json").read_text())["eval"]["test"]["student_acc"]

    kd = [acc("selfdistill_mnist1d", f"train-sw0.0-s{s}") for s in (0, 1)]
    oh = [acc("selfdistill_mnist1d", f"train-sw1.0-s{s}") for s in (0, 1)]
    half = [acc("selfdistill_mnist1d", f"train-sw0.5-s{s}") for s in (0, 1)]
    gain = np.subtract(kd, oh)
    row = next(line for line in page.splitlines() if line.startswith("| MNIST-1D | ") and "epochs" not in line
               and "kdx run" in line and "switch_at" not in line.split("|")[2])
    assert f"| {100 * np.mean(oh):.1f} [" in row and f"| {100 * np.mean(gain):.2f} [" in row
    frac = (np.mean(half) - np.mean(oh)) / np.mean(gain)
    assert f"{frac:.2f} [" in next(line for line in page.splitlines() if line.startswith("| MNIST-1D | 0.5 |"))
    # the bootstrap's interval brackets its point estimate
    f, lo, hi = _fraction(np.subtract(half, oh), gain)
    assert np.isclose(f, frac) and (lo <= f <= hi or not np.isfinite(frac))


def test_the_difficulty_map_agrees_with_the_run_folders_and_re_renders_in_place(findings):
    configs, runs, out, _ = findings
    page = out.read_text()
    assert "## 6. Where the teacher is unsure" in page and (out.parent / "findings" / "difficulty.png").stat().st_size > 5000
    folders = {"all-noise0": runs / "studies" / "difficulty_mnist1d" / "runs",
               "n600-noise30": runs / "studies" / "difficulty_mnist1d_n600" / "runs"}
    # one dataset, two studies: one heading naming both, one grid holding both train sizes
    heading = next(line for line in page.splitlines() if line.startswith("### MNIST-1D ("))
    assert "`difficulty_mnist1d`, 2 seeds a cell" in heading and "`difficulty_mnist1d_n600`, 2 seeds a cell" in heading
    assert sum(line.startswith("### MNIST-1D (") for line in page.splitlines()) == 1
    grid = next(line for line in page.splitlines() if line.startswith("| label noise \\ train size |"))
    assert "| 600 |" in grid and "| 1,438 |" in grid

    def read(cell, run, name="metrics.json"):
        return json.loads((folders[cell] / run / name).read_text())

    for cell in folders:
        kd = [read(cell, f"{cell}-train-sw0.0-s{s}")["eval"]["test"]["student_acc"] for s in (0, 1)]
        oh = [read(cell, f"{cell}-train-sw1.0-s{s}")["eval"]["test"]["student_acc"] for s in (0, 1)]
        teacher = read(cell, f"{cell}-train-sw0.0-s0")["eval"]["test"]["teacher_acc"]
        slopes = [read(cell, f"{cell}-train-sw0.0-s{s}", "probes/deviation.json")["distributions"]["test"]["teacher_top1"]["slope"]
                  for s in (0, 1)]
        base = [read(cell, f"{cell}-train-sw1.0-s{s}", "probes/deviation.json")["distributions"]["test"]["teacher_top1"]["slope"]
                for s in (0, 1)]
        row = next(line for line in page.splitlines() if line.startswith(f"| {cell} | {100 * teacher:.1f} ("))
        assert f"| {100 * np.mean(np.subtract(kd, oh)):.2f} [" in row  # the gain, paired by seed
        if cell == "n600-noise30":  # late distillation's own gain over one-hot, paired by seed, in its column
            late = [read(cell, f"{cell}-train-sw0.5-s{s}")["eval"]["test"]["student_acc"] for s in (0, 1)]
            assert f"vs one-hot {100 * np.mean(np.subtract(late, oh)):.2f} [" in row.split("|")[6]
            verdict = next(line for line in page.splitlines() if line.startswith("| MNIST-1D, 600 train inputs, 30%"))
            assert f"({100 * np.mean(np.subtract(late, oh)):.2f} [" in verdict.split("|")[4]
        else:
            assert row.split("|")[6].strip() == "-"  # no late runs in the clean cell
        slope_row = next(line for line in page.splitlines() if line.startswith(f"| {cell} | test | teacher_top1 |"))
        cols = [c.strip() for c in slope_row.split("|")]
        assert cols[4].startswith(f"{np.mean(slopes):.2f} [") and cols[5].startswith(f"{np.mean(base):.2f} [")
        assert cols[6].startswith(f"{np.mean(np.subtract(slopes, base)):.2f} [")  # the excess over one-hot
    # the clean cell's entry keeps switch_at 0 and 1 only: no late-distilled runs there
    assert not list(folders["all-noise0"].glob("all-noise0-train-sw0.5-*"))
    assert len(list(folders["n600-noise30"].glob("n600-noise30-train-sw0.5-*"))) == 2
    noisy = np.load(folders["n600-noise30"] / "n600-noise30-train-sw1.0-s0" / "train_labels.npz")
    assert (noisy["noisy"] != noisy["clean"]).sum() == 180  # 30% of 600, stored with the run
    # --only re-renders the section in place from its study alone; the rest of the page is left as it is
    edited = page.replace("## 5. Eigenspace theory", "## 5. Eigenspace theory (edited by hand)")
    section = page[page.index("<!-- kdx findings: difficulty body -->"):]
    out.write_text(edited.replace(section, section.replace("## 6. Where", "## 6. Stale: where")))
    res = CliRunner().invoke(app, ["findings", "--only", "difficulty", "--runs-dir", str(runs), "--configs", str(configs),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert out.read_text() == edited
    res = CliRunner().invoke(app, ["findings", "--only", "gain", "--runs-dir", str(runs), "--configs", str(configs),
                                   "--out", str(out)])
    assert isinstance(res.exception, KdxError) and "only difficulty, tokens re-render in place" in str(res.exception)
    out.write_text(page.replace("<!-- kdx findings: difficulty body -->", ""))
    res = CliRunner().invoke(app, ["findings", "--only", "difficulty", "--runs-dir", str(runs), "--configs", str(configs),
                                   "--out", str(out)])
    assert isinstance(res.exception, KdxError) and "without --only" in str(res.exception)
    out.write_text(page)


def test_learning_curve_ends_at_the_evaluated_accuracy(findings):
    _, runs, _, _ = findings
    run = runs / "studies" / "selfdistill_mnist1d" / "runs" / "train-sw0.0-s0"
    curve = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if "curve" in line]
    assert [c["samples"] for c in curve] == [1024, 2048, 3072]  # every 1000 samples, and the last step
    metrics = json.loads((run / "metrics.json").read_text())["eval"]["test"]
    from kdx.data import load_dataset

    assert metrics["n"] == len(load_dataset({"name": "digits"}).x_test)  # the whole test split, as the curve
    assert curve[-1]["curve"]["test_acc"] == pytest.approx(metrics["student_acc"])
    assert curve[-1]["curve"]["test_agreement"] == pytest.approx(metrics["agreement"])
    assert curve[-1]["curve"]["test_acc"] > 0.5  # learned: chance is 0.1; 0.82-0.89 over 8 seeds


def test_every_row_command_rebuilds_its_run_config(findings):
    """The page's `kdx run` commands, parsed back, give each run's exact config."""
    configs, runs, out, _ = findings
    s = load_study("noise_fraction_mnist1d", runs, configs)
    for r in s.runs:
        cmd = s.command(r, seeds=False).strip("`").split(" ", 3)
        assert cmd[:2] == ["kdx", "run"]
        import shlex

        args = shlex.split(cmd[3])
        assert kconfig.load_config(cmd[2], args) == r.planned.cfg


@pytest.mark.parametrize("name", MANIFEST.names)
def test_shipped_findings_studies_rebuild_from_their_commands(name):
    study, planned = plan(f"configs/studies/{name}.yaml", build_sources=False)  # the LM corpus may not be built here
    base = kconfig.load_config(f"configs/{study.base.removeprefix('../')}")
    # at most 12 runs a study, spread over its grid (first and last included): a load_config takes ~0.2 s,
    # and the 100-run studies spent 20 s here on what their first, last and middle runs already show
    step = max(1, -(-len(planned) // 12))
    for r in [*planned[::step], planned[-1]]:
        assert kconfig.load_config(f"configs/{study.base.removeprefix('../')}",
                                   kconfig.overrides_between(base, r.cfg)) == r.cfg


def test_samples_axis_names_and_budgets():
    study, planned = plan("configs/studies/budget_mnist1d.yaml")
    assert {r.cfg.distill.samples for r in planned} == set(study.samples)
    assert "train-n32000-sw0.0-s0" in [r.name for r in planned]
    assert all(r.cfg.distill.curve_every == 0 for r in planned)


def test_a_bad_budget_on_the_samples_axis_names_the_run(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: bad\nbase: " + str(__import__("pathlib").Path("configs/selfdistill_mnist1d.yaml").resolve())
                 + "\nsamples: [32000, 0]\nseeds: [0]\n")
    with pytest.raises(KdxError, match=r"run train-n0-s0: .*distill.samples=0 is out of range"):
        plan(f)


def test_findings_without_the_studies_names_the_command(tmp_path):
    with pytest.raises(KdxError, match=r"kdx study configs/studies/selfdistill_mnist1d.yaml"):
        load_study("selfdistill_mnist1d", tmp_path / "runs", __import__("pathlib").Path("configs"))
    res = CliRunner().invoke(app, ["findings", "--runs-dir", str(tmp_path / "none"), "--out", str(tmp_path / "f.md")])
    assert isinstance(res.exception, KdxError) and "make findings" in str(res.exception)
    assert re.search(r"not finished", str(res.exception))


def test_a_bad_findings_manifest_names_the_fix(tmp_path):
    """configs/findings.yaml: a missing file, an unknown role, a comparison without its self study."""
    with pytest.raises(KdxError, match=r"findings.yaml is missing; .*configs/findings.yaml"):
        load_manifest(tmp_path / "findings.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("studies:\n  - {name: a, role: self, dataset: X}\n  - {name: p, role: puzzle, dataset: X}\n"
                   "  - {name: b, role: bugdet, dataset: X}\n")
    with pytest.raises(KdxError, match=r"study b: role 'bugdet' is none of self, puzzle, budget, longer, temperature"):
        load_manifest(bad)
    bad.write_text("studies:\n  - {name: a, role: self, dataset: X}\n  - {name: p, role: puzzle, dataset: X}\n"
                   "  - {name: t, role: temperature, dataset: Y}\n")
    with pytest.raises(KdxError, match=r"study t \(temperature\) is read beside the self study of Y.*role: self, dataset: Y"):
        load_manifest(bad)
    # one self study a dataset (only the difficulty map may span several studies of one dataset)
    bad.write_text("studies:\n  - {name: a, role: self, dataset: X}\n  - {name: p, role: puzzle, dataset: X}\n"
                   "  - {name: a2, role: self, dataset: X}\n  - {name: d, role: difficulty, dataset: X}\n"
                   "  - {name: d2, role: difficulty, dataset: X}\n")
    with pytest.raises(KdxError, match=r"studies a and a2 both have role: self, dataset: X.*name their datasets apart"):
        load_manifest(bad)
    bad.write_text(bad.read_text().replace("  - {name: a2, role: self, dataset: X}\n", ""))
    assert load_manifest(bad).by_role("difficulty") == {"X": ["d", "d2"]}
    res = CliRunner().invoke(app, ["findings", "--configs", str(tmp_path), "--out", str(tmp_path / "f.md")])
    assert isinstance(res.exception, KdxError) and "findings.yaml is missing" in str(res.exception)


def test_a_study_wall_time_says_for_how_many_of_its_runs_it_was_recorded(findings, tmp_path):
    """Runs copied in from another folder (or finished by a killed invocation) are not in the recorded wall
    time; the page says for how many of the study's runs it is."""
    configs, runs, _, _ = findings
    name = "difficulty_mnist1d_n600"
    shutil.copytree(runs / "studies" / name, tmp_path / "studies" / name)
    timing = json.loads((runs / "studies" / name / "timing.json").read_text())
    assert load_study(name, tmp_path, configs).timing() == load_study(name, runs, configs).timing()
    assert " of its " not in load_study(name, runs, configs).timing()
    (tmp_path / "studies" / name / "timing.json").write_text(json.dumps([{**timing[0], "runs_done": 2}]))
    assert f"{timing[0]['seconds'] / 60:.1f} min wall for 2 of its 6 runs, --workers 1" in load_study(name, tmp_path, configs).timing()
