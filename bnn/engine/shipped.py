r"""The recipes that ship with bnn, found wherever bnn is installed.

In a source checkout (and an editable install) they are the checkout's top-level ``recipes/`` folder;
an installed wheel carries the same files as package data, ``bnn/recipes/*.yaml`` (setup.py maps the
folder there). :func:`find_recipe` accepts a path, or the name of a shipped recipe: ``"abbnn"``,
``"abbnn.yaml"`` or ``"recipes/abbnn.yaml"`` (the paths the docs use) all work from any directory.
"""
import os
from typing import Dict, List, Union

__all__ = ["shipped_recipes", "find_recipe"]


def _folders() -> List[str]:
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../bnn
    # installed wheel: bnn/recipes; source checkout or editable install: <checkout>/recipes
    return [os.path.join(package, "recipes"), os.path.join(os.path.dirname(package), "recipes")]


def shipped_recipes() -> Dict[str, str]:
    r"""``{name: path}`` of the recipes shipped with bnn (name without ``.yaml``), sorted by name."""
    found: Dict[str, str] = {}
    for folder in _folders():
        if os.path.isdir(folder):
            for entry in sorted(os.listdir(folder)):
                if entry.endswith(".yaml"):
                    found.setdefault(entry[:-len(".yaml")], os.path.join(folder, entry))
    return dict(sorted(found.items()))


def find_recipe(recipe: Union[str, os.PathLike]) -> str:
    r"""The path of ``recipe``: an existing file as it is, else the shipped recipe of that name.

    Raises:
        FileNotFoundError: neither a file nor a shipped recipe; the message lists the shipped ones.

    Example::

        >>> from bnn.engine.shipped import find_recipe
        >>> find_recipe("abbnn").endswith("abbnn.yaml")
        True
    """
    path = os.fspath(recipe)
    if os.path.isfile(path):
        return path
    name = os.path.basename(path)
    if name.endswith((".yaml", ".yml")):
        name = name.rsplit(".", 1)[0]
    shipped = shipped_recipes()
    # a bare name, or the docs' "recipes/NAME.yaml" seen from outside the checkout
    if name in shipped and os.path.dirname(path) in ("", "recipes"):
        return shipped[name]
    listed = ", ".join(shipped) if shipped else "none found"
    raise FileNotFoundError(f"no such recipe file: {path} (shipped recipes, usable by name: {listed})")
