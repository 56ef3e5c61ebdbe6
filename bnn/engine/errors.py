r"""The error every recipe problem raises."""
from typing import Optional

__all__ = ["RecipeError"]


class RecipeError(ValueError):
    r"""A recipe that cannot be used: names the file, the step and the field, says what would be right.

    Attributes:
        source: the recipe's file path (or ``"<dict>"``).
        step: the step's name, or None for the whole recipe.
        field: the dotted path of the field inside the step, or None.
    """

    def __init__(self, message: str, source: str = "<dict>", step: Optional[str] = None,
                 field: Optional[str] = None) -> None:
        self.source, self.step, self.field, self.reason = source, step, field, message
        where = source
        if step is not None:
            where += f", step {step!r}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
