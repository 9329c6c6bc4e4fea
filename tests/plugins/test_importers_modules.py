"""The ares, module and robustbench importers: a checkpoint in each format's exact layout (small random
networks), served from a local HTTP server and imported by a recipe run; the rtk model built again and
loaded from the store gives the original network's logits, its normalisation included.

RobustBench is not installed here: its tests inject a STUB ``robustbench`` package (``stub_robustbench``
below: ``robustbench.utils.load_model`` and ``robustbench.model_zoo.model_dicts`` with one tiny model)
into ``sys.modules``; they check rtk's side of the contract, not robustbench itself."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from rtk.errors import RtkError
from rtk.models import load_weights
from rtk.registry import default_registry
from rtk.services.store import SourceStore, sha256_file
from tests.http_server import serve

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
SWIN = "swin_tiny_patch4_window7_224"
SWIN_ARGS = {"embed_dim": 16, "depths": [1, 1, 2, 1], "num_heads": [1, 1, 2, 2]}
VIT = "vit_tiny_patch16_224"
VIT_ARGS = {"depth": 2}


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def toml_value(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def recipe(tmp_path, source: dict, imported: dict, extra: str = "", name: str = "recipe.toml") -> Path:
    lines = ['[run]', 'name = "import"', 'device = "cpu"', '', '[source]']
    lines += [f"{k} = {toml_value(v)}" for k, v in source.items()]
    lines += ['', '[source.import]'] + [f"{k} = {toml_value(v)}" for k, v in imported.items()]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def run_ok(cli, path, out):
    result = cli("run", path, "--out", out)
    assert result.exit_code == 0, result.output
    return result


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and BN statistic moved off its init, so that a key loaded into the wrong place shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=generator))
                m.running_var.copy_(1 + torch.rand(m.running_var.shape, generator=generator))
    return model.eval()


def normalised(x, mean, std):
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def stored_entry():
    (entry,) = SourceStore().entries()
    return entry


# --- ares ------------------------------------------------------------------------------------------

def timm_original(name: str, args: dict, num_classes: int):
    import timm

    torch.manual_seed(0)
    return perturbed(timm.create_model(name, pretrained=False, num_classes=num_classes, **args))


def old_swin_layout(model: nn.Module) -> dict:
    """The pre-0.9 timm / Microsoft Swin layout: patch merging at the end of stage i (layers.{i}.downsample,
    timm >= 0.9 has it at the start of stage i + 1), the classifier at head.*, and the relative position
    index and attention mask buffers saved with the weights."""
    state = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        state[key.replace("head.fc.", "head.")] = value
    for key, value in model.named_buffers():
        if key.endswith(("relative_position_index", "attn_mask")) and value is not None:
            state[key] = value
    assert "layers.0.downsample.reduction.weight" in state and "head.weight" in state
    return state


@pytest.mark.parametrize("layout", ["new", "old"])
def test_ares_swin_both_key_layouts(layout, tmp_path, cli):
    original = timm_original(SWIN, SWIN_ARGS, 7)
    state = original.state_dict() if layout == "new" else old_swin_layout(original)
    if layout == "new":
        assert "layers.1.downsample.reduction.weight" in state and "head.fc.weight" in state
    check_ares(tmp_path, cli, SWIN, SWIN_ARGS, original, state, 7)


def test_ares_vit_takes_imagenet_normalisation(tmp_path, cli):
    original = timm_original(VIT, VIT_ARGS, 5)
    # timm's own ViT default is mean = std = 0.5; the ARES file expects the ImageNet constants outside
    model = check_ares(tmp_path, cli, VIT, VIT_ARGS, original, original.state_dict(), 5)
    assert torch.allclose(model.preprocess[1].mean.flatten(), torch.tensor(IMAGENET[0]))


def check_ares(tmp_path, cli, name, args, original, state, num_classes):
    www = tmp_path / "www"
    www.mkdir()
    torch.save(state, www / "ARES_model_AT.pth")  # a bare state dict, as ARES publishes
    with serve(www) as server:
        path = recipe(tmp_path, {"model": f"timm/{name}", "model_args": args},
                      {"format": "ares", "url": f"{server.url}/ARES_model_AT.pth",
                       "sha256": sha256_file(www / "ARES_model_AT.pth")})
        run_ok(cli, path, tmp_path / "out")
        assert server.requests == ["ARES_model_AT.pth"]
    entry = stored_entry()
    assert entry.info["num_classes"] == num_classes
    model = default_registry().build("model", f"timm/{name}", {"model_args": args}, num_classes=num_classes)
    load_weights(model, entry.weights)
    model.eval()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = original(normalised(x, *IMAGENET))
        found = model(x)
    assert torch.allclose(found, expected, atol=1e-5, rtol=1e-5), (found - expected).abs().max()
    return model


def test_ares_names_offending_keys_in_one_line(tmp_path):
    from rtk.errors import WeightsError
    from rtk_plugins.importers import AresImport
    from rtk_plugins.importers.timm_state import Ares

    original = timm_original(VIT, VIT_ARGS, 5)
    state = dict(original.state_dict())
    state["blocks.0.extra.weight"] = torch.zeros(1)
    del state["norm.bias"]
    importer = Ares(AresImport())
    model = default_registry().build("model", f"timm/{VIT}", {"model_args": VIT_ARGS}, num_classes=5)
    with pytest.raises(WeightsError) as caught:
        importer.convert(state, model)
    message = str(caught.value)
    assert "norm.bias" in message and "blocks.0.extra.weight" in message and len(message.splitlines()) == 1


# --- module ----------------------------------------------------------------------------------------

class TinyNet(nn.Module):
    """A user's own network for 1x8x8 digits (the factory "tests.plugins.test_importers_modules:TinyNet")."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.mid = nn.Sequential(nn.Flatten(), nn.Linear(4 * width, 16), nn.ReLU())
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.classifier(self.mid(self.pool(torch.relu(self.bn(self.conv(x))))))


TINY_FACTORY = "tests.plugins.test_importers_modules:TinyNet"
RESNET = {"factory": "torchvision.models:resnet18", "head": "fc", "kwargs": {"num_classes": 6}}
TINY = {"factory": TINY_FACTORY, "head": "classifier", "kwargs": {"num_classes": 4, "width": 6}}


def module_config(**options):
    from rtk_plugins.importers import ModuleImport

    return ModuleImport(**options)


@pytest.mark.parametrize("case", ["resnet18", "tinynet"])
def test_module_import_matches_the_original(case, tmp_path, cli):
    from rtk_plugins.importers.module_factory import ModuleFactory

    if case == "resnet18":
        import torchvision

        torch.manual_seed(0)
        original = perturbed(torchvision.models.resnet18(num_classes=6))
        # a training checkpoint: the state dict under "state_dict", saved from DataParallel
        contents = {"state_dict": {f"module.{k}": v for k, v in original.state_dict().items()},
                    "epoch": torch.tensor(90)}
        options = dict(RESNET, state_key="state_dict", strip_prefix="module.", mean=IMAGENET[0], std=IMAGENET[1])
        shape, classes, head = (2, 3, 64, 64), 6, original.fc
    else:
        torch.manual_seed(0)
        original = perturbed(TinyNet(num_classes=4, width=6))
        contents = original.state_dict()
        options = dict(TINY)
        shape, classes, head = (2, 1, 8, 8), 4, original.classifier
    www = tmp_path / "www"
    www.mkdir()
    torch.save(contents, www / "model.pt")
    with serve(www) as server:
        path = recipe(tmp_path, {}, {"format": "module", "url": f"{server.url}/model.pt",
                                     "sha256": sha256_file(www / "model.pt"), **options})
        run_ok(cli, path, tmp_path / "out")
        run_ok(cli, path, tmp_path / "again")  # from the store: built again by the importer, nothing fetched
        assert server.requests == ["model.pt"]
    entry = stored_entry()
    assert entry.info["num_classes"] == classes and entry.info["model"] == "module"

    model = ModuleFactory(module_config(**options)).build(None, classes)
    load_weights(model, entry.weights)
    model.eval()
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    mean, std = options.get("mean"), options.get("std")
    inputs = normalised(x, mean, std) if mean else x
    seen = []
    hook = head.register_forward_hook(lambda module, args, output: seen.append(args[0].detach()))
    with torch.no_grad():
        expected = original(inputs)
        found, features = model(x), model.features(x)
    hook.remove()
    assert torch.allclose(found, expected, atol=1e-5, rtol=1e-5), (found - expected).abs().max()
    assert torch.allclose(features, seen[0], atol=1e-5, rtol=1e-5)  # features(x) is what the head sees
    assert model.feature_dim == head.in_features and model.blocks[-1] is model.head
    names = [n.removeprefix("body.") for n in model.block_names]
    if case == "resnet18":
        assert names == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    else:
        assert names == ["conv", "bn", "mid"]


def test_module_source_num_classes_resets_the_head(tmp_path):
    from rtk_plugins.importers.module_factory import ModuleFactory

    torch.manual_seed(0)
    original = perturbed(TinyNet(num_classes=4, width=6))
    importer = ModuleFactory(module_config(**TINY))
    assert importer.num_classes(original.state_dict()) == 4
    model = importer.build(None, 3)  # [source] num_classes = 3: the body is loaded, the head is fresh
    importer.convert(original.state_dict(), model)
    assert model.num_classes == 3
    assert torch.equal(model.body.conv.weight, original.conv.weight)


@pytest.mark.parametrize("factory, message", [
    ("torchvision.models.resnet18", 'expected "package.module:function"'),
    ("no_such_package_rtk.models:net", "cannot import no_such_package_rtk.models"),
    ("torchvision.models:no_such_net", "has no attribute no_such_net"),
    ("math:pi", "not a callable"),
])
def test_a_bad_factory_is_one_clear_line(factory, message):
    from rtk_plugins.importers.module_factory import ModuleFactory

    with pytest.raises(RtkError, match=re.escape(message)) as caught:
        ModuleFactory(module_config(factory=factory, head="fc")).build(None, 10)
    assert len(str(caught.value).splitlines()) == 1


def test_a_bad_factory_fails_the_run_with_exit_2(tmp_path, cli):
    torch.save(TinyNet().state_dict(), tmp_path / "tiny.pt")
    path = recipe(tmp_path, {}, {"format": "module", "path": "tiny.pt", "factory": "no_such_package_rtk:net",
                                 "head": "classifier"})
    result = cli("run", path, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "cannot import no_such_package_rtk" in result.output


@pytest.mark.parametrize("head, message", [
    ("conv", 'has a Conv2d, not an nn.Linear, as "conv"'),
    ("fc", 'has no layer "fc"'),
])
def test_the_head_must_be_a_linear_layer(head, message):
    from rtk_plugins.importers.module_factory import ModuleFactory

    config = module_config(factory=TINY_FACTORY, head=head)
    with pytest.raises(RtkError, match=re.escape(message)) as caught:
        ModuleFactory(config).build(None, 10)
    assert "classifier" in str(caught.value)  # the error lists the module's Linear layers


def test_blocks_go_through_a_normalising_wrapper():
    """RobustBench's ImageNet models are Sequential(normalize, model): the blocks are the inner model's."""
    from collections import OrderedDict

    from rtk.models import Normalize
    from rtk_plugins.importers.module_factory import wrap

    net = nn.Sequential(OrderedDict(normalize=Normalize(*IMAGENET), model=TinyNet()))
    model = wrap(net, "model.classifier")
    assert model.block_names == ["body.model.conv", "body.model.bn", "body.model.mid"]
    assert isinstance(net.model.classifier, nn.Identity) and model.feature_dim == 16


def test_a_transfer_strategy_runs_on_a_module_source(tmp_path, cli):
    torch.manual_seed(0)
    torch.save(perturbed(TinyNet(num_classes=10)).state_dict(), tmp_path / "tiny.pt")
    extra = """
[target]
dataset = "digits"
classes = [5, 6, 7, 8, 9]

[transfer]
strategy = "linear-probe"
epochs = 1

[eval]
n = 40
"""
    path = recipe(tmp_path, {}, {"format": "module", "path": "tiny.pt", "factory": TINY_FACTORY,
                                 "head": "classifier"}, extra)
    run_ok(cli, path, tmp_path / "out")


# --- robustbench (a stub package; robustbench itself is not installed) -------------------------------

class StubRobustNet(nn.Module):
    """A RobustBench-style CIFAR network: normalisation inside (buffers), head "linear"."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.register_buffer("mu", torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
        self.register_buffer("sigma", torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 6, 3, stride=2)
        self.bn = nn.BatchNorm2d(6)
        self.linear = nn.Linear(6, 10)
        self.scale = scale

    def forward(self, x):
        z = torch.relu(self.bn(self.conv((x - self.mu) / self.sigma))).mean(dim=(2, 3))
        return self.linear(z) * self.scale


def stub_weights(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return perturbed(StubRobustNet(), seed).state_dict()


@pytest.fixture
def stub_robustbench(monkeypatch):
    """A STUB of the robustbench package (not robustbench): ``load_model`` reads
    {model_dir}/{dataset}/{threat_model}/{name}.pt and "downloads" it (writes stub_weights()) when
    missing, as robustbench does from Google Drive; ``model_dicts`` lists one model per enum key."""
    from enum import Enum

    class BenchmarkDataset(Enum):
        cifar_10 = "cifar10"

    class ThreatModel(Enum):
        Linf = "Linf"

    calls = []
    zoo = {"Stub2020Tiny": {"model": StubRobustNet, "gdrive_id": "stub"},
           "Stub2020Scaled": {"model": lambda: StubRobustNet(scale=2.0), "gdrive_id": "stub"}}

    def load_model(model_name, model_dir="./models", dataset="cifar10", threat_model="Linf", custom_checkpoint=""):
        path = Path(model_dir) / dataset / threat_model / f"{model_name}.pt"
        downloaded = not path.is_file()
        if downloaded:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(stub_weights(), path)
        calls.append({"name": model_name, "path": path, "downloaded": downloaded})
        model = zoo[model_name]["model"]()
        checkpoint = torch.load(path, weights_only=True)
        model.load_state_dict(checkpoint.get("state_dict", checkpoint))
        return model.eval()

    package = types.ModuleType("robustbench")
    package.__path__ = []
    utils = types.ModuleType("robustbench.utils")
    utils.load_model = load_model
    model_zoo = types.ModuleType("robustbench.model_zoo")
    model_zoo.model_dicts = {BenchmarkDataset.cifar_10: {ThreatModel.Linf: zoo}}
    package.utils, package.model_zoo = utils, model_zoo
    for name, module in (("robustbench", package), ("robustbench.utils", utils), ("robustbench.model_zoo", model_zoo)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def robustbench_config(name="Stub2020Tiny"):
    from rtk_plugins.importers import RobustBenchImport

    return RobustBenchImport(name=name, dataset="cifar10", threat_model="Linf", head="linear")


def check_logits(model, weights: dict):
    original = StubRobustNet()
    original.load_state_dict(weights)
    original.eval()
    model.eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), original(x), atol=1e-5, rtol=1e-5)


def test_robustbench_file_imported_once_then_from_the_store(stub_robustbench, tmp_path, cli):
    from rtk_plugins.importers.module_factory import RobustBench

    www = tmp_path / "www"
    www.mkdir()
    weights = stub_weights(seed=4)
    torch.save({"state_dict": weights}, www / "Stub2020Tiny.pt")  # the file robustbench fetches
    with serve(www) as server:
        path = recipe(tmp_path, {}, {"format": "robustbench", "url": f"{server.url}/Stub2020Tiny.pt",
                                     "name": "Stub2020Tiny", "head": "linear"})
        run_ok(cli, path, tmp_path / "out")
        assert len(stub_robustbench) == 1 and not stub_robustbench[0]["downloaded"]  # it read rtk's download
        run_ok(cli, path, tmp_path / "again")
        assert len(stub_robustbench) == 1 and server.requests == ["Stub2020Tiny.pt"]  # the store's weights
    entry = stored_entry()
    assert entry.info["num_classes"] == 10
    model = RobustBench(robustbench_config()).build(None, 10)
    load_weights(model, entry.weights)
    check_logits(model, weights)
    assert isinstance(model.preprocess, nn.Identity)  # the normalisation is the network's own buffers


def test_a_recipe_may_let_robustbench_fetch_its_own_file(stub_robustbench, tmp_path, cli, source_store):
    """No path, url or hub: robustbench downloads into the store's downloads/robustbench once; the
    store keeps the converted model under a key of the format and its options."""
    path = recipe(tmp_path, {}, {"format": "robustbench", "name": "Stub2020Tiny", "head": "linear"})
    run_ok(cli, path, tmp_path / "out")
    (call,) = stub_robustbench
    assert call["downloaded"] and call["path"].is_relative_to(source_store / "downloads" / "robustbench")
    run_ok(cli, path, tmp_path / "again")
    assert len(stub_robustbench) == 1  # the second run loaded the store's entry
    entry = stored_entry()
    assert entry.info["num_classes"] == 10


def test_robustbench_without_a_file_downloads_through_robustbench(stub_robustbench, source_store):
    """read(None): no [source.import] file (what rtk's core needs to allow for this format); robustbench
    downloads into the store's downloads/robustbench."""
    from rtk_plugins.importers.module_factory import RobustBench

    importer = RobustBench(robustbench_config())
    contents = importer.read(None)
    model = importer.build(None, importer.num_classes(contents))
    importer.convert(contents, model)
    (call,) = stub_robustbench
    assert call["downloaded"] and call["path"].is_relative_to(source_store / "downloads" / "robustbench")
    check_logits(model, stub_weights())


def test_robustbench_refuses_a_network_whose_output_is_not_its_head(stub_robustbench):
    from rtk_plugins.importers.module_factory import RobustBench

    importer = RobustBench(robustbench_config("Stub2020Scaled"))
    model = importer.build(None, 10)
    with pytest.raises(RtkError, match="not its layer \"linear\"'s output"):
        importer.convert(None, model)


def test_robustbench_unknown_name_lists_close_ones(stub_robustbench):
    from rtk_plugins.importers.module_factory import RobustBench

    with pytest.raises(RtkError, match="no model \"Stub2020Tin\" .*did you mean Stub2020Tiny"):
        RobustBench(robustbench_config("Stub2020Tin")).build(None, 10)


def test_robustbench_missing_names_the_extra_and_its_pins(monkeypatch):
    from rtk_plugins.importers.module_factory import RobustBench

    monkeypatch.setitem(sys.modules, "robustbench", None)  # as if not installed
    with pytest.raises(RtkError) as caught:
        RobustBench(robustbench_config()).build(None, 10)
    message = str(caught.value)
    assert 'pip install "rtk[robustbench]"' in message and "timm==1.0.9" in message
    assert len(message.splitlines()) == 1
