"""Every model of the zoo under its recipe converts exactly; A&B under abbnn-pow2 runs with no multiplication
outside its real stem and classifier, and abbnn.yaml shows where its remaining ones are."""
import warnings

import pytest
import torch

import bnn
from inference_helpers import REPO

CASES = [(name, bnn.models.model_entrypoint(name).default_recipe) for name in bnn.models.list_models()]
CASES += [(name, "recipes/abbnn-pow2.yaml") for name in bnn.models.list_models() if name.startswith("abbnn")]


def trained_like(name, recipe):
    torch.manual_seed(0)
    model = bnn.models.create_model(name, num_classes=10, stem="cifar")
    chef = bnn.BinaryChef(REPO / recipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "$downsample$" matches nothing on ReActNet-A models
        for _ in range(len(chef)):
            model = chef.next(model)
    with torch.no_grad():
        for name_, p in model.named_parameters():
            if name_.endswith("activation_pre_process.bias") or "threshold" in name_:
                p.normal_(0, 0.2)  # learned thresholds away from 0
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, 32, 32))  # BatchNorm statistics, where there is BatchNorm
    return model.eval()


@pytest.mark.parametrize("name, recipe", CASES, ids=[f"{n}-{r.split('/')[-1]}" for n, r in CASES])
def test_zoo_model_converts_exactly(name, recipe, tmp_path):
    model = trained_like(name, recipe)
    x = torch.randn(2, 3, 32, 32)
    fast = bnn.to_inference(model, x)
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(fast(x), expected)
    census = fast.op_census(x, per_layer=True)
    assert census["binary_macs"] == bnn.count_ops(model, x).bops
    if recipe.endswith("abbnn-pow2.yaml"):
        assert census["multiplications"] == 0, [r for r in census["layers"] if r.get("multiplications")]
    if name.startswith("abbnn") and recipe.endswith("abbnn.yaml"):
        # the per-channel weight scales K_c of the binary convs: a multiply each, nothing else
        rows = [r for r in census["layers"] if r.get("multiplications") and r["name"] not in census["stem_and_classifier"]]
        assert rows and all(r["kind"] in ("PackedBinaryConv2d", "SignedRealLayer") for r in rows)
    fast.save(tmp_path / "model.bnn")
    assert torch.equal(bnn.load_inference(tmp_path / "model.bnn")(x), expected)
