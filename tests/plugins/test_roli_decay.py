"""RoLI's weight-decay groups (DongXzz/RoLI src/solver/optimizer.py:31-57): AdamW exempts every
parameter whose name contains "bias" (so Swin's relative_position_bias_table) and decays the
LayerNorm weights (named norm1/norm2/norm, never "LayerNorm"); SGD exempts only the head's bias;
the optimizer rtk trains with has exactly those groups, also after a resume."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from rtk_plugins.roli import RanLIConfig
from rtk_plugins.roli.strategy import GroupedTraining, RoLI, decay_groups
from tests.plugins.test_roli import ctx, tiny_data, tiny_swin

pytestmark = pytest.mark.usefixtures("one_thread")


def split_names(model, params, **options):
    cfg = RanLIConfig(**options)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, exempt = decay_groups(model, params, cfg)
    return {names[id(p)] for p in decayed}, {names[id(p)] for p in exempt}


def test_adamw_follows_the_codes_names_on_a_swin():
    model = tiny_swin()
    params = list(model.parameters())
    decayed, exempt = split_names(model, params, optimizer="adamw")
    assert decayed.isdisjoint(exempt) and len(decayed) + len(exempt) == len(params)
    table = "body.model.layers.0.blocks.0.attn.relative_position_bias_table"
    norm = "body.model.layers.0.blocks.0.norm1"
    assert model.get_parameter(table).ndim == 2  # the rank rule would decay it
    assert {table, f"{norm}.bias", "body.model.norm.bias", "head.bias", "body.model.patch_embed.proj.bias"} <= exempt
    assert {f"{norm}.weight", "body.model.norm.weight", "body.model.patch_embed.norm.weight", "head.weight",
            "body.model.layers.0.blocks.0.attn.qkv.weight"} <= decayed
    assert exempt == {n for n, _ in model.named_parameters() if "bias" in n}


def test_sgd_exempts_only_the_heads_bias_and_rank_is_rtks_rule():
    model = tiny_swin()
    params = list(model.parameters())
    assert split_names(model, params, optimizer="sgd")[1] == {"head.bias"}
    assert split_names(model, params, optimizer="adam")[1] == {"head.bias"}
    decayed, exempt = split_names(model, params, optimizer="adamw", no_decay="rank")
    assert "body.model.layers.0.blocks.0.attn.relative_position_bias_table" in decayed
    assert "body.model.layers.0.blocks.0.norm1.weight" in exempt
    assert split_names(model, params, optimizer="adamw", decay_bias_and_norm=True)[1] == set()


def test_lora_and_adapter_weights_decay_their_biases_do_not():
    model = tiny_swin()
    params = RoLI(RanLIConfig(variant="adapter"), robust_init=False)._install_variant(model)
    decayed, exempt = split_names(model, params, optimizer="adamw")
    assert "body.model.layers.0.blocks.0.mlp.adapter.down.weight" in decayed
    assert "body.model.layers.0.blocks.0.mlp.adapter.down.bias" in exempt


def weight_decay_by_name(training, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: group["weight_decay"] for group in training.optimizer.param_groups for p in group["params"]}


def test_the_training_optimizer_has_the_codes_groups_also_after_a_resume(tmp_path):
    model = tiny_swin()
    for p in model.parameters():
        p.requires_grad_(True)
    cfg = dataclasses.replace(RanLIConfig(epochs=1, batch_size=12, steps=1, warmup_epochs=0), optimizer="adamw")
    data = tiny_data()
    objective = RoLI(cfg, robust_init=False)._attack_objective()
    checkpoint = tmp_path / "train.pt"
    training = GroupedTraining(model, data.train, objective, cfg, ctx(), checkpoint=checkpoint, resume=False)
    decay = weight_decay_by_name(training, model)
    assert decay["body.model.layers.0.blocks.0.attn.relative_position_bias_table"] == 0.0
    assert decay["body.model.layers.0.blocks.0.norm1.weight"] == 0.01 and decay["head.bias"] == 0.0
    assert isinstance(training.optimizer, torch.optim.AdamW) and training.schedule.optimizer is training.optimizer
    training.run()
    resumed = GroupedTraining(model, data.train, objective, cfg, ctx(), checkpoint=checkpoint, resume=True)
    assert resumed.first_epoch == 1 and weight_decay_by_name(resumed, model) == decay
    assert resumed.optimizer.state_dict()["state"], "the optimizer state was restored into the grouped optimizer"
