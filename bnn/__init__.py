r"""bnn: binary neural networks in PyTorch. Binarize any model, train it with the papers' recipes,
count its operations, and run it multiplication-free."""
from . import engine, inference, layers, models, ops, optim
from .bconfig import BConfig, with_args
from .binarize import DEFAULT_MODULE_MAPPING, convert, prepare_binary_model
from .engine import BinaryChef, RecipeError
from .inference import InferenceModel, load_inference, to_inference
from .profile import count_ops, summary
from .ops import Identity

__version__ = "0.2.0.dev0"

__all__ = ["BConfig", "with_args", "Identity", "prepare_binary_model", "convert", "DEFAULT_MODULE_MAPPING",
           "BinaryChef", "RecipeError", "count_ops", "summary", "to_inference", "load_inference", "InferenceModel",
           "engine", "inference", "layers", "models", "ops", "optim",
           "__version__"]
