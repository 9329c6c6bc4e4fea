"""The model contract, safe weight loading, modes, augmentation and the threat-model check."""
import os
import pickle

import pytest
import torch
from torch import nn

from rtk.evaluation.attacks import Attack
from rtk.models import model_mode
from rtk.augment import augment
from rtk.errors import RtkError, WeightsError
from rtk.evaluation.robust_accuracy import check_threat_model, select_indices
from rtk.models import load_weights, read_state_dict, save_weights
from tests.helpers import build


def small(num_classes=5):
    torch.manual_seed(0)
    return build("model", "small-cnn", {"channels": [4, 8], "feature_dim": 16}, num_classes=num_classes)


def test_small_cnn_follows_the_contract():
    model = small()
    x = torch.rand(3, 1, 8, 8)
    assert model(x).shape == (3, 5) and model.features(x).shape == (3, 16)
    assert model.blocks[-1] is model.head and len(model.blocks) == 4
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 5)  # same weights serve MNIST
    model.reset_head(7, "zeros")
    assert model(x).shape == (3, 7) and model.num_classes == 7 and model.blocks[-1] is model.head
    assert torch.count_nonzero(model.head.weight) == 0


def test_safetensors_round_trip(tmp_path):
    model, other = small(), small()
    nn.init.zeros_(other.head.weight)
    save_weights(model, tmp_path / "m.safetensors")
    load_weights(other, tmp_path / "m.safetensors")
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(model.eval()(x), other.eval()(x))


def test_mismatch_names_keys(tmp_path):
    save_weights(small(5), tmp_path / "m.safetensors")
    with pytest.raises(WeightsError, match=r"shape mismatch: head.weight \(5, 16\) vs model \(3, 16\)"):
        load_weights(small(3), tmp_path / "m.safetensors")
    torch.save({"body.0.0.weight": torch.zeros(1)}, tmp_path / "partial.pt")
    with pytest.raises(WeightsError, match="missing keys: "):
        load_weights(small(5), tmp_path / "partial.pt")


class Payload:
    """Unpickling this runs os.system: what a hostile checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"head.weight": Payload(marker)}, handle)
    with pytest.raises(WeightsError, match="cannot read weights"):
        read_state_dict(path)
    assert not marker.exists()


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    save_weights(small(), tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cannot read weights"):
        read_state_dict(tmp_path / "cut.safetensors")


def test_model_mode_restores_every_submodule():
    model = small()
    model.train()
    model.body[0].eval()  # e.g. frozen BN inside a training model
    with model_mode(model, train=False):
        assert not any(m.training for m in model.modules())
    assert model.training and not model.body[0].training and model.body[1].training


def test_attack_call_leaves_mode_and_detaches():
    class Shift(Attack):
        norm, eps = "Linf", 0.1

        def perturb(self, model, x, y):
            assert not model.training
            return (x + 0.1).clamp(0, 1)

    model = small().train()
    out = Shift()(model, torch.rand(2, 1, 8, 8, requires_grad=True), torch.zeros(2, dtype=torch.long))
    assert model.training and not out.requires_grad


def test_threat_model_violations_are_caught():
    attack = type("A", (), {"norm": "Linf", "eps": 0.1})()
    x = torch.full((2, 1, 4, 4), 0.5)
    check_threat_model("ok", attack, x, x + 0.1)
    with pytest.raises(RtkError, match="left its Linf ball"):
        check_threat_model("big", attack, x, x + 0.2)
    with pytest.raises(RtkError, match=r"\[0, 1\] image box"):
        check_threat_model("box", attack, x, x + 0.6)


def test_crop_flip_keeps_shape_and_content():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    y = augment(x, "crop-flip", g, padding=2)
    assert y.shape == x.shape
    flipped = augment(x, "flip", torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) or torch.equal(a, b.flip(-1)) for a, b in zip(x, flipped))
    assert augment(x, "none", g) is x


def test_subset_selection():
    assert select_indices(10, None, "first", 0).tolist() == list(range(10))
    assert select_indices(10, 3, "first", 0).tolist() == [0, 1, 2]
    assert select_indices(10, 5, "stride", 0).tolist() == [0, 2, 4, 6, 8]
    # evenly spaced over the whole set, the tail included (a step of 1880 // 500 = 3 would stop at 1497)
    spread = select_indices(1880, 500, "stride", 0)
    assert len(spread) == len(set(spread.tolist())) == 500 and spread[0] == 0 and spread[-1] >= 1876
    a, b = select_indices(100, 10, "random", 1), select_indices(100, 10, "random", 1)
    assert a.equal(b) and len(a.unique()) == 10
