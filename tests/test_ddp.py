"""torchrun: 2 processes (gloo, CPU) train one student with DistributedDataParallel."""
import json
import math
import os
import subprocess
import sys

import torch

from conftest import FAST
from kdx.distill.loop import rank_batch
from kdx.registry import SOURCES


def test_rank_shares_are_disjoint_and_cover_the_step(digits_teacher):
    _, data, _ = digits_teacher
    for spec in [{"name": "train"}, {"name": "train", "augment": "flip_crop"}, {"name": "noise"},
                 {"name": "mixture", "components": [{"name": "train"}, {"name": "noise"}]}]:
        one = SOURCES.build(spec, "source", data=data, seed=3)
        ranks = [SOURCES.build(spec, "source", data=data, seed=3) for _ in range(2)]
        for s in [one, *ranks]:
            s.setup(torch.device("cpu"), None)
        for step in range(3):
            whole = rank_batch(one, step, 64, 0, 1).x
            a, b = (rank_batch(src, step, 64, r, 2).x for r, src in enumerate(ranks))
            assert len(a) == len(b) == 32
            rows = lambda x: {tuple(v) for v in x.flatten(1).tolist()}  # noqa: E731
            assert not rows(a) & rows(b), spec  # no input trained on by both ranks
            if spec == {"name": "train"}:  # a fixed pool: the two shares are exactly one process's batch
                assert rows(torch.cat([a, b])) == rows(whole)
                assert ranks[0].state_dict() == one.state_dict()
        # every rank's source state advances alike, so rank 0's checkpoint resumes them all
        assert ranks[0].state_dict() == ranks[1].state_dict(), spec


# BatchNorm-free (an MLP) and 10 steps: two ranks' mean gradients, averaged by DDP, are one process's
# mean gradient over the same 128 inputs, so the two runs are the same computation up to float32
# summation order (each rank a half of the step's rows, checked above).
DDP_RUN = [o for o in FAST if not o.startswith(("student.model.", "distill.samples="))] + [
    "student.model.name=mlp", "student.model.hidden=[32]", "distill.samples=1280"]


def test_torchrun_two_processes_match_one(digits_teacher, tmp_path):
    one = run_one_process(tmp_path, "one")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "kdx", "run", *DDP_RUN, "distill.device=cpu", "--runs-dir", str(tmp_path), "--name", "two"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    d = tmp_path / "two"
    assert json.loads((d / "metrics.json").read_text())["train"]["steps"] == 10
    # The same training up to summation order: float32 rounding (~1e-7 relative a step; 3e-8 apart here)
    # stays below 1e-5 over 10 steps, while a rank's gradient dropped or a wrong share moves weights ~1e-2.
    assert_same_training(d, one, rtol=1e-4, atol=1e-5)
    w_one = torch.load(one / "student.pt", weights_only=True)["model"]
    moved = max((w_one[k] - w0).abs().max().item() for k, w0 in initial_student(digits_teacher).items())
    assert moved > 1e-2  # training moved the weights far more than the tolerance: the check can fail
    log = lambda r: [json.loads(x) for x in (r / "log.jsonl").read_text().splitlines()]  # noqa: E731
    assert [e["step"] for e in log(d)] == [e["step"] for e in log(one)]  # each log step once
    torch.testing.assert_close([e["loss"] for e in log(d)], [e["loss"] for e in log(one)], rtol=1e-4, atol=1e-6)
    # rank 0 alone writes: each file once, one report on stdout
    assert sorted(p.name for p in d.iterdir()) == ["config.yaml", "log.jsonl", "metrics.json", "student.pt"]
    assert out.stdout.count(f"wrote {d}") == 1 and out.stdout.count("student_acc") <= 1


def run_one_process(runs_dir, name):
    from kdx.run import run

    return run(None, DDP_RUN, str(runs_dir), name)


def initial_student(digits_teacher) -> dict:
    from kdx import config as kconfig
    from kdx.models import build_model

    _, data, _ = digits_teacher
    cfg = kconfig.load_config(None, DDP_RUN)
    return build_model(cfg.student.model, data, "student.model", cfg.seed).state_dict()


def assert_same_training(a, b, rtol: float = 1e-4, atol: float = 1e-5):
    """Run directories a and b trained the same student up to float32 summation order (another process
    layout or thread count): weights equal to rtol/atol, and per held-out set the same rows, accuracy and
    agreement within 2 rows (logits ~1e-5 apart flip a prediction only on a near-tie) and the mean KL
    within 1e-3 (of order 1, it moves by ~1e-5 with such logits). A misaligned gather or another
    training moves all of these far more."""
    w_a, w_b = (torch.load(d / "student.pt", map_location="cpu", weights_only=True)["model"] for d in (a, b))
    assert w_a.keys() == w_b.keys()
    for k in w_a:
        torch.testing.assert_close(w_a[k], w_b[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")
    m_a, m_b = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert m_a["train"]["steps"] == m_b["train"]["steps"] and m_a["train"]["samples"] == m_b["train"]["samples"]
    assert m_a["eval"].keys() == m_b["eval"].keys()
    for name, ev in m_b["eval"].items():
        n = ev["n"]
        assert m_a["eval"][name]["n"] == n, name  # every row evaluated, once
        for metric in ("student_acc", "agreement"):  # student_acc is None where the set has no labels
            if ev[metric] is not None:
                assert abs(m_a["eval"][name][metric] - ev[metric]) <= 2 / n + 1e-9, (name, metric)
        assert math.isclose(m_a["eval"][name]["kl_teacher_student"], ev["kl_teacher_student"],
                            rel_tol=1e-3, abs_tol=1e-3), name
