"""Throughput of causal-LM distillation: the one loop against its parts and against TRL's GKDTrainer,
in one process on the same data, models, batch size, sequence length, optimizer and loss.

  python bench/lm.py [CONFIG] [overrides...] [--steps 20] [--repeats 3]   (default: configs/lm_debian.yaml)

Figures, in tokens a second (a token: one position of a context-wide window, padding included, so
every figure counts the same work; `trained` counts the positions the loss counts):
(a) student-only training (next-token cross-entropy on corpus windows), (b) the teacher's forward,
(g) the student's generation with kdx's KV-cache sampler; then kdx distillation (forward KL) per source:
corpus with the teacher on every batch (ideal 1 / (1/a + 1/b)), corpus with the teacher's top-64 cached
(ideal a; the cache of the windows a round trains on is made before timing starts), and student_samples (on-policy, refreshed every
step: generation, teacher forward and training each step), whose cost per trained token is compared
with the corpus source's (GKD reports 1.8-2.2x). Last, TRL's GKDTrainer (`pip install 'kdx[bench]'`)
at lmbda 0 (dataset windows) and 1 (on-policy: the student's completions of the same prompts), beta 0
(forward KL, kdx's forward_kl), with kdx / TRL ratios. Each figure is the median of `repeats`
interleaved rounds after a warm-up round (bench/loop.py's interleaved_medians).
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import warnings

import torch

from kdx import config as kconfig
from kdx.data import load_dataset
from kdx.data.lm_text import lm_targets
from kdx.device import resolve_device
from kdx.distill.loop import distill
from kdx.distill.teacher import get_teacher
from kdx.models import build_model
from kdx.models.gpt import sample
from kdx.registry import SOURCES
from kdx.sampling.lm_corpus import CorpusSource
from loop import interleaved_medians  # bench/loop.py: the script's folder is on sys.path


def trl_rate(cfg, data, teacher_lm, device, *, lmbda: float, steps: int) -> float:
    """Sequences a second of TRL's GKDTrainer (beta 0: forward KL; temperature 1; the same AdamW, lr,
    batch and windows; completions of the first prompt_tokens of each window, as long as kdx's), timed
    from the end of its first step to the end of its last (setup and the first step not counted)."""
    from datasets import Dataset as HFDataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    d, b, k, length = cfg.distill, cfg.distill.batch_size, data.extra["prompts_train"][0].shape[1], data.max_length
    student = build_model(cfg.student.model, data, "student.model", 0).lm
    eos = data.tokenizer.eos_id

    def collate(rows):  # kdx's windows as TRL's batch: labels -100 where kdx's mask does not count
        x = torch.tensor([r["ids"] for r in rows])
        _, counted = lm_targets(x, data.pad_id, eos)
        labels = torch.full_like(x, -100)
        labels[:, 1:] = x[:, 1:].masked_fill(~counted[:, :-1], -100)
        return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": labels,
                "prompts": x[:, :k], "prompt_attention_mask": torch.ones_like(x[:, :k])}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if device.type == "cuda":
                torch.cuda.synchronize()
            if state.global_step == 1:
                self.t0 = time.perf_counter()
            self.t1 = time.perf_counter()

    clock = Clock()
    rows = HFDataset.from_dict({"ids": data.x_train[: (steps + 1) * b].tolist()})
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = GKDConfig(output_dir=out, per_device_train_batch_size=b, max_steps=steps + 1, learning_rate=d.lr,
                         weight_decay=d.weight_decay, lr_scheduler_type="cosine", lmbda=lmbda, beta=0.0,
                         temperature=1.0, max_new_tokens=length - k, max_length=length, seq_kd=False,
                         report_to=[], save_strategy="no", logging_steps=10**6, disable_tqdm=True,
                         dataloader_num_workers=0, use_cpu=device.type != "cuda", bf16=device.type == "cuda",
                         seed=0)
        trainer = GKDTrainer(model=student, teacher_model=teacher_lm, args=args, train_dataset=rows,
                             processing_class=data.tokenizer.tok, data_collator=collate, callbacks=[clock])
        trainer.train()
    return steps * b / (clock.t1 - clock.t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("args", nargs="*", help="[CONFIG] then dotted overrides")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    opts = ap.parse_args(argv)
    path = opts.args[0] if opts.args and "=" not in opts.args[0] else "configs/lm_debian.yaml"
    cfg = kconfig.load_config(path, [a for a in opts.args if "=" in a])
    steps, b = opts.steps, cfg.distill.batch_size
    data = load_dataset(cfg.data)
    teacher = get_teacher(cfg, data)
    device = resolve_device(cfg.distill.device)
    length, k = data.max_length, data.extra["prompts_train"][0].shape[1]
    loop_cfg = dataclasses.replace(cfg.distill, samples=steps * b, log_every=steps, checkpoint_every=10**9,
                                   loss="forward_kl", temperature=1.0, alpha=0.0, switch_at=None)
    trained = {}  # source label -> positions the loss counted a second

    def loop_rate(label: str, spec: dict | None, loss: str = "forward_kl", with_teacher: bool = True) -> float:
        student = build_model(cfg.student.model, data, "student.model", 0)
        # spec None: the corpus source with a top-k cache of the windows one round trains on (a whole corpus's
        # cache is N x L x k values and ids: 6.6 GB for the Debian corpus at k = 64), made before timing starts
        source = (SOURCES.build(spec, "source", data=data, seed=0) if spec is not None
                  else CorpusSource(data, 0, top_k=64, windows=data.x_train[: steps * b]))
        stats = distill(student, source, dataclasses.replace(loop_cfg, loss=loss),
                        teacher=teacher if with_teacher else None)
        trained.setdefault(label, []).append(stats["accounting"]["source"]["trained_tokens"] / stats["seconds"])
        return stats["samples_per_s"] * length

    @torch.no_grad()
    def teacher_rate() -> float:
        x = data.x_train[: steps * b].to(device)
        model = teacher.model.to(device).eval()
        t = time.perf_counter()
        for i in range(0, len(x), b):
            model(x[i:i + b])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(x) * length / (time.perf_counter() - t)

    student_for_sampling = build_model(cfg.student.model, data, "student.model", 0).to(device)

    def generation_rate() -> float:
        prompts = data.extra["prompts_train"][0][: b].to(device)
        g = torch.Generator(device).manual_seed(0)
        t = time.perf_counter()
        for _ in range(max(1, steps // 4)):
            sample(student_for_sampling, prompts, length - k, g, eos_id=None, pad_id=data.pad_id)
        return max(1, steps // 4) * b * (length - k) / (time.perf_counter() - t)

    try:
        import trl
    except ImportError:
        trl = None
        print("trl is not installed (pip install 'kdx[bench]'): no TRL column")
    fns = {"a": lambda: loop_rate("a", {"name": "corpus"}, "onehot", False), "b": teacher_rate, "g": generation_rate,
           "corpus": lambda: loop_rate("corpus", {"name": "corpus"}),
           "corpus top-k": lambda: loop_rate("corpus top-k", None),
           "student_samples": lambda: loop_rate("student_samples", {"name": "student_samples", "refresh_every": 1})}
    if trl:
        fns["trl 0"] = lambda: trl_rate(cfg, data, teacher.model.lm, device, lmbda=0.0, steps=steps) * length
        fns["trl 1"] = lambda: trl_rate(cfg, data, teacher.model.lm, device, lmbda=1.0, steps=steps) * length
    med = interleaved_medians(fns, opts.repeats)
    a, t = med["a"], med["b"]
    per_token = {label: 1 / sorted(v)[len(v) // 2] for label, v in trained.items()}  # seconds per trained token
    print(f"device {device}, threads {torch.get_num_threads()}, batch {b} x {length} tokens (prompts {k}), torch "
          f"{torch.__version__}, trl {trl.__version__ if trl else 'absent'}, teacher {cfg.teacher.model}, student "
          f"{cfg.student.model}, vocabulary {data.vocab_size}; {steps} steps x {opts.repeats} interleaved rounds (median)")
    print(f"{'student-only training (a)':40s} {a:10,.0f} tokens/s")
    print(f"{'teacher forward (b)':40s} {t:10,.0f} tokens/s")
    print(f"{'student generation, KV cache (g)':40s} {med['g']:10,.0f} new tokens/s")
    ideal = {"corpus": 1 / (1 / a + 1 / t), "corpus top-k": a}
    print(f"{'distillation (forward KL)':40s} {'tokens/s':>10s} {'ideal':>10s} {'kdx/ideal':>10s} {'s/Mtrained':>11s}")
    for label in ("corpus", "corpus top-k", "student_samples"):
        row = f"{'  ' + label:40s} {med[label]:10,.0f} "
        row += f"{ideal[label]:10,.0f} {med[label] / ideal[label]:10.2f}" if label in ideal else f"{'-':>10s} {'-':>10s}"
        print(row + f" {per_token[label] * 1e6:11.1f}")
    print(f"on-policy cost per trained token / corpus's: {per_token['student_samples'] / per_token['corpus']:.2f} "
          "(goal <= 2.2; GKD reports 1.8-2.2)")
    if trl:
        print(f"{'TRL GKDTrainer':40s} {'tokens/s':>10s} {'kdx/TRL':>10s}")
        for lmbda, label in (("0", "corpus"), ("1", "student_samples")):
            print(f"{'  lmbda ' + lmbda + ' (kdx ' + label + ')':40s} {med['trl ' + lmbda]:10,.0f} "
                  f"{med[label] / med['trl ' + lmbda]:10.2f}")


if __name__ == "__main__":
    main()
