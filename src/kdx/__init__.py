"""kdx: which distribution of inputs should a student be distilled on? Measure it."""
__version__ = "0.1.0"
