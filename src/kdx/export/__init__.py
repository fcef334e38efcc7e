"""Exports of a finished run for other tools: `kdx export student` (student.py: the student as safetensors,
a transformers folder, ONNX or TorchScript) and `kdx export fiftyone` (fiftyone.py: a FiftyOne dataset of
a probed run's evaluation inputs)."""
from kdx.export.student import CHECK, FORMATS, export_student, load_safetensors

__all__ = ["CHECK", "FORMATS", "export_student", "load_safetensors"]
