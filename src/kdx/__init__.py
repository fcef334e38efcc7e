"""kdx: which distribution of inputs should a student be distilled on? Measure it.

The public Python API (see the README's "From Python"): kdx.data.from_tensors / from_dataset,
kdx.distill_student, kdx.evaluate, kdx.probe, kdx.DistillResult. Everything else is internal.
"""
__version__ = "0.1.0"

_API = ("distill_student", "evaluate", "probe", "DistillResult")
__all__ = [*_API, "data"]


def __getattr__(name: str):
    """The API loads on first use, so `kdx --help` does not pay for torch's import."""
    if name in _API:
        from kdx import api

        return getattr(api, name)
    if name == "data":
        import kdx.data

        return kdx.data
    raise AttributeError(f"module 'kdx' has no attribute '{name}'")
