"""A density estimate of the train inputs (in the spirit of Bucilă et al.'s NBE): scikit-learn's
GaussianMixture (full covariances) fit to the train rows once, sampled with kdx's seeded generators so a
draw is a function of (seed, step). Categorical codes are modelled as numbers; the models round them."""
from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.registry import SOURCES
from kdx.sampling.base import Batch, Source, step_generator


class GMMSource(Source):
    def __init__(self, data: Dataset, seed: int, components: int, reg_covar: float, clip: bool):
        super().__init__(data, seed)
        data.require("tabular", "source 'gmm'", "train, noise, downstream or mixture")
        if components < 1 or not reg_covar > 0 or components > len(data.x_train):
            raise KdxError(f"source 'gmm': needs 1 <= components <= the {len(data.x_train)} train rows and reg_covar > 0, "
                           f"got components={components}, reg_covar={reg_covar}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a ConvergenceWarning: the fit is still a density to sample
            fit = GaussianMixture(components, covariance_type="full", reg_covar=reg_covar, random_state=seed).fit(
                data.x_train.double().numpy())
        self.weights = torch.as_tensor(fit.weights_, dtype=torch.float32)
        self.means = torch.as_tensor(fit.means_, dtype=torch.float32)
        self.chol = torch.as_tensor(np.linalg.cholesky(fit.covariances_), dtype=torch.float32)
        self.clip = clip

    def setup(self, device, teacher_logits_fn, teacher=None, student=None) -> None:
        super().setup(device, teacher_logits_fn)
        self.weights, self.means, self.chol = (t.to(device) for t in (self.weights, self.means, self.chol))

    def batch(self, step: int, n: int) -> Batch:
        g = step_generator(self.seed, step, self.device, "gmm")
        k = torch.multinomial(self.weights, n, replacement=True, generator=g)
        z = torch.randn((n, self.means.shape[1], 1), generator=g, device=self.device)
        x = self.means[k] + (self.chol[k] @ z).squeeze(-1)
        return Batch(self.data.clip_to_box(x) if self.clip else x)

    def skip(self, step: int, n: int) -> None:
        pass


@SOURCES.register(context=("data", "seed"))
def gmm(data: Dataset, seed: int, *, components: int = 10, reg_covar: float = 1e-3, clip: bool = True) -> GMMSource:
    """Tables: samples of a Gaussian mixture (full covariances) fit to the train inputs, clipped to the box."""
    return GMMSource(data, seed, components, reg_covar, clip)
