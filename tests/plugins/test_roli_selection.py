"""RoLI / RanLI epoch selection (DongXzz/RoLI src/engine/trainer.py:227-285): every run is validated
after every epoch and keeps its best epoch's weights (``select = "best"``), or its last
(``select = "last"``); RanLI-Linear is RoLI's stage 1; the selection record survives a resume."""
from __future__ import annotations

import pytest
import torch

from rtk.errors import RtkError
from rtk_plugins.roli import RanLIConfig, RoLIConfig
from rtk_plugins.roli import strategy as roli_strategy
from rtk_plugins.roli.strategy import BestEpochByValidation, RoLI
from tests.plugins.test_roli import ctx, tiny_data, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def scripted_validation(monkeypatch, scores):
    """Replace the validation attack by ``scores``, one per call, recording the head each call saw."""
    seen = []

    def fake(model, data, ctx, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in model.head.state_dict().items()})
        return scores[len(seen) - 1]

    monkeypatch.setattr(roli_strategy, "robust_accuracy", fake)
    return seen


def ranli(**options):
    base = dict(variant="linear", optimizer="sgd", lr=0.5, epochs=3, batch_size=12, warmup_epochs=0, steps=1,
                val_steps=1)
    return RoLI(RanLIConfig(**{**base, **options}), robust_init=False)


def test_the_best_epoch_is_kept_not_the_last(monkeypatch):
    seen = scripted_validation(monkeypatch, [0.2, 0.6, 0.4])
    strategy = ranli()
    model = strategy.transfer(tiny_vit(), tiny_data(), ctx())
    assert len(seen) == 3 and strategy.selection.scores == [0.2, 0.6, 0.4] and strategy.selection.best_epoch == 1
    assert not torch.equal(seen[1]["weight"], seen[2]["weight"])  # the epochs' heads differ
    for key, value in seen[1].items():
        assert torch.equal(model.head.state_dict()[key], value)


def test_select_last_keeps_the_last_epoch_and_needs_no_validation_split(monkeypatch):
    seen = scripted_validation(monkeypatch, [0.2, 0.6, 0.4])
    best = ranli().transfer(tiny_vit(), tiny_data(), ctx())
    strategy = ranli(select="last")
    last = strategy.transfer(tiny_vit(), tiny_data(val=0), ctx())  # the scripted scores draw no random numbers
    assert strategy.selection is None and len(seen) == 3
    assert torch.equal(last.head.weight, seen[2]["weight"]) and not torch.equal(last.head.weight, best.head.weight)


def test_ties_keep_the_earlier_epoch_and_no_score_above_zero_keeps_the_last(monkeypatch):
    seen = scripted_validation(monkeypatch, [0.5, 0.5, 0.3])
    strategy = ranli()
    model = strategy.transfer(tiny_vit(), tiny_data(), ctx())
    assert strategy.selection.best_epoch == 0 and torch.equal(model.head.weight, seen[0]["weight"])
    seen = scripted_validation(monkeypatch, [0.0, 0.0, 0.0])
    strategy = ranli()
    model = strategy.transfer(tiny_vit(), tiny_data(), ctx())
    assert strategy.selection.best_epoch == -1 and torch.equal(model.head.weight, seen[2]["weight"])


def test_full_fine_tuning_restores_every_trained_weight(monkeypatch):
    scripted_validation(monkeypatch, [0.7, 0.1])
    weights = []
    real_score = BestEpochByValidation._score

    def score(self, epoch):
        weights.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        real_score(self, epoch)

    monkeypatch.setattr(BestEpochByValidation, "_score", score)
    strategy = ranli(variant="full", optimizer="adamw", lr=1e-2, epochs=2)
    model = strategy.transfer(tiny_vit(), tiny_data(), ctx())
    encoder = "body.model.blocks.0.attn.qkv.weight"
    assert not torch.equal(weights[0][encoder], weights[1][encoder])
    assert all(torch.equal(v, weights[0][k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("strategy", ["ranli", "roli"])
def test_select_best_needs_a_validation_split(strategy):
    cls = RoLIConfig if strategy == "roli" else RanLIConfig
    with pytest.raises(RtkError, match=f'{strategy}: select = "best" picks its epoch .* val_fraction'):
        RoLI(cls(variant="linear"), robust_init=strategy == "roli").transfer(tiny_vit(), tiny_data(val=0), ctx())


def test_ranli_linear_is_rolis_stage_one():
    # recipes/roli_cifar.toml: RanLI-Linear at probe_lr / probe_weight_decay is the run RoLI's stage 1 is.
    options = dict(epochs=2, batch_size=12, warmup_epochs=1, steps=1, val_steps=1)
    roli = RoLI(RoLIConfig(variant="lora", probe_epochs=2, lr=0.0, **options), robust_init=True)
    torch.manual_seed(0)
    roli.transfer(tiny_vit(), tiny_data(), ctx())
    cfg = RoLIConfig()
    linear = RoLI(RanLIConfig(variant="linear", lr=cfg.probe_lr, weight_decay=cfg.probe_weight_decay, **options),
                  robust_init=False)
    torch.manual_seed(0)
    model = linear.transfer(tiny_vit(), tiny_data(), ctx())
    assert linear.selection.scores == roli.probe.scores
    for key, value in roli.initial_head.items():
        assert torch.equal(model.head.state_dict()[key], value)


class Counting:
    """An objective with every optional hook and a state of its own."""

    steps_per_batch = 2

    def __init__(self):
        self.epochs, self.count = [], torch.tensor(0)

    def loss(self, model, images, labels):
        return model(images).sum()

    def start_epoch(self, epoch, epochs):
        self.epochs.append(epoch)

    def split(self, images, labels):
        return [(images[:1], labels[:1]), (images[1:], labels[1:])]

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_the_selection_wraps_an_objective_and_its_record_survives_a_resume(monkeypatch):
    scripted_validation(monkeypatch, [0.3, 0.8])
    model, inner = tiny_vit(), Counting()
    cfg = RanLIConfig(val_steps=1)
    names = ["head.weight", "head.bias"]
    selection = BestEpochByValidation(inner, model, tiny_data().val, ctx(), cfg, names)
    assert selection.steps_per_batch == 2 and selection.split is not None
    selection.start_epoch(0, 2)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    selection.start_epoch(1, 2)  # scores epoch 0
    selection.finish(2)  # scores epoch 1
    assert inner.epochs == [0, 1] and selection.scores == [0.3, 0.8] and selection.best_epoch == 1
    inner.count = torch.tensor(5)
    resumed = BestEpochByValidation(Counting(), model, tiny_data().val, ctx(), cfg, names)
    resumed.load_state_dict(selection.state_dict())
    assert (resumed.scores, resumed.best_epoch, resumed.best_score) == ([0.3, 0.8], 1, 0.8)
    assert resumed.objective.count == 5
    assert all(torch.equal(resumed.best_state[k], selection.best_state[k]) for k in names)


def test_a_resumed_fine_tuning_keeps_the_epoch_it_had_selected(monkeypatch, tmp_path):
    from rtk_plugins.roli.strategy import GroupedTraining, _selected_names

    seen = scripted_validation(monkeypatch, [0.6, 0.2])
    model, data = tiny_vit(), tiny_data()
    strategy = ranli(epochs=2)
    cfg = strategy.config
    params = strategy._install_variant(model)
    checkpoint = tmp_path / "train.pt"

    def training(resume):
        selection = BestEpochByValidation(strategy._attack_objective(), model, data.val, ctx(), cfg,
                                          _selected_names(model, params))
        return selection, GroupedTraining(model, data.train, selection, cfg, ctx(), params=params,
                                          checkpoint=checkpoint, resume=resume)

    selection, first = training(resume=False)
    first.run()  # killed before finish(): epoch 0 was scored, epoch 1 was not
    assert selection.scores == [0.6]
    resumed, second = training(resume=True)
    second.run()
    resumed.finish(cfg.epochs)
    resumed.restore_best()
    assert resumed.scores == [0.6, 0.2] and resumed.best_epoch == 0 and len(seen) == 2
    assert torch.equal(model.head.weight, seen[0]["weight"])
