"""What the prompted LM sources share: completions of train prompts sampled by a model (the teacher,
or the student being trained), a pool of them made every `refresh_every` steps and served in order;
or (`pool` > 0) one pool of that many made at the start and served round and round.

A pool is a function of (seed, the step that made it, the model's weights then): prompts drawn and
tokens sampled with step_generator, so a resumed run makes the same samples; the pool in use is
checkpointed (the student that made it is gone after a resume). The loss counts the completion tokens
only (Batch.mask). Costs in accounting(): tokens the model generated, tokens fed, tokens trained on.
"""
from __future__ import annotations

import torch

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.models.gpt import sample
from kdx.sampling.base import Batch, Source, step_generator
from kdx.sampling.lm_corpus import lm_batch


def tensors_to(state: dict | None, device) -> dict | None:
    """A dict's tensors moved to `device` (checkpointed pools and buffers), other values as they are."""
    return None if state is None else {k: v.to(device) if torch.is_tensor(v) else v for k, v in state.items()}


class PromptedSource(Source):
    has_labels = True  # the sampled next tokens

    def __init__(self, data: Dataset, seed: int, sampler: str, refresh_every: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0, new_tokens: int = 0, pool: int = 0):
        what = f"source '{sampler}_samples'"
        data.require("lm", what, "source train, noise, hotflip ... for text classification data")
        prompts = data.extra["prompts_train"][0]
        room = data.max_length - prompts.shape[1]
        self.new_tokens = new_tokens or room
        if not 1 <= self.new_tokens <= room:
            raise KdxError(f"{what}: new_tokens={new_tokens} must be in 1..{room} (the context {data.max_length} "
                           f"minus the prompt's {prompts.shape[1]} tokens)")
        if refresh_every < 1 or temperature <= 0 or not 0 < top_p <= 1 or pool < 0:
            raise KdxError(f"{what}: refresh_every={refresh_every} must be >= 1, temperature={temperature} > 0, "
                           f"top_p={top_p} in (0, 1] and pool={pool} >= 0")
        super().__init__(data, seed)
        self.sampler, self.what, self.prompts = sampler, what, prompts
        self.refresh_every, self.temperature, self.top_p, self.fixed_pool = refresh_every, temperature, top_p, pool
        self.epoch_size = pool or None
        self.model = None
        self.pool: dict | None = None  # {"made_at": generation index, "ids", "mask", "cursor"}
        self.tokens = {f"{sampler}_generated_tokens": 0, "input_tokens": 0, "trained_tokens": 0}

    def setup(self, device, teacher_logits_fn, teacher=None, student=None) -> None:
        super().setup(device, None)
        self.model = teacher if self.sampler == "teacher" else student
        if self.model is None:
            raise KdxError(f"{self.what} samples with the {self.sampler}, which this training has none of "
                           "(teachers train on source corpus)")
        self.prompts = self.prompts.to(device)
        self.pool = tensors_to(self.pool, device)

    def generate(self, n: int, step: int, salt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """n completions of random train prompts by the model as it is now, padded to the context."""
        g = step_generator(self.seed, step, self.device, f"prompts{salt}")
        prompts = self.prompts[torch.randint(len(self.prompts), (n,), generator=g, device=self.device)]
        g = step_generator(self.seed, step, self.device, f"sample{salt}")
        tok = self.data.tokenizer
        ids, mask = sample(self.model, prompts, self.new_tokens, g, self.temperature, self.top_p,
                           tok.eos_id if tok is not None else None, self.data.pad_id)
        self.tokens[f"{self.sampler}_generated_tokens"] += n * self.new_tokens
        width = self.data.max_length - ids.shape[1]  # every LM batch is one context wide (mixtures concatenate)
        return (torch.nn.functional.pad(ids, (0, width), value=self.data.pad_id),
                torch.nn.functional.pad(mask, (0, width), value=False))

    def batch(self, step: int, n: int) -> Batch:
        if self.fixed_pool:  # made once, at the start
            if self.pool is None:
                ids, mask = self.generate(self.fixed_pool, 0)
                self.pool = {"made_at": 0, "ids": ids, "mask": mask, "cursor": 0}
            rows = (self.pool["cursor"] + torch.arange(n, device=self.device)) % self.fixed_pool
            self.pool["cursor"] = (self.pool["cursor"] + n) % self.fixed_pool
            return self.served(self.pool["ids"][rows], self.pool["mask"][rows])
        made_at = step // self.refresh_every
        if self.pool is None or self.pool["made_at"] != made_at:
            ids, mask = self.generate(n * self.refresh_every, made_at * self.refresh_every)
            self.pool = {"made_at": made_at, "ids": ids, "mask": mask, "cursor": 0}
        pool, at = self.pool, self.pool["cursor"]
        if at + n > len(pool["ids"]):  # a mixture's share grew by rounding: top the pool up, seeded by this step
            ids, mask = self.generate(at + n - len(pool["ids"]), step, salt=f"+{at}")
            pool["ids"], pool["mask"] = torch.cat([pool["ids"], ids]), torch.cat([pool["mask"], mask])
        pool["cursor"] = at + n
        return self.served(pool["ids"][at:at + n], pool["mask"][at:at + n])

    def served(self, ids: torch.Tensor, mask: torch.Tensor) -> Batch:
        """The batch of these sequences, its tokens counted."""
        batch = lm_batch(ids, self.data, mask)
        self.tokens["input_tokens"] += batch.x.numel()
        self.tokens["trained_tokens"] += int(batch.mask.sum())
        return batch

    def state_dict(self) -> dict:
        return {"tokens": dict(self.tokens), "pool": tensors_to(self.pool, "cpu")}

    def load_state_dict(self, state: dict) -> None:
        self.tokens, self.pool = dict(state["tokens"]), tensors_to(state["pool"], self.device)

    def accounting(self) -> dict:
        return dict(self.tokens)
