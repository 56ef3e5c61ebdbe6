r"""Inference: convert a trained fake-binarized model into a multiplication-free graph on packed bits."""
from .convert import ConversionError, to_inference
from .memory import retain_freed_memory
from .model import InferenceModel
from .serialization import load_inference

__all__ = ["to_inference", "load_inference", "InferenceModel", "ConversionError", "retain_freed_memory"]
