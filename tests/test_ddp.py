"""torchrun: 2 processes (gloo, CPU) train one student with DistributedDataParallel."""
import json
import os
import subprocess
import sys

import torch

from conftest import FAST, run_fast
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


def test_torchrun_two_processes_match_one(digits_teacher, tmp_path):
    one = json.loads((run_fast(tmp_path, name="one") / "metrics.json").read_text())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "kdx", "run", *FAST, "distill.device=cpu", "--runs-dir", str(tmp_path), "--name", "two"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    d = tmp_path / "two"
    two = json.loads((d / "metrics.json").read_text())
    # Same global batch (64 a rank), same steps and the very same training inputs a step; only the
    # ranks' BatchNorm statistics and float summation order differ: the same accuracy band.
    assert two["train"]["steps"] == one["train"]["steps"] and two["train"]["samples"] == one["train"]["samples"]
    for name in ("test", "train_subset"):
        assert abs(two["eval"][name]["student_acc"] - one["eval"][name]["student_acc"]) <= 0.05, name  # ~0.93 here
        assert two["eval"][name]["n"] == one["eval"][name]["n"]  # sharded eval gathered every row, once
    # rank 0 alone writes: each file once, each log step once, one report on stdout
    assert sorted(p.name for p in d.iterdir()) == ["config.yaml", "log.jsonl", "metrics.json", "student.pt"]
    steps = [json.loads(x)["step"] for x in (d / "log.jsonl").read_text().splitlines()]
    assert steps == [json.loads(x)["step"] for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    assert out.stdout.count(f"wrote {d}") == 1 and out.stdout.count("student_acc") <= 1
