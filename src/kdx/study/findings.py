"""docs/findings.md: the seed paper's claims tested at full budget, from the folders of the findings
studies that configs/findings.yaml lists (`make findings` runs them, then `kdx findings` writes the page
from templates/findings.md.j2, and its figures).

Every number here is read from run folders (metrics.json, log.jsonl's learning curve, probes/
deviation.json) or recomputed from a run's saved student and cached teacher (measure.py); nothing is typed
in. Intervals: t-intervals over seeds (kdx.eval.statistics.mean_interval); a paired difference (one-hot
and distilled runs of the same seed) gets the t-interval of the per-seed differences. Each section returns
a Section: what its part of the template shows, and its verdict on each claim it tests.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jinja2
from omegaconf import MISSING

from kdx import config as kconfig
from kdx.errors import KdxError
from kdx.io import write_text
from kdx.study import sections
from kdx.study.execute import run_study
from kdx.study.folders import load_study
from kdx.study.report import fmt_interval
from kdx.theory.eigen import EIGEN_JSON, write_simulations

# what the page reads a study for (configs/findings.yaml's `role`); the last three are read beside the
# `self` study of their dataset
ROLES = {"self": "self-distillation at convergence over switch_at (sections 1-3)",
         "puzzle": "train inputs with a share of uniform noise, over budgets (section 4)",
         "budget": "the self study's recipe over distill.samples budgets (section 1)",
         "longer": "the same seeds at a larger budget (section 1, the convergence check)",
         "temperature": "distilled students over distill.temperature (section 3, the control)",
         "difficulty": "self-distillation over data.label_noise x data.train_size cells (section 6, the map)",
         "tokens": "an LM study's sources and losses, each run token-probed (section 7)"}
# the sections that stand alone: rendered from templates/NAME.md.j2 (macros verdicts() and body()) between the
# page's markers, so `kdx findings --only NAME` re-renders them in place from their studies alone
# the roles whose dataset may span several studies (the map of one dataset split so that each study fits the
# hour); every other role reads one study a dataset
SEVERAL = {"difficulty"}
SPLICED = {"difficulty": sections.difficulty,  # name -> (studies of its role, figure folder) -> Section
           "tokens": lambda studies, fig_dir: sections.tokens(studies)}
MARK = "<!-- kdx findings: {} {} -->", "<!-- /kdx findings: {} {} -->"


@dataclasses.dataclass
class Finding:
    name: str = MISSING  # configs/studies/NAME.yaml
    role: str = MISSING  # a key of ROLES
    dataset: str = MISSING  # as the page names it


@dataclasses.dataclass
class EigenSpec:
    dir: str = "findings/eigen"  # under the runs folder: `kdx probe eigen --out RUNS/findings/eigen`
    seeds: int = 5


@dataclasses.dataclass
class FindingsConfig:
    studies: list[Finding] = MISSING  # in the order `make findings` runs them (and the page lists them)
    eigen: EigenSpec = dataclasses.field(default_factory=EigenSpec)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.studies]

    def by_role(self, role: str) -> dict[str, list[str]]:
        """{dataset: its study names, in the manifest's order} of the studies in this role."""
        named: dict[str, list[str]] = {}
        for s in self.studies:
            if s.role == role:
                named.setdefault(s.dataset, []).append(s.name)
        return named


def load_manifest(path: str | Path) -> FindingsConfig:
    path = Path(path)
    if not path.exists():
        raise KdxError(f"findings: {path} is missing; it lists the studies the page reads (copy the repository's "
                       "configs/findings.yaml there, or pass --configs the folder that holds it)")
    manifest = kconfig.load_config(path, schema=FindingsConfig)
    selfs = manifest.by_role("self")
    for s in manifest.studies:
        if s.role not in ROLES:
            raise KdxError(f"{path}: study {s.name}: role '{s.role}' is none of {', '.join(ROLES)}; pick one")
        if s.role not in ("self", "puzzle", *SPLICED) and s.dataset not in selfs:
            raise KdxError(f"{path}: study {s.name} ({s.role}) is read beside the self study of {s.dataset}, and "
                           f"none is listed; add one with role: self, dataset: {s.dataset}")
    for role in ("self", "puzzle"):
        if not manifest.by_role(role):
            raise KdxError(f"{path}: no study has role: {role}; the page needs at least one ({ROLES[role]})")
    for role in set(ROLES) - SEVERAL:
        for dataset, names in manifest.by_role(role).items():
            if len(names) > 1:
                raise KdxError(f"{path}: studies {' and '.join(names)} both have role: {role}, dataset: {dataset}, and "
                               f"the page reads one {role} study a dataset; name their datasets apart or drop one")
    return manifest


def run_all(runs_dir: Path, configs: Path, manifest: FindingsConfig, *, workers: int, eigen_too: bool = True) -> None:
    """Every findings study (resuming finished runs) and the eigen simulation."""
    eigen = runs_dir / manifest.eigen.dir
    if eigen_too and not (eigen / EIGEN_JSON).exists():
        write_simulations(eigen, manifest.eigen.seeds)
    for name in manifest.names:
        run_study(configs / "studies" / f"{name}.yaml", runs_dir, workers)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("kdx.study", "templates"), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["interval"] = fmt_interval  # mean [95% t-interval] over seeds
    env.filters["fmt"] = format  # {{ x | fmt(".2f") }}
    return env


def _spliced(name: str, role: dict, fig_dir: Path) -> dict[str, str]:
    """A standalone section's two parts, rendered: {"verdicts": ..., "body": ...} (empty without its studies)."""
    if not role[name]:
        return {"verdicts": "", "body": ""}
    part = SPLICED[name](role[name], fig_dir)
    module = _environment().get_template(f"{name}.md.j2").make_module({**part.shows, "verdict_lines": part.verdicts,
                                                                               "figures": fig_dir.name})
    return {"verdicts": str(module.verdicts()).strip(), "body": str(module.body()).strip()}


def marked(name: str, which: str, text: str) -> str:
    opening, closing = MARK
    return f"{opening.format(name, which)}\n{text}\n{closing.format(name, which)}"


def splice(page: str, name: str, parts: dict[str, str], out: Path) -> str:
    """The page with section `name`'s marked parts replaced by `parts`."""
    for which, text in parts.items():
        opening, closing = (m.format(name, which) for m in MARK)
        start, end = page.find(opening), page.find(closing)
        if start < 0 or end < start:
            raise KdxError(f"findings: {out} has no {opening} ... {closing} block to re-render; run `kdx findings` "
                           "without --only (every study's folder is needed then) to write the whole page")
        page = page[:start] + marked(name, which, text) + page[end + len(closing):]
    return page


def write_findings(runs_dir: str | Path = "runs", out: str | Path = "docs/findings.md", configs: str | Path = "configs",
                   *, run: bool = False, workers: int = 1, only: list[str] | None = None) -> Path:
    """The page `out` and its figures (in the folder named after it) from the studies configs/findings.yaml
    lists; with `run`, first run or resume them. `only` (a subset of SPLICED): run and read just those
    sections' studies and re-render them in the existing page, leaving the rest of it as it is."""
    runs_dir, out, configs = Path(runs_dir), Path(out), Path(configs)
    manifest = load_manifest(configs / "findings.yaml")
    if only:
        bad = [o for o in only if o not in SPLICED]
        if bad:
            raise KdxError(f"findings --only {','.join(bad)}: only {', '.join(SPLICED)} re-render in place; drop the others")
        if not out.exists():
            raise KdxError(f"findings --only: {out} does not exist; run `kdx findings` without --only first")
        manifest = dataclasses.replace(manifest, studies=[s for s in manifest.studies if s.role in only])
    if run:
        run_all(runs_dir, configs, manifest, workers=workers, eigen_too=not only)
    studies = {name: load_study(name, runs_dir, configs) for name in manifest.names}
    role = {r: {dataset: [studies[n] for n in names] if r in SEVERAL else studies[names[0]]
                for dataset, names in manifest.by_role(r).items()} for r in ROLES}
    fig_dir = out.parent / out.stem
    fig_dir.mkdir(parents=True, exist_ok=True)
    if only:
        page = out.read_text(encoding="utf-8")
        for name in only:
            page = splice(page, name, _spliced(name, role, fig_dir), out)
        write_text(out, page)
        return out
    parts = {"gain": sections.gain(role["self"], role["budget"], role["longer"], fig_dir),
             "late": sections.late(role["self"]),
             "slope": sections.slope(role["self"], role["temperature"], fig_dir),
             "puzzle": sections.puzzle(role["puzzle"], fig_dir),
             "eigen": sections.eigen(runs_dir / manifest.eigen.dir, manifest.eigen.seeds, fig_dir)}
    page = _environment().get_template("findings.md.j2").render(
        studies=[{"name": n, "timing": s.timing()} for n, s in studies.items()], figures=fig_dir.name,
        spliced=[{"name": n, **{w: marked(n, w, t) for w, t in _spliced(n, role, fig_dir).items()}} for n in SPLICED],
        verdicts={claim: v for p in parts.values() for claim, v in p.verdicts.items()},
        **{name: p.shows for name, p in parts.items()})
    write_text(out, page)
    return out
