"""On-policy distillation (GKD, MiniLLM): the student being trained samples completions of train
prompts, refreshed every `refresh_every` steps (1: strictly on-policy); the teacher scores them."""
from __future__ import annotations

from kdx.data.base import Dataset
from kdx.registry import SOURCES
from kdx.sampling.lm_prompted import PromptedSource


@SOURCES.register(context=("data", "seed"))
def student_samples(data: Dataset, seed: int, refresh_every: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                    new_tokens: int = 0) -> PromptedSource:
    """LM: the current student's own completions of train prompts (on-policy), refreshed every refresh_every steps."""
    return PromptedSource(data, seed, "student", refresh_every, temperature, top_p, new_tokens)
