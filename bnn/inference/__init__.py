r"""Inference: convert a trained fake-binarized model into a multiplication-free graph on packed bits."""
from .convert import ConversionError, to_inference
from .model import InferenceModel

__all__ = ["to_inference", "InferenceModel", "ConversionError"]
