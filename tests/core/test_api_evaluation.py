"""rtk.evaluate and rtk.certify (rtk.api.evaluation): the numbers `rtk eval` writes, any Dataset or
DataLoader, every way of naming attacks, and one-line errors for bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from rtk.api.components import attack, model as build_model
from rtk.api.evaluation import CertificationResult, EvaluationResult, certify, evaluate
from rtk.errors import RtkError, UnknownComponentError
from tests.helpers import REPO

CLASSES = [0, 1, 2, 3, 4]
ARCH = {"channels": [8, 16], "feature_dim": 32}
QUIET = {"device": "cpu", "progress": False}
CLI_MODEL = ("--model", "small-cnn", "--model-option", "channels=[8,16]", "--model-option", "feature_dim=32",
             "--dataset", "digits", "--data", "classes=[0,1,2,3,4]", "--device", "cpu", "--quiet")


def digits(split: str = "test"):
    """A split of digits 0-4 as rtk loads it (an rtk.data.ImageSet)."""
    from rtk.config.fields import build_config
    from rtk.data import apply_options
    from rtk.registry import default_registry

    component = default_registry().get("dataset", "digits")
    config = build_config(component.config, {"classes": CLASSES})
    return getattr(apply_options(component.factory(config), config), split)


class Items(torch.utils.data.Dataset):
    """A plain torch Dataset over an image set, counting the items read."""

    def __init__(self, images, transform=lambda x: x):
        self.images, self.transform, self.reads = images, transform, 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.reads += 1
        image, label = self.images[i]
        return self.transform(image), label


@pytest.fixture(scope="module")
def weights(tmp_path_factory, one_thread):
    """A small CNN trained for a few steps on digits 0-4 (about 90% clean accuracy), as safetensors."""
    from rtk.models import save_weights

    train = digits("train")
    net = build_model("small-cnn", num_classes=5, **ARCH)
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    generator = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(60):
        images, labels = train.take(torch.randint(len(train), (64,), generator=generator))
        loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("weights") / "digits.safetensors"
    save_weights(net, path)
    return path


@pytest.fixture
def net(weights):
    return build_model("small-cnn", weights=weights, **ARCH)


def cli_run(cli, tmp_path, weights, *options) -> dict:
    out = tmp_path / "cli"
    result = cli("eval", *CLI_MODEL, "--weights", weights, "--out", out, *options)
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text())["runs"][0]


def test_evaluate_gives_the_numbers_rtk_eval_writes(net, weights, cli, tmp_path):
    result = evaluate(net, "digits", ["pgd"], data_options={"classes": CLASSES}, eps=0.1, steps=3, n=60, **QUIET)
    run = cli_run(cli, tmp_path, weights, "--attack", "pgd", "--eps", "0.1", "--steps", "3", "--n", "60")
    assert result.metrics == run["metrics"] and result.n == run["n_eval"] == 60
    assert result.flags == run["flags"]
    assert result["pgd"] < result["clean"]  # the attack did something: the equality is not between two no-ops
    assert list(tmp_path.iterdir()) == [tmp_path / "cli"]  # the API wrote no run folder


def test_certify_gives_the_numbers_of_a_certify_table(net, weights, cli, tmp_path):
    table = 'certify={certifier="cohen", sigma=0.25, n=100, n0=10, batch_size=100}'
    run = cli_run(cli, tmp_path, weights, "--n", "8", "--set", table)
    result = certify(net, "digits", data_options={"classes": CLASSES}, sigma=0.25, n=100, n_examples=8,
                     options={"n0": 10, "batch_size": 100}, **QUIET)
    assert isinstance(result, CertificationResult) and result.certifier == "cohen"
    assert result.metrics == run["certify"]["metrics"] and result.n == run["certify"]["n"] == 8
    assert result.summary["curve"] == run["certify"]["curve"]
    assert [r["index"] for r in result.rows] == list(range(8))
    assert [f["name"] for f in result.flags] == ["certify-sample-size"]  # n=100 caps every radius below 0.5
    assert 0 < result.metrics["clean_smoothed_accuracy"] <= 1


def test_a_dataset_a_dataloader_and_an_image_set_give_the_same_numbers(net):
    test = digits()
    options = {"attacks": ["fgsm"], "eps": 0.1, "n": 40, "sanity": False, "per_class": True, **QUIET}
    reference = evaluate(net, test, **options)
    items = Items(test)
    as_dataset = evaluate(net, items, **options)
    loader = Items(test)
    as_loader = evaluate(net, torch.utils.data.DataLoader(loader, batch_size=16), **options)
    for other in (as_dataset, as_loader):
        assert other.metrics == reference.metrics and other.per_class == reference.per_class and other.n == 40
    assert items.reads <= 41  # the evaluated examples and the model check's first one, nothing more
    assert loader.reads == 48  # whole batches up to n, not the whole test set
    assert reference["fgsm"] < reference["clean"]


def test_the_result_reports_intervals_per_class_and_tables(net):
    from rich.table import Table
    from scipy.stats import binomtest

    result = evaluate(net, "digits", ("pgd",), data_options={"classes": CLASSES}, eps="8/255", steps=2, n=50,
                      sanity=False, per_class=True, **QUIET)
    assert isinstance(result, EvaluationResult) and list(result.metrics) == ["clean", "pgd", "robust"]
    k = int(result.correct["clean"].sum())
    exact = binomtest(k, 50).proportion_ci(method="exact")
    assert result.intervals["clean"] == pytest.approx((exact.low, exact.high))
    assert result["clean"] == pytest.approx(k / 50)
    labels = digits().labels[result.indices]
    for c, accuracy in enumerate(result.per_class["robust"]):
        assert accuracy == pytest.approx(result.correct["robust"][labels == c].float().mean().item())
    assert result.class_names == ["0", "1", "2", "3", "4"]
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["metrics"] == result.metrics and payload["n"] == 50 and len(payload["per_class"]["clean"]) == 5
    assert isinstance(result.table(), Table) and "robust" in str(result) and "robust=" in repr(result)
    assert "<table>" in result._repr_html_()


def test_attacks_are_named_every_way_and_global_options_reach_those_without_their_own(net):
    class Identity:
        norm, eps, label = "Linf", 0.0, "identity"

        def __call__(self, model, images, labels):
            return images.clone()

    attacks = [("fgsm", {"eps": 0.0, "label": "zero"}), {"name": "fgsm", "label": "big"},
               attack("fgsm", eps=0.05, label="own"), Identity()]
    result = evaluate(net, digits(), attacks, eps=0.3, n=60, sanity=False, **QUIET)
    assert list(result.metrics) == ["clean", "zero", "big", "own", "identity", "robust"]
    assert result["zero"] == result["identity"] == result["clean"]  # their own eps 0, not the global 0.3
    assert result["big"] < result["own"] <= result["clean"]  # the global eps reached "big" alone
    assert result["robust"] == result["big"]
    clean_only = evaluate(net, digits(), (), n=30, sanity=False, **QUIET)
    assert list(clean_only.metrics) == ["clean"] and clean_only.attacks == []  # robust only with attacks


@pytest.mark.parametrize("attacks, options, message", [
    (["pgdd"], {}, 'unknown attack "pgdd"; did you mean'),
    (["pgd"], {"eps": "eight"}, 'eps: expected a number or a fraction like "8/255"'),
    ([("pgd", {"stepz": 3})], {}, 'unknown key "stepz"'),
    (["fgsm", "fgsm"], {}, 'label "fgsm" is used twice'),
    ([{"name": "fgsm", "label": "clean"}], {}, 'label "clean"'),
    (["fgsm"], {"steps": 3}, "steps=3 reaches none of the attacks (fgsm)"),
    ([{"eps": 0.1}], {}, 'a dict needs "name"'),
    ([42], {}, "attacks[0]: expected an attack name"),
])
def test_bad_attacks_are_one_line_errors(net, attacks, options, message):
    with pytest.raises(RtkError) as error:
        evaluate(net, digits(), attacks, n=10, sanity=False, **options, **QUIET)
    assert message in str(error.value) and "\n" not in str(error.value)
    if "pgdd" in attacks:
        assert isinstance(error.value, UnknownComponentError)


def test_bad_data_and_models_are_one_line_errors(net):
    test = digits()
    cases = [
        (net, Items(test, lambda x: (x - 0.5) / 0.25), {}, "not [0, 1]"),
        (net, Items(test, lambda x: x.numpy()), {}, "add transforms.ToTensor()"),
        (net, test, {"data_options": {"classes": [1]}}, "data_options: they configure a dataset given by name"),
        (net, "digits", {"split": "val"}, 'hold one out with data_options={"val_fraction": 0.1}'),
        (net, "digits", {"split": "dev"}, 'split: "dev" is not one of test, val, train'),
        (net, "digits", {"data_options": {"classes": [42]}}, "classes [42] are not valid for digits"),
        (net, "digits", {"data_options": {"clases": [1]}}, 'unknown key "clases"'),
        (net, 3.5, {}, "data: expected a dataset name, a torch Dataset"),
        (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), test, {}, "3 outputs but the data has 5"),
        (lambda x: x, test, {}, "model: expected a torch nn.Module"),
        (net, test, {"n": 0}, "n: must be at least 1"),
        (net, test, {"attack_order": "random"}, "attack_order: expected one of"),
    ]
    for model, data, options, message in cases:
        with pytest.raises(RtkError) as error:
            evaluate(model, data, ["fgsm"], sanity=False, **{"n": 10, **options}, **QUIET)
            pytest.fail(f"no error for {message}")
        assert message in str(error.value), (message, str(error.value))
        assert "\n" not in str(error.value)


def test_a_validation_split_held_out_by_option(net):
    result = evaluate(net, "digits", (), data_options={"classes": CLASSES, "val_fraction": 0.2}, split="val",
                      sanity=False, **QUIET)
    assert 0 < result.n < len(digits("train")) and result["clean"] > 0.5


def test_certify_options_rows_and_out_folder(net, tmp_path):
    total = len(digits())
    result = certify(net, digits(), sigma="1/4", n=50, n_examples=4, subset="stride",
                     options={"n0": 10, "batch_size": 50, "radii": [0.0, 0.1]}, out=tmp_path / "out", **QUIET)
    assert result.n == 4 and [r["index"] for r in result.rows] == [i * total // 4 for i in range(4)]  # spread
    assert result.summary["sigma"] == 0.25 and [r for r, _ in result.summary["curve"]] == [0.0, 0.1]
    assert all(r["radius"] >= 0 and r["prediction"] in (-1, *range(5)) for r in result.rows)
    written = json.loads((tmp_path / "out" / "certification.json").read_text())
    assert written["metrics"] == result.metrics and (tmp_path / "out" / "certify-0.tsv").is_file()
    assert "acr" in str(result) and "acr" not in result.intervals  # a radius, not a proportion
    low, high = result.intervals["clean_smoothed_accuracy"]
    assert low <= result["clean_smoothed_accuracy"] <= high and 0 <= low < high <= 1
    from_items = certify(net, Items(digits()), sigma=0.25, n=50, n_examples=4, subset="stride",
                         options={"n0": 10, "batch_size": 50, "radii": [0.0, 0.1]}, **QUIET)
    assert from_items.metrics == result.metrics and from_items.rows[2]["index"] == result.rows[2]["index"]
    for options, message in [({"certifier": "cohn"}, 'unknown certifier "cohn"'),
                              ({"sigma": 0.5, "options": {"sigma": 0.25}}, "sigma: given as sigma=0.5 and in options"),
                              ({"n": 3}, "n: n=3 cannot certify any example"),
                              ({"options": {"n1": 3}}, 'unknown key "n1"')]:
        with pytest.raises(RtkError) as error:
            certify(net, digits(), n_examples=2, **{"n": 100, **options}, **QUIET)
        assert message in str(error.value), (message, str(error.value))


def test_evaluate_writes_a_file_only_when_asked(net, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = evaluate(net, digits(), ["fgsm"], n=20, sanity=False, **QUIET)
    assert list(tmp_path.iterdir()) == []
    evaluate(net, digits(), ["fgsm"], n=20, sanity=False, out="saved", **QUIET)
    assert json.loads((tmp_path / "saved" / "evaluation.json").read_text())["metrics"] == result.metrics


def test_importing_the_api_loads_no_torch_and_no_plugin():
    modules = "rtk.api.evaluation, rtk.api.reports, rtk.api.inputs, rtk.api.attack_lists, rtk.api.components"
    code = (f"import sys, {modules}; heavy = sorted(m for m in sys.modules"
            " if m.split('.')[0] in ('torch', 'timm', 'torchattacks', 'rtk_plugins')); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_every_public_name_is_documented_with_an_example():
    import rtk.api.components
    import rtk.api.evaluation

    for module in (rtk.api.evaluation, rtk.api.components):
        for name in module.__all__:
            value = getattr(module, name)
            assert value.__doc__, f"{module.__name__}.{name} has no docstring"
            if callable(value) and not isinstance(value, type):
                assert "Example::" in value.__doc__ and ">>> " in value.__doc__, f"{name}: no example"


def test_import_rtk_exports_the_api():
    import rtk
    import rtk.api.components
    import rtk.api.evaluation

    for name in ("evaluate", "certify", "attack", "EvaluationResult", "CertificationResult"):
        assert getattr(rtk, name) is getattr(rtk.api.evaluation, name)
    for name in ("model", "source", "sources", "components", "options"):
        assert getattr(rtk, name) is getattr(rtk.api.components, name)
