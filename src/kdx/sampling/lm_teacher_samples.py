"""Sequence-level KD (Kim & Rush 2016): completions the teacher samples from train prompts at a
temperature and top-p, fresh every `refresh_every` steps, or one pool of `pool` made at the start (as
`kdx synth` makes one); the loss counts the completions only."""
from __future__ import annotations

from kdx.data.base import Dataset
from kdx.registry import SOURCES
from kdx.sampling.lm_prompted import PromptedSource


@SOURCES.register(context=("data", "seed"))
def teacher_samples(data: Dataset, seed: int, refresh_every: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                    new_tokens: int = 0, pool: int = 0) -> PromptedSource:
    """LM: the teacher's completions of train prompts (sequence-level KD), made every refresh_every steps or once (pool=N)."""
    return PromptedSource(data, seed, "teacher", refresh_every, temperature, top_p, new_tokens, pool)
