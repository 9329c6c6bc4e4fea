"""Torchvision-layout ResNet importers (rtk_plugins.importers.torchvision_resnets): each format's file
built in its reference layout (key names, nesting, extra entries, pickling), served over local
HTTP, imported by `rtk run` into the store, and loaded into a fresh rtk model whose logits equal
the original network's (its normalisation included). Refusals are one line, exit code 2."""
from __future__ import annotations

import hashlib
import os

import dill
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from rtk.models import load_weights
from rtk.registry import default_registry
from rtk.services.store import SourceStore
from tests.http_server import serve

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR_SMOOTHING = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


# --- the original networks -------------------------------------------------------------------

def randomize(net: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics (eval-mode BN is then no identity), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
                module.num_batches_tracked.fill_(1234)
    return net.eval()


def resnet18(num_classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(torchvision.models.resnet18(num_classes=num_classes), seed)


class Normalized(nn.Module):
    """The original pipeline: (clamped) normalisation outside the network, then the network."""

    def __init__(self, net, mean, std, clamp=False):
        super().__init__()
        self.net, self.clamp = net, clamp
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    def forward(self, x):
        x = x.clamp(0, 1) if self.clamp else x
        return self.net((x - self.mean) / self.std)


class CifarBlock(nn.Module):
    """robustness/cifar_models/resnet.py BasicBlock."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet18(nn.Module):
    """robustness/cifar_models/resnet.py ResNet18 (avg_pool2d(out, 4) on 32 px inputs, ``linear`` head)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin, stages = 64, []
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(CifarBlock(cin, width, stride), CifarBlock(width, width, 1)))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


# --- the files, in each reference's layout ---------------------------------------------------

class InputNormalize(nn.Module):
    """robustness.tools.helpers.InputNormalize: buffers new_mean / new_std of shape [3, 1, 1]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("new_mean", torch.tensor(mean)[..., None, None])
        self.register_buffer("new_std", torch.tensor(std)[..., None, None])


class Attacker(nn.Module):
    def __init__(self, model, mean, std):
        super().__init__()
        self.normalize = InputNormalize(mean, std)
        self.model = model


class AttackerModel(nn.Module):
    """robustness.attacker.AttackerModel: normalizer, model, attacker (a second reference to model)."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.normalizer = InputNormalize(mean, std)
        self.model = model
        self.attacker = Attacker(model, mean, std)


def trained_optimizer(net: nn.Module, size: int):
    """A real SGD with momentum after one step, and a StepLR after one epoch (their state dicts)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.1)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    net(torch.rand(2, 3, size, size)).sum().backward()
    optimizer.step()
    schedule.step()
    net.load_state_dict(state)  # the weights the test compares against stay those of randomize()
    net.zero_grad(set_to_none=True)
    net.eval()
    return optimizer, schedule


def legacy_save(obj, path, cuda=False, **kwargs):
    """torch.save in the pre-1.6 format; ``cuda``: the storages' location reads "cuda:0", as in
    files saved from a GPU (torch.load maps them to the CPU)."""
    torch.save(obj, path, _use_new_zipfile_serialization=False, **kwargs)
    if cuda:
        data = path.read_bytes()
        assert b"X\x03\x00\x00\x00cpu" in data
        path.write_bytes(data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"))


def madrylab_file(path, net, mean=IMAGENET[0], std=IMAGENET[1], key="model", size=64, **extra):
    """robustness/train.py's checkpoint: torch.save(sd_info, pickle_module=dill), torch 1.x format."""
    attacker = nn.DataParallel(AttackerModel(net, mean, std))
    optimizer, schedule = trained_optimizer(attacker.module.model, size)
    info = {key: attacker.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "epoch": 1, "amp": None, "adv_prec1": torch.tensor([37.5]), **extra}
    legacy_save(info, path, pickle_module=dill)
    return path


class NormalizeLayer(nn.Module):
    """locuslab/smoothing code/datasets.py NormalizeLayer: its constants are plain attributes."""

    def __init__(self, means, sds):
        super().__init__()
        self.means, self.sds = torch.tensor(means), torch.tensor(sds)


def locuslab_file(path, net, arch="resnet50", dataset=IMAGENET):
    """locuslab/smoothing code/train.py's checkpoint.pth.tar (tensors saved on CUDA)."""
    model = nn.Sequential(NormalizeLayer(*dataset), nn.DataParallel(net))
    optimizer, _ = trained_optimizer(net, 64)
    legacy_save({"epoch": 90, "arch": arch, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()},
                path, cuda=True)
    return path


def free_at_file(path, net, state=None, arch="resnet18"):
    """FreeAdversarialTraining main_free.py's model_best.pth.tar (arch: configs.TRAIN.arch)."""
    optimizer, _ = trained_optimizer(net, 64)
    legacy_save({"epoch": 90, "arch": arch, "state_dict": state or nn.DataParallel(net).state_dict(),
                 "best_prec1": torch.tensor(41.25), "optimizer": optimizer.state_dict()}, path, cuda=True)
    return path


def simclr_file(path, net):
    """simclr-converter's convert.py: torch.save({'state_dict': model.state_dict()}) (fc.bias left at
    its random initialisation: the converter never sets it)."""
    torch.save({"state_dict": net.state_dict()}, path)
    return path


# --- running the import ----------------------------------------------------------------------

RECIPE = """
[run]
name = "import"
device = "cpu"

[source]
model = "{model}"
{source}
[source.import]
format = "{format}"
url = "{url}"
{extra}
"""


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_import(cli, tmp_path, server, path, fmt, model="timm/resnet18", source="", extra=None, out="out"):
    extra = f'sha256 = "{sha256(path)}"' if extra is None else extra
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(model=model, source=source, format=fmt, url=f"{server.url}/{path.name}",
                                    extra=extra))
    return cli("run", recipe, "--out", tmp_path / out, "--quiet")


def stored_model(model="timm/resnet18", options=None):
    (entry,) = SourceStore().entries()
    rows = entry.info["num_classes"]
    built = default_registry().build("model", model, options or {}, num_classes=rows)
    load_weights(built, entry.weights)
    return built.eval(), entry


def assert_same_logits(ours, original, size=224, seed=1):
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected, found = original(x), ours(x)
    assert found.shape == expected.shape
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-5)


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and not any(line.startswith("error") for line in lines[:-1]), result.stderr
    return lines[-1]  # the message is this one line (the lines above are the run's plan)


# --- the formats -----------------------------------------------------------------------------

def test_madrylab_imports_once_with_its_normalisation(tmp_path, cli, source_store):
    net = resnet18(7)
    (tmp_path / "www").mkdir()
    path = madrylab_file(tmp_path / "www" / "resnet18_l2_eps3.ckpt", net, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    with serve(tmp_path / "www") as server:
        first = run_import(cli, tmp_path, server, path, "madrylab-robustness")
        assert first.exit_code == 0, first.output
        assert server.requests == [path.name]
        again = run_import(cli, tmp_path, server, path, "madrylab-robustness", out="again")
        assert again.exit_code == 0, again.output
        assert server.requests == [path.name]  # the second run fetched nothing
    assert "reused" in again.stdout
    model, entry = stored_model()
    assert entry.info["num_classes"] == 7 and entry.info["imported"]["sha256"] == sha256(path)
    torch.testing.assert_close(model.preprocess[1].mean.flatten(), torch.tensor([0.4, 0.5, 0.6]))
    assert_same_logits(model, Normalized(net, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), clamp=True))


def test_madrylab_older_state_dict_key(tmp_path, cli):
    net = resnet18(5, seed=2)
    (tmp_path / "www").mkdir()
    path = madrylab_file(tmp_path / "www" / "imagenet_linf_4.pt", net, key="state_dict")
    with serve(tmp_path / "www") as server:
        result = run_import(cli, tmp_path, server, path, "madrylab-robustness")
    assert result.exit_code == 0, result.output
    model, _ = stored_model()
    assert_same_logits(model, Normalized(net, *IMAGENET))


def test_madrylab_cifar_resnet18_goes_into_rtk_resnet18(tmp_path, cli):
    torch.manual_seed(4)
    net = randomize(CifarResNet18(10), 4)
    (tmp_path / "www").mkdir()
    path = madrylab_file(tmp_path / "www" / "cifar_l2_0_5.pt", net, *CIFAR_SMOOTHING, size=32)
    with serve(tmp_path / "www") as server:
        refused = run_import(cli, tmp_path, server, path, "madrylab-robustness")
        assert "CIFAR networks" in error_line(refused) and '"resnet18"' in error_line(refused)
        result = run_import(cli, tmp_path, server, path, "madrylab-robustness", model="resnet18", out="cifar")
    assert result.exit_code == 0, result.output
    model, _ = stored_model("resnet18")
    assert_same_logits(model, Normalized(net, *CIFAR_SMOOTHING, clamp=True), size=32)


@pytest.mark.parametrize("dataset", ["imagenet", "cifar10"])
def test_locuslab_imports_with_the_dataset_normalisation(dataset, tmp_path, cli):
    net = resnet18(6, seed=5)
    (tmp_path / "www").mkdir()
    path = locuslab_file(tmp_path / "www" / "checkpoint.pth.tar", net, arch="resnet18")
    with serve(tmp_path / "www") as server:
        result = run_import(cli, tmp_path, server, path, "locuslab-smoothing",
                            extra=f'dataset = "{dataset}"')
    assert result.exit_code == 0, result.output
    model, _ = stored_model()
    assert_same_logits(model, Normalized(net, *(IMAGENET if dataset == "imagenet" else CIFAR_SMOOTHING)))


def test_free_at_imports_with_imagenet_normalisation(tmp_path, cli):
    net = resnet18(9, seed=6)
    (tmp_path / "www").mkdir()
    path = free_at_file(tmp_path / "www" / "model_best.pth.tar", net)
    with serve(tmp_path / "www") as server:
        result = run_import(cli, tmp_path, server, path, "free-at")
    assert result.exit_code == 0, result.output
    model, entry = stored_model()
    assert entry.info["num_classes"] == 9
    assert_same_logits(model, Normalized(net, *IMAGENET))


def test_simclr_keeps_the_features_and_a_fresh_head(tmp_path, cli):
    net = resnet18(12, seed=7)
    (tmp_path / "www").mkdir()
    path = simclr_file(tmp_path / "www" / "resnet50-1x.pth", net)
    with serve(tmp_path / "www") as server:
        result = run_import(cli, tmp_path, server, path, "simclr-converted", source="num_classes = 4")
    assert result.exit_code == 0, result.output
    model, entry = stored_model()
    assert entry.info["num_classes"] == 4 and model.head.out_features == 4  # [source] num_classes wins
    torch.testing.assert_close(model.preprocess[1].mean.flatten(), torch.zeros(3))
    torch.testing.assert_close(model.preprocess[1].std.flatten(), torch.ones(3))
    net.fc = nn.Identity()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), net(x), rtol=0, atol=1e-5)


def test_simclr_class_count_from_its_head(tmp_path, cli):
    (tmp_path / "www").mkdir()
    path = simclr_file(tmp_path / "www" / "resnet50-1x.pth", resnet18(11, seed=8))
    with serve(tmp_path / "www") as server:
        result = run_import(cli, tmp_path, server, path, "simclr-converted")
    assert result.exit_code == 0, result.output
    assert stored_model()[1].info["num_classes"] == 11


# --- refusals --------------------------------------------------------------------------------

def small_madrylab(path, **extra):
    """A MadryLab-layout file with a tiny network (for refusals that never reach the weights)."""
    state = {"module.model.conv1.weight": torch.zeros(4, 3, 3, 3),
             "module.normalizer.new_mean": torch.zeros(3, 1, 1), "module.normalizer.new_std": torch.ones(3, 1, 1)}
    legacy_save({"model": state, "epoch": 1, "amp": None, "nat_prec1": torch.tensor([1.0]), **extra}, path,
                pickle_module=dill)
    return path


def test_a_wrong_hash_names_url_and_hashes_and_keeps_nothing(tmp_path, cli, source_store):
    (tmp_path / "www").mkdir()
    path = small_madrylab(tmp_path / "www" / "m.ckpt")
    with serve(tmp_path / "www") as server:
        wrong = f'sha256 = "{"0" * 64}"'
        line = error_line(run_import(cli, tmp_path, server, path, "madrylab-robustness", extra=wrong))
    assert f"{server.url}/m.ckpt" in line and "0" * 64 in line and sha256(path) in line
    assert not [p for p in (source_store / "downloads").rglob("*") if p.is_file()]
    assert SourceStore().entries() == []


class Extra:
    """A global no format allows."""

    def __init__(self):
        self.lr = 0.1


MARKER = "rtk-hostile-marker"


class System:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class OpenForWriting:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("payload, name", [
    (lambda target: Extra(), "tests.plugins.test_importers_resnets.Extra"),
    (System, "system"),
    (OpenForWriting, "open"),
])
def test_globals_beyond_tensors_are_refused_by_name(payload, name, tmp_path, cli, source_store):
    (tmp_path / "www").mkdir()
    target = tmp_path / MARKER
    path = small_madrylab(tmp_path / "www" / "m.ckpt", args=payload(target))
    with serve(tmp_path / "www") as server:
        line = error_line(run_import(cli, tmp_path, server, path, "madrylab-robustness"))
    assert "madrylab-robustness checkpoint asks to unpickle" in line and name in line and "which rtk never does" in line
    assert not target.exists() and SourceStore().entries() == []


def test_a_truncated_file_is_refused(tmp_path, cli):
    (tmp_path / "www").mkdir()
    path = free_at_file(tmp_path / "www" / "model_best.pth.tar", resnet18(3, seed=9))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with serve(tmp_path / "www") as server:
        line = error_line(run_import(cli, tmp_path, server, path, "free-at"))
    assert "not a readable torch checkpoint" in line and path.name in line


def test_wrong_shapes_are_refused_naming_the_keys(tmp_path, cli, source_store):
    net = resnet18(3, seed=10)
    state = nn.DataParallel(net).state_dict()
    state["module.layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    (tmp_path / "www").mkdir()
    path = free_at_file(tmp_path / "www" / "model_best.pth.tar", net, state=state)
    with serve(tmp_path / "www") as server:
        line = error_line(run_import(cli, tmp_path, server, path, "free-at"))
    assert "shape mismatch: module.layer2.0.conv1.weight (128, 64, 5, 5) vs model" in line
    assert "arch" not in line and SourceStore().entries() == []


def test_another_architecture_is_named(tmp_path, cli):
    torch.manual_seed(12)
    net = torchvision.models.resnet34(num_classes=3)
    (tmp_path / "www").mkdir()
    path = free_at_file(tmp_path / "www" / "model_best.pth.tar", net, arch="resnet34")
    with serve(tmp_path / "www") as server:
        line = error_line(run_import(cli, tmp_path, server, path, "free-at"))
    assert "not in the model: module.layer1.2.conv1.weight" in line
    assert 'the checkpoint\'s arch is resnet34: [source] model = "timm/resnet34"' in line


def test_a_head_of_another_class_count_says_to_leave_num_classes_out(tmp_path, cli):
    (tmp_path / "www").mkdir()
    path = free_at_file(tmp_path / "www" / "model_best.pth.tar", resnet18(3, seed=11))
    with serve(tmp_path / "www") as server:
        line = error_line(run_import(cli, tmp_path, server, path, "free-at", source="num_classes = 5"))
    assert "module.fc.weight (3, 512) vs model head.weight (5, 512)" in line
    assert "leave [source] num_classes out" in line


def test_locuslab_cifar_architectures_are_refused(tmp_path, cli):
    (tmp_path / "www").mkdir()
    path = tmp_path / "www" / "checkpoint.pth.tar"
    legacy_save({"epoch": 90, "arch": "cifar_resnet110", "optimizer": {},
                 "state_dict": {"1.conv1.weight": torch.zeros(16, 3, 3, 3), "1.fc.weight": torch.zeros(10, 64)}}, path)
    with serve(tmp_path / "www") as server:
        line = error_line(run_import(cli, tmp_path, server, path, "locuslab-smoothing", extra='dataset = "cifar10"'))
    assert "arch cifar_resnet110" in line and 'format = "module"' in line


def test_wider_simclr_models_are_refused(tmp_path, cli):
    (tmp_path / "www").mkdir()
    path = tmp_path / "www" / "resnet50-2x.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(128, 3, 7, 7)}}, path)
    with serve(tmp_path / "www") as server:
        line = error_line(run_import(cli, tmp_path, server, path, "simclr-converted", source="num_classes = 10"))
    assert "2x widens the stem" in line


def test_a_file_of_another_layout_is_refused(tmp_path, cli):
    (tmp_path / "www").mkdir()
    path = tmp_path / "www" / "bare.pt"
    torch.save(resnet18(3).state_dict(), path)
    with serve(tmp_path / "www") as server:
        line = error_line(run_import(cli, tmp_path, server, path, "madrylab-robustness"))
    assert "expected a dict with 'model' or 'state_dict'" in line
