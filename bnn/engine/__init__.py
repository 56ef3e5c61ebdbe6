r"""BinaryChef and the recipe machinery: schema, validation, name registry, training settings."""
from .chef import BinaryChef
from .errors import RecipeError
from .registry import BINARIZERS
from .schema import Step, TrainingSettings

__all__ = ["BinaryChef", "RecipeError", "BINARIZERS", "Step", "TrainingSettings"]
