"""Probes of a finished run: where and how the student deviates from its teacher.

deviation.py  phi(p_student) against phi(p_teacher): slope, decile means, plot (Nagarajan et al. 2023)
regions.py    faiss k-means regions of teacher features, coverage by the distillation inputs
maps.py       a UMAP map of teacher features with faiss neighbour lists, for the explorer
probe.py      `kdx probe RUN`: collects the outputs once and writes RUN/probes/
(faiss PCA, k-means and exact kNN live in kdx.neighbors: the adaptive source uses them too)
"""
from kdx.probes.probe import ProbeOptions, probe

__all__ = ["ProbeOptions", "probe"]
