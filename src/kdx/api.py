"""kdx from Python: distil a teacher the user holds as a module into a student, on data held as tensors.

    import kdx
    data = kdx.data.from_tensors(x_train, y_train, x_test, y_test)
    result = kdx.distill_student(my_teacher, my_student, data, source="noise", samples=20_000)
    print(result.table())
    kdx.probe(result, out="runs/mine")

Teacher and student are any modules mapping inputs to (N, classes) logits; kdx's own models work too. The
same functions run under `kdx run` (kdx.run.distill_and_evaluate), so a run from Python and the same run
from the command line give the same numbers.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from kdx import config as kconfig
from kdx import probes
from kdx.data.base import Dataset
from kdx.device import prepare_model, resolve_device
from kdx.distill.teacher import Teacher, TeacherLogits
from kdx.errors import KdxError
from kdx.eval import heldout_metrics
from kdx.eval.report import eval_table
from kdx.io import save_torch
from kdx.models.wrap import wrap_model
from kdx.probes import ProbeOptions
from kdx.rundir import STUDENT, FinishedRun, write_config
from kdx.run import build_source, distill_and_evaluate, prepare_run_dir, validate_training


@dataclasses.dataclass
class DistillResult(FinishedRun):
    """What kdx.distill_student returns: `metrics` (as in metrics.json: eval per held-out distribution,
    train stats), the trained `student`, the resolved `cfg`, and `dir`, the run directory if one was asked for."""

    def table(self) -> str:
        """The fidelity table `kdx run` prints: per distribution teacher/student accuracy, agreement, KL, tests."""
        return eval_table(self.metrics)


def _config(source: str | dict, config: dict[str, Any], seed: int) -> kconfig.RunConfig:
    """The run config from keyword arguments: `samples=...` and the other `distill` fields by name, any
    other field by its dotted key (`**{"eval.n": 500}`), as one layer over the defaults."""
    distill_fields = {f.name for f in dataclasses.fields(kconfig.DistillConfig)}
    given = OmegaConf.create({"seed": seed})
    for key, value in config.items():
        OmegaConf.update(given, f"distill.{key}" if key in distill_fields else key, value)
    spec = {"name": source} if isinstance(source, str) else dict(source)
    return kconfig.load_config(None, layers=[("source", {"source": spec}),
                                             ("keyword arguments", OmegaConf.to_container(given))])


def _user_teacher(teacher: nn.Module, data: Dataset, cfg: kconfig.RunConfig, features: str | None,
                  cache_dir: Path | None) -> Teacher:
    device = resolve_device(cfg.distill.device)
    model = wrap_model(teacher, data, features, "teacher")
    model = prepare_model(model, device, data.is_image).eval().requires_grad_(False)
    logits = TeacherLogits(model, cache_dir)
    test_acc = float((logits(data.x_test).argmax(1).cpu() == data.y_test).float().mean())
    return Teacher(model, Path("<python module>"), test_acc, logits)


def distill_student(teacher: nn.Module, student: nn.Module, data: Dataset, source: str | dict = "train", *,
                    run_dir: str | Path | None = None, seed: int = 0, teacher_features: str | None = None,
                    student_features: str | None = None, **config: Any) -> DistillResult:
    """Train `student` (in place) to match `teacher` on inputs drawn from `source` (a registered source
    name, or a spec such as {"name": "mixture", "components": [...]}) and evaluate it on held-out
    distributions. `config`: DistillConfig fields by name (samples, batch_size, loss, temperature, lr, ...)
    or any config field by dotted key ("eval.n", "eval.distributions"). `run_dir`: also write the run
    directory (config.yaml, student.pt, metrics.json, log.jsonl) there. `*_features`: the layer whose output
    probes use as penultimate features (default: the input of the module's last nn.Linear)."""
    cfg = _config(source, config, seed)
    cfg = dataclasses.replace(cfg, data={"name": f"python:{data.name}"},
                              teacher=dataclasses.replace(cfg.teacher, model={"name": f"python:{type(teacher).__name__}"}),
                              student=dataclasses.replace(cfg.student, model={"name": f"python:{type(student).__name__}"}))
    source_spec = validate_training(cfg)
    source = build_source(cfg, data)  # its values checked before the teacher is wrapped and scored
    t = _user_teacher(teacher, data, cfg, teacher_features, None)
    s = wrap_model(student, data, student_features, "student")
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:  # made once nothing can be refused any more, as `kdx run` does
        prepare_run_dir(run_dir, resume=False, overwrite=False)
        write_config(run_dir, cfg)
    metrics = distill_and_evaluate(cfg, data, t, s, source, source_spec=source_spec, run_dir=run_dir)
    return DistillResult(run_dir, cfg, data, t, s.eval(), metrics)


def evaluate(teacher: nn.Module, student: nn.Module, data: Dataset, distributions: list[str] | None = None, *,
             n: int = kconfig.EvalConfig.n, bootstrap: int = kconfig.EvalConfig.bootstrap,
             seed: int = kconfig.EvalConfig.seed) -> dict:
    """Fidelity (agreement, KL, TV) and accuracy with paired tests, per held-out distribution (default: the
    data's list), for any two modules; the metrics of metrics.json's `eval` section. `distributions`, `n`,
    `bootstrap`, `seed`: the `eval` config fields of the same names."""
    given = {"n": n, "bootstrap": bootstrap, "seed": seed}
    if distributions:
        given["distributions"] = list(distributions)
    cfg = kconfig.load_config(None, layers=[("keyword arguments", {"eval": given})])
    validate_training(dataclasses.replace(cfg, source={"name": "train"}))
    t = _user_teacher(teacher, data, cfg, None, None)
    s = prepare_model(wrap_model(student, data, None, "student"), resolve_device(cfg.distill.device), data.is_image)
    return heldout_metrics(t.logits, s, data, cfg.eval)


def probe(run: FinishedRun | str | Path, *, out: str | Path | None = None, **options: Any) -> dict:
    """Where the student deviates (`kdx probe`): deviation slopes, regions, coverage and, with map=True, the
    explorer's map, written to the run directory (or `out`). `run`: what kdx.distill_student returned, or a
    run directory; `options`: kdx.probes.ProbeOptions fields."""
    if isinstance(run, (str, Path)):
        return probes.probe(run, ProbeOptions(**options))
    if out is not None:
        run = dataclasses.replace(run, dir=Path(out))
        run.dir.mkdir(parents=True, exist_ok=True)
        if run.student is not None and not (run.dir / STUDENT).exists():
            save_torch(run.dir / STUDENT, {"model": run.student.state_dict()})
    if run.dir is None:
        raise KdxError("kdx.probe writes files: pass out=DIR, or run_dir=DIR to kdx.distill_student")
    return probes.probe(run, ProbeOptions(**{"map": False, **options}))
