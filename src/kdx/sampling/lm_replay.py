"""DistiLLM's off-policy replay for causal LMs: a buffer of the student's past samples; each step a
share `refresh` of the batch is sampled fresh by the current student (and pushed into the buffer,
oldest out), the rest drawn from the buffer (uniformly, seeded by the step). The buffer is
checkpointed, so a resumed run replays the same samples."""
from __future__ import annotations

import math

import torch

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.registry import SOURCES
from kdx.sampling.base import Batch, step_generator
from kdx.sampling.lm_prompted import PromptedSource, tensors_to


class ReplaySource(PromptedSource):
    def __init__(self, data: Dataset, seed: int, buffer: int, refresh: float, temperature: float, top_p: float,
                 new_tokens: int):
        super().__init__(data, seed, "student", 1, temperature, top_p, new_tokens)
        if buffer < 1 or not 0 < refresh <= 1:
            raise KdxError(f"source 'replay': buffer={buffer} must be >= 1 and refresh={refresh} in (0, 1]")
        self.size, self.refresh = buffer, refresh
        self.buffer: dict | None = None  # {"ids", "mask", "next": write position, "filled"}

    def batch(self, step: int, n: int) -> Batch:
        fresh_n = max(1, math.ceil(self.refresh * n))
        ids, mask = self.generate(fresh_n, step)
        if self.buffer is None:
            shape = (self.size, self.data.max_length)
            self.buffer = {"ids": torch.full(shape, self.data.pad_id, dtype=torch.long, device=self.device),
                           "mask": torch.zeros(shape, dtype=torch.bool, device=self.device), "next": 0, "filled": 0}
        buf, old_n = self.buffer, n - fresh_n
        if old_n and buf["filled"]:  # past samples, drawn before this step's are pushed
            pick = torch.randint(buf["filled"], (old_n,), generator=step_generator(self.seed, step, self.device, "replay"),
                                 device=self.device)
            x, m = torch.cat([ids, buf["ids"][pick]]), torch.cat([mask, buf["mask"][pick]])
        elif old_n:  # the first step: nothing to replay yet, all fresh
            more, more_mask = self.generate(old_n, step, salt="+first")
            x, m = torch.cat([ids, more]), torch.cat([mask, more_mask])
        else:
            x, m = ids, mask
        slots = (buf["next"] + torch.arange(fresh_n, device=self.device)) % self.size
        buf["ids"][slots], buf["mask"][slots] = ids, mask
        buf["next"], buf["filled"] = (buf["next"] + fresh_n) % self.size, min(self.size, buf["filled"] + fresh_n)
        return self.served(x, m)

    def state_dict(self) -> dict:
        return {"tokens": dict(self.tokens), "buffer": tensors_to(self.buffer, "cpu")}

    def load_state_dict(self, state: dict) -> None:
        self.tokens, self.buffer = dict(state["tokens"]), tensors_to(state["buffer"], self.device)

    def setup(self, device, teacher_logits_fn, teacher=None, student=None) -> None:
        super().setup(device, teacher_logits_fn, teacher=teacher, student=student)
        self.buffer = tensors_to(self.buffer, device)


@SOURCES.register(context=("data", "seed"))
def replay(data: Dataset, seed: int, buffer: int = 1024, refresh: float = 0.25, temperature: float = 1.0,
           top_p: float = 1.0, new_tokens: int = 0) -> ReplaySource:
    """LM: a buffer of the student's past samples, a share `refresh` of each batch sampled fresh (DistiLLM)."""
    return ReplaySource(data, seed, buffer, refresh, temperature, top_p, new_tokens)
