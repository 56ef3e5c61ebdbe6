r"""Binary architectures of the seed papers, float and ready to binarize with their recipes, behind a
timm-style registry: ``create_model(name, num_classes, stem)`` and ``list_models()``.

Each registered function carries ``paper`` and ``default_recipe`` (read them through
:func:`model_entrypoint`). :func:`load_official_state_dict` loads checkpoints of the papers' official code."""
from . import abbnn, bcdnet, bireal, nf_reactnet, reactnet
from .official import load_official_state_dict
from .registry import STEMS, create_model, list_models, model_entrypoint, register_model

__all__ = ["create_model", "list_models", "model_entrypoint", "register_model", "STEMS",
           "load_official_state_dict", "reactnet", "bireal", "abbnn", "nf_reactnet", "bcdnet"]
