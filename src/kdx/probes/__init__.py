"""Probes of a finished run: where and how the student deviates from its teacher.

deviation.py  phi(p_student) against phi(p_teacher): slope, decile means, plot (Nagarajan et al. 2023)
regions.py    faiss k-means regions of teacher features, coverage by the distillation inputs
maps.py       a UMAP map of teacher features with faiss neighbour lists, for the explorer
probe.py      `kdx probe RUN`: collects the outputs once and writes RUN/probes/
eigen.py      `kdx probe eigen`: the linear-regression eigendirection simulation (science.md, Theory)
neighbors.py  faiss: PCA, k-means, exact kNN;  files.py: atomic writes of figures, CSV, parquet, JSON
cli.py        the `kdx probe` command group
"""


def probe_run(run_dir, on=None, make_map: bool = True, **options) -> dict:
    """Probe a finished run directory (what `kdx probe RUN` does); `options` are ProbeOptions fields.
    Returns summary.json's content. Heavy imports wait until the first call."""
    from kdx.probes.probe import ProbeOptions, probe

    return probe(run_dir, ProbeOptions(on=list(on) if on else None, map=make_map, **options))
