"""Black-box teachers: any fitted model with `predict_proba` (scikit-learn's HistGradientBoosting, RandomForest,
LogisticRegression, or any class by import path), under the model contract: stored inputs in, the teacher's
log-probabilities (clipped at log 1e-6) out as its logits. Trained by kdx from a config (`sklearn`,
`tfidf_logreg` for text) and cached like torch teachers (kdx.distill.teacher), or a user's fitted model
from a file (`sklearn_file`): skops by default, pickle or joblib only with `trust_file: true`, since
unpickling runs whatever code the file holds. They have no gradients and no penultimate features, so
they teach (never learn: students are torch modules) and refuse the sources that need either
(kdx.sampling.base.Source.needs_teacher_internals). `ensemble` averages any registered teachers.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdx.data.base import Dataset
from kdx.data.tabular import one_hot
from kdx.data.text import tfidf_logreg_pipeline
from kdx.errors import KdxError, first_line
from kdx.io import write_bytes
from kdx.registry import MODELS

MIN_PROB = 1e-6  # probabilities are clipped here before the log: a tree's exact 0 would be -inf
BLACK_BOX = ("sklearn", "sklearn_file", "tfidf_logreg")
# scikit-learn's own modules, searched for a bare class name
SKLEARN_MODULES = ("ensemble", "linear_model", "tree", "neighbors", "svm", "naive_bayes", "neural_network",
                   "discriminant_analysis", "gaussian_process", "calibration", "dummy")
PICKLES = (".pkl", ".pickle", ".joblib")


def is_black_box(spec: dict) -> bool:
    """Whether a model spec is a teacher without gradients: a black box, or an ensemble holding one."""
    if spec.get("name") == "ensemble":
        return any(is_black_box(m) for m in spec.get("members") or [] if isinstance(m, dict))
    return spec.get("name") in BLACK_BOX


class BlackBoxClassifier(nn.Module):
    """A predict_proba model as a kdx teacher. `featurize(stored inputs) -> what the estimator takes`."""

    black_box = True

    def __init__(self, estimator, data: Dataset, featurize, *, fitted: bool, weights_digest: str | None = None):
        super().__init__()
        self.estimator, self.featurize, self.num_classes, self.fitted = estimator, featurize, data.num_classes, fitted
        self.arrives_trained = weights_digest is not None  # a user's fitted file: used as is
        self.weights_digest = weights_digest
        # no weights of its own: an empty parameter tells predict() and the loop which device outputs go to
        self.device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def fit(self, x_stored: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        """Fit on stored inputs; every random_state the config left unset (None) becomes teacher.seed."""
        unset = {k: seed for k, v in self.estimator.get_params().items() if k.endswith("random_state") and v is None}
        self.estimator.set_params(**unset)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings: the teacher's test accuracy is reported
            self.estimator.fit(self.featurize(x_stored.cpu()), y.cpu().numpy())
        self.fitted = True

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if return_features:
            raise KdxError(f"a black-box teacher ({type(self.estimator).__name__}) has no penultimate features; "
                           "use a source or probe that needs only its outputs")
        proba = np.asarray(self.estimator.predict_proba(self.featurize(x.detach().cpu())), dtype=np.float64)
        full = np.zeros((len(proba), self.num_classes))  # classes absent from the fit get probability 0
        full[:, np.asarray(self.estimator.classes_, dtype=np.int64)] = proba
        return torch.from_numpy(np.log(np.clip(full, MIN_PROB, 1.0))).float().to(x.device)


def table_features(data: Dataset):
    """What an estimator sees of a table: the MLP's features (categorical codes one-hot), as numpy."""
    return lambda x: one_hot(x.float(), data.categories).numpy()


def text_features(data: Dataset):
    """What a text estimator sees: the token ids decoded to text (ids joined by spaces without a tokenizer)."""
    return lambda x: list(data.decode(x)) if len(x) else []


def featurizer(data: Dataset, where: str):
    if data.modality == "tabular":
        return table_features(data)
    if data.is_text:
        return text_features(data)
    if data.modality in ("image", "signal"):
        return lambda x: x.float().flatten(1).numpy()  # pixels or steps as features (uint8 images as stored)
    raise KdxError(f"{where}: black-box teachers take tables, text, images or signals; dataset '{data.name}' is {data.modality}")


def estimator_class(name: str, where: str):
    """A class by import path (`xgboost.XGBClassifier`) or a bare scikit-learn name (`RandomForestClassifier`)."""
    if "." in name:
        module, _, attr = name.rpartition(".")
        candidates = [module]
    else:
        attr, candidates = name, [f"sklearn.{m}" for m in SKLEARN_MODULES]
    for module in candidates:
        try:
            cls = getattr(importlib.import_module(module), attr, None)
        except ImportError as e:
            raise KdxError(f"{where}: cannot import {module} ({first_line(e)}); install it or fix the import path") from None
        if cls is not None:
            break
    else:
        raise KdxError(f"{where}: no estimator '{name}' (searched {', '.join(candidates)}); give a scikit-learn class "
                       "name (HistGradientBoostingClassifier) or an import path (package.module.Class)")
    if not (inspect.isclass(cls) and hasattr(cls, "fit") and hasattr(cls, "predict_proba")):
        raise KdxError(f"{where}: {name} is not a classifier with fit and predict_proba; give one that has both")
    return cls


@MODELS.register(context=("data",))
def sklearn(data: Dataset, estimator: str = "HistGradientBoostingClassifier", params: dict = {}) -> BlackBoxClassifier:
    """A predict_proba classifier (scikit-learn name or import path, `params` to its constructor), fit by kdx and cached."""
    cls = estimator_class(estimator, "teacher.model.estimator")
    params = dict(params)
    try:
        model = cls(**params)
    except (TypeError, ValueError) as e:
        raise KdxError(f"teacher.model.params: {estimator}({', '.join(params)}) fails: {first_line(e)}; "
                       "give the parameters its constructor takes") from None
    return BlackBoxClassifier(model, data, featurizer(data, "teacher.model"), fitted=False)


@MODELS.register(context=("data",))
def tfidf_logreg(data: Dataset, max_features: int = 50_000, C: float = 5.0) -> BlackBoxClassifier:
    """Text: TF-IDF (1-2 grams) + logistic regression on the decoded texts (the anchor's recipe), fit by kdx and cached."""
    data.require("text", "model 'tfidf_logreg'", "sklearn (any predict_proba classifier) for tables")
    return BlackBoxClassifier(tfidf_logreg_pipeline(max_features, C, seed=None), data, text_features(data), fitted=False)


@MODELS.register(context=("data",))
def sklearn_file(data: Dataset, path: str = "", trust_file: bool = False) -> BlackBoxClassifier:
    """A user's fitted predict_proba model: a .skops file, or .pkl/.joblib with trust_file=true (unpickling runs code)."""
    model = load_estimator(Path(path).expanduser(), trust_file, "teacher.model.path")
    digest = hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
    if not hasattr(model, "predict_proba") or not hasattr(model, "classes_"):
        raise KdxError(f"teacher.model.path: {path} holds a {type(model).__name__}, not a fitted classifier with "
                       "predict_proba and classes_; save the fitted classifier itself")
    classes = np.asarray(model.classes_)
    if classes.dtype.kind not in "iu" or classes.min() < 0 or classes.max() >= data.num_classes:
        raise KdxError(f"teacher.model.path: {path} predicts classes {classes.tolist()[:10]}, but dataset "
                       f"'{data.name}' has classes 0..{data.num_classes - 1}; fit it on the dataset's label indices")
    box = BlackBoxClassifier(model, data, featurizer(data, "teacher.model"), fitted=True, weights_digest=digest)
    try:  # a model fit on other features fails here, named, not in the middle of a run
        box(data.x_train[:2])
    except KdxError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the estimator raises on inputs it was not fit on
        raise KdxError(f"teacher.model.path: {path} fails on dataset '{data.name}''s features ({type(e).__name__}: "
                       f"{first_line(e, 200)}); give a model fit on this dataset's features") from None
    return box


def load_estimator(path: Path, trust_file: bool, where: str, *, own_cache: bool = False):
    """A fitted estimator from a file. skops loads scikit-learn's own types and refuses others unless trusted;
    pickle and joblib run the file's code while loading, so they load only when trusted (or from kdx's cache)."""
    if not path.is_file():
        raise KdxError(f"{where}: {path} does not exist (or is not a file); check the path")
    trusted = trust_file or own_cache
    if path.suffix in PICKLES:
        if not trusted:
            raise KdxError(f"{where}: {path} is a pickle: loading it runs whatever code it holds, so kdx loads it only "
                           "when you trust it: set teacher.model.trust_file=true, or save the model with skops "
                           "(skops.io.dump(model, 'teacher.skops')), a format that does not run code")
        import joblib

        try:
            return joblib.load(path)
        except Exception as e:  # noqa: BLE001 - unpickling raises anything
            raise KdxError(f"{where}: {path} cannot be loaded ({type(e).__name__}: {first_line(e, 200)}); "
                           "save the fitted model again") from None
    if path.suffix != ".skops":
        raise KdxError(f"{where}: {path} is neither .skops nor .pkl/.pickle/.joblib; save the model with skops.io.dump")
    sio = skops_io()

    try:
        unknown = sio.get_untrusted_types(file=path)
        foreign = [t for t in unknown if not t.startswith("sklearn.")]
        if foreign and not trusted:
            raise KdxError(f"{where}: {path} holds types from outside scikit-learn ({', '.join(foreign[:5])}); "
                           "set teacher.model.trust_file=true if you trust them")
        return sio.load(path, trusted=unknown)
    except KdxError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged zip or schema raises its own types
        raise KdxError(f"{where}: {path} is not a skops file kdx can read ({type(e).__name__}: "
                       f"{first_line(e, 200, 'unreadable')}); save the model again with skops.io.dump") from None


def save_estimator(model: BlackBoxClassifier, path: Path) -> None:
    """A fitted black box into kdx's teacher cache, as skops (written atomically)."""
    write_bytes(path, skops_io().dumps(model.estimator))


def skops_io():
    try:
        import skops.io as sio
    except ImportError:
        raise KdxError("black-box teachers are stored with skops, which is not installed; pip install 'kdx[tabular]' "
                       "(or pip install skops)") from None
    return sio
