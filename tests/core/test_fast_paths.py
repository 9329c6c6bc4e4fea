"""[run] fast paths on CPU: they validate, run, leave evaluation numbers alone when they must, and
cached features spill to a memory-mapped file beyond feature_cache_mb."""
from __future__ import annotations

import gc

import pytest
import torch

from rtk.data import FileImageSet, iterate
from rtk.errors import RtkError
from rtk.config.recipe import load_recipe
from rtk.registry import default_registry
from rtk.stages.runner import Runner
from rtk.stages.strategy import compute_features
from tests.helpers import build
from tests.helpers import TINY_RECIPE, quiet_context

RECIPE = TINY_RECIPE.replace("n = 60", "n = 60\nsanity = false")


def run(path, out, *overrides):
    runner = Runner(load_recipe(path, None, list(overrides)), default_registry(), out, show_progress=False)
    return runner.run()["runs"][0]


def small_cnn():
    torch.manual_seed(0)
    return build("model", "small-cnn", {"channels": [8, 16], "feature_dim": 32}, num_classes=10).eval()


def digits():
    return build("dataset", "digits")


@pytest.mark.parametrize("key, value, words", [("amp", '"fp16"', '"off" | "bf16"'), ("workers", "-1", "workers"),
                                               ("feature_cache_mb", "-5", "feature_cache_mb"),
                                               ("compile", '"yes"', "compile")])
def test_bad_fast_path_options_are_one_line_errors(write_recipe, key, value, words):
    path = write_recipe(RECIPE)
    with pytest.raises(RtkError) as info:
        Runner(load_recipe(path, None, [f"run.{key}={value}"]), default_registry(), None, show_progress=False)
    assert words in str(info.value) and "[run]" in str(info.value) and "\n" not in str(info.value)


def test_number_preserving_fast_paths_give_the_baseline_numbers(write_recipe, tmp_path, one_thread):
    path = write_recipe(RECIPE)
    baseline = run(path, tmp_path / "base")
    fast = run(path, tmp_path / "fast", "run.workers=2", "run.pin_memory=true", "run.non_blocking=false",
               "run.feature_cache_mb=0")  # every cached feature spills to disk
    assert fast["metrics"] == baseline["metrics"] and fast["source"]["clean"] == baseline["source"]["clean"]
    assert not (tmp_path / "fast" / "feature-cache").exists()  # spilled files are deleted with their features


def test_bf16_training_and_channels_last_run_on_cpu(write_recipe, tmp_path, one_thread):
    """bf16 autocast is allowed on CPU (torch's CPU autocast); it changes training numbers, so
    only the outcome's sanity is checked."""
    result = run(write_recipe(RECIPE), tmp_path / "out", "run.amp=bf16", "run.channels_last=true")
    metrics = result["metrics"]
    assert 0 <= metrics["robust"] <= metrics["PGD-5"] <= metrics["clean"] <= 1
    assert result["source"]["clean"] > 0.5  # bf16 training still learns


def test_training_autocast_leaves_evaluation_in_float32(one_thread):
    from rtk.config.schema import EvalConfig
    from rtk.evaluation.robust_accuracy import evaluate

    model, test = small_cnn(), digits().test
    config = EvalConfig(batch_size=128)
    plain = evaluate(model, test, [], quiet_context(), config)
    with_amp = evaluate(model, test, [], quiet_context(amp="bf16", channels_last=False), config)
    assert torch.equal(plain["correct"]["clean"], with_amp["correct"]["clean"])
    ctx = quiet_context(eval_amp="bf16")
    with ctx.autocast("eval"):
        assert model(test.take(torch.arange(4))[0]).dtype == torch.bfloat16  # eval_amp does switch evaluation
    with quiet_context(amp="bf16").autocast("eval"):
        assert model(test.take(torch.arange(4))[0]).dtype == torch.float32


def test_feature_cache_spills_to_a_memory_mapped_file(tmp_path, one_thread):
    model, train = small_cnn(), digits().train
    in_memory = compute_features(model, train, quiet_context(feature_cache_mb=None), 100)  # unset: always in memory
    assert in_memory.path is None
    ctx = quiet_context(out_dir=tmp_path, feature_cache_mb=0.05)  # 1258 x 32 floats: 0.15 MiB
    spilled = compute_features(model, train, ctx, 100, "features (train)")
    path = spilled.path
    assert path is not None and path.parent == tmp_path / "feature-cache" and path.stat().st_size == 1258 * 32 * 4
    assert torch.equal(spilled.images, in_memory.images) and torch.equal(spilled.labels, in_memory.labels)
    images, labels = spilled.take(torch.tensor([5, 0, 7]))
    assert torch.equal(images, in_memory.images[[5, 0, 7]]) and labels.tolist() == in_memory.labels[[5, 0, 7]].tolist()
    del spilled, images
    gc.collect()
    assert not path.exists()
    large = compute_features(model, train, quiet_context(feature_cache_mb=1.0), 100)
    assert large.path is None  # under the limit: in memory


class Files:
    """A file-backed-like dataset (indexable, no .images), as FileImageSet wraps."""

    def __init__(self, images):
        self.images = images

    def __getitem__(self, i):
        return self.images[i], 0

    def __len__(self):
        return len(self.images)


def test_workers_load_the_same_batches(one_thread):
    data = digits().test
    files = FileImageSet(Files(data.take(torch.arange(len(data)))[0]), data.labels)
    batches = lambda workers: list(iterate(files, 64, shuffle=True, generator=torch.Generator().manual_seed(4),  # noqa: E731
                                           num_workers=workers))
    for (x0, y0), (x2, y2) in zip(batches(0), batches(2), strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


def test_to_device_applies_channels_last_only_when_asked():
    x = torch.rand(2, 3, 4, 4)
    assert quiet_context(channels_last=True).to_device(x).is_contiguous(memory_format=torch.channels_last)
    assert quiet_context().to_device(x).is_contiguous()


@pytest.mark.slow
def test_compiled_model_evaluates_like_the_eager_one(tiny_recipe, write_recipe, tmp_path, one_thread):
    path = write_recipe(RECIPE)
    eager = run(path, tmp_path / "eager")
    compiled = run(path, tmp_path / "compiled", "run.compile=true")
    assert compiled["metrics"]["clean"] == pytest.approx(eager["metrics"]["clean"], abs=1 / 60 + 1e-9)
