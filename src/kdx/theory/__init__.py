"""The linear-regression theory of distillation (science.md, Theory), simulated: not a probe of a run."""
