r"""InferenceModel: the converted graph, its operation census, and the packed file format."""
from typing import Any, Dict, Sequence, Union

import torch
import torch.fx
import torch.nn as nn

from .census import CENSUS_KEYS, census

__all__ = ["InferenceModel"]


class InferenceModel(nn.Module):
    r"""A converted model (always in eval semantics): ``model(x)`` runs the packed graph.

    Built by :func:`bnn.to_inference`; saved with :meth:`save`, loaded with :func:`bnn.load_inference`.
    """

    def __init__(self, graph_module: torch.fx.GraphModule):
        super().__init__()
        self.graph_module = graph_module
        self.eval()

    def forward(self, *inputs: torch.Tensor) -> Any:
        with torch.no_grad():
            return self.graph_module(*inputs)

    def train(self, mode: bool = True) -> "InferenceModel":
        if mode:
            raise RuntimeError("an InferenceModel runs in eval mode only; train the fake-binarized model instead")
        return super().train(False)

    def op_census(self, inputs: Union[torch.Tensor, Sequence[torch.Tensor]], per_layer: bool = False) -> Dict[str, Any]:
        r"""Count the operations of one run on ``inputs``.

        Returns:
            ``{"binary_macs", "float_macs", "multiplications", "additions", "shifts", "comparisons"}``
            (multiplications exclude the real stem and classifier), plus ``"layers"``: per-layer rows
            ``{"name", "kind", **counts}`` when ``per_layer``.
        """
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        result = census(self.graph_module, inputs)
        out: Dict[str, Any] = {k: result[k] for k in CENSUS_KEYS}
        if per_layer:
            out["layers"] = [{"name": r.name, "kind": r.kind, **r.counts} for r in result["rows"]]
            out["stem_and_classifier"] = result["stem_and_classifier"]
        return out

    def save(self, path) -> None:
        """Write the model to ``path`` (binary weights as bits), atomically."""
        from .serialization import save_inference
        save_inference(self, path)
