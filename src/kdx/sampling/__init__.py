"""Registered sample sources and views; importing this module registers them all."""
from kdx.sampling import augment, mlm, text  # noqa: F401  (views: kdx.registry.VIEWS)
from kdx.sampling import adversarial, boundary, downstream, hotflip, inversion, langevin, mixture, noise, train  # noqa: F401
from kdx.sampling import gmm, marginals, munge  # noqa: F401  (tables)
from kdx.sampling import adaptive, bandit  # noqa: F401  (after mixture: they build on it)
from kdx.sampling import lm_corpus, lm_downstream, lm_mixture, lm_replay  # noqa: F401  (causal LMs)
from kdx.sampling import lm_student_samples, lm_teacher_samples  # noqa: F401
from kdx.sampling.base import Batch, PoolSource, Source
from kdx.sampling.synthesis import SynthesisSource
from kdx.sampling.view import View

__all__ = ["Batch", "PoolSource", "Source", "SynthesisSource", "View"]
