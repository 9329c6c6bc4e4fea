"""The shared ``image_size`` and ``channels`` dataset options (rtk.config.schema.DatasetConfig, applied by
rtk.data.apply_options through rtk.data.convert_images) and the range of the dataset ``seed``.

MNIST and the file-backed datasets are covered beside their own fixtures (test_datasets.py,
test_study_datasets.py); here: digits, a CIFAR-like in-memory set, the errors, the store key and
``rtk list-plugins``."""
from __future__ import annotations

import pytest
import torch

from rtk.config.fields import ConfigValueError, build_config
from rtk.data import DataSplits, DatasetConfig, FileImageSet, ImageSet, apply_options, convert_images
from rtk.errors import DataError
from rtk_plugins.datasets import CifarConfig, DigitsConfig, ImageFolderConfig, MnistConfig, SvhnConfig
from rtk_plugins.datasets.digits import load_digits
from rtk_plugins.study_datasets import DATASETS

LUMA = torch.tensor([0.299, 0.587, 0.114])


@pytest.fixture(scope="module")
def digits():
    return load_digits(DigitsConfig())


def _all(split) -> tuple[torch.Tensor, torch.Tensor]:
    return split.take(torch.arange(len(split)))


def _cifar_like(n: int = 12, seed: int = 0) -> DataSplits:
    """An in-memory RGB uint8 set shaped like CIFAR (3x32x32), as rtk_plugins.datasets.vision_data builds it."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 3
    return DataSplits(ImageSet(images, labels), ImageSet(images[:6], labels[:6]), num_classes=3, name="cifar-like")


# --- digits: 1x8x8 grayscale to 3x32x32 --------------------------------------------------------

def test_digits_at_32_px_with_3_channels_keeps_examples_labels_and_range(digits):
    config = DigitsConfig(image_size=32, channels=3)
    out = apply_options(load_digits(config), config)
    assert (len(out.train), len(out.test), out.num_classes) == (len(digits.train), len(digits.test), 10)
    assert out.image_shape == (3, 32, 32)
    for split, plain in ((out.train, digits.train), (out.test, digits.test)):
        x, y = _all(split)
        small, labels = _all(plain)
        assert x.shape == (len(plain), 3, 32, 32) and x.dtype == torch.float32
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
        assert torch.equal(y, labels)
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey repeated
        # 8 -> 32 px bilinear upsampling keeps each image's mean up to edge effects: the same images, in order
        assert torch.allclose(x.mean((1, 2, 3)), small.mean((1, 2, 3)), atol=0.03)
        assert split[0][0].shape == (3, 32, 32)  # one item too, not only batches


def test_the_conversion_survives_every_shared_option(digits):
    config = DatasetConfig(classes=[7, 2], per_class=5, val_fraction=0.2, image_size=12, channels=3)
    out = apply_options(digits, config)
    for split in (out.train, out.val, out.test):
        assert _all(split)[0].shape[1:] == (3, 12, 12)
    assert torch.bincount(out.train.labels).tolist() == [5, 5]


def test_unset_options_leave_the_splits_untouched(digits):
    out = apply_options(digits, DatasetConfig())
    assert out.train is digits.train and out.test is digits.test


# --- RGB to grayscale: the ITU-R 601-2 luma weights -------------------------------------------

def test_channels_1_of_an_rgb_set_is_the_luma_of_each_pixel():
    import numpy as np
    from PIL import Image

    data = _cifar_like()
    out = apply_options(data, DatasetConfig(channels=1))
    x, _ = _all(out.train)
    assert x.shape == (12, 1, 32, 32)
    rgb = data.train.images[3].float() / 255
    expected = (LUMA.view(3, 1, 1) * rgb).sum(0)
    assert torch.allclose(x[3, 0], expected, atol=1e-6)
    # a value worked by hand: (200, 100, 50) -> 0.299*200 + 0.587*100 + 0.114*50 = 124.2 (of 255)
    pixel = ImageSet(torch.tensor([200, 100, 50], dtype=torch.uint8).view(1, 3, 1, 1), torch.zeros(1), channels=1)
    assert pixel[0][0].shape == (1, 1, 1) and abs(float(pixel[0][0]) * 255 - 124.2) < 1e-3
    # PIL's "L" computes the same weights in 8 bits: within rounding of ours
    pil = torch.from_numpy(np.array(Image.fromarray(data.train.images[3].permute(1, 2, 0).numpy()).convert("L")))
    pil = pil.float()
    assert (x[3, 0] * 255 - pil).abs().max() <= 0.5 + 1e-3


def test_a_cifar_like_set_resized_and_grey_through_the_cifar_config():
    config = build_config(CifarConfig, {"image_size": 16, "channels": 1})
    out = apply_options(_cifar_like(), config)
    x, y = _all(out.train)
    assert x.shape == (12, 1, 16, 16) and 0.0 <= x.min() and x.max() <= 1.0
    assert y.tolist() == (torch.arange(12) % 3).tolist()
    # luma then resize equals resize then luma: both are linear, and both keep [0, 1]
    resized = convert_images(_all(_cifar_like().train)[0], size=16)
    assert torch.allclose(x, (LUMA.view(1, 3, 1, 1) * resized).sum(1, keepdim=True), atol=1e-5)


def test_shrinking_is_antialiased():
    stripes = torch.zeros(1, 1, 32, 32)
    stripes[..., ::4] = 1.0  # a bright column in every 4: plain bilinear at 8 px samples between the dark ones (0)
    small = convert_images(stripes, size=8)
    assert torch.allclose(small[..., 1:-1], torch.full_like(small[..., 1:-1], 0.25), atol=1e-4)


def test_in_memory_sets_stay_stored_and_convert_each_batch():
    """The chosen design: never a converted copy of the whole set (MNIST at 224 px, 3 channels, would be 36 GB)."""
    data = _cifar_like(n=4)
    out = apply_options(data, DatasetConfig(image_size=224, channels=1))
    assert out.train.images is data.train.images and out.train.images.dtype == torch.uint8
    assert out.train.take(torch.tensor([0, 2]))[0].shape == (2, 1, 224, 224)


# --- file-backed sets convert each image as it is read -----------------------------------------

class _Files(torch.utils.data.Dataset):
    """Stands in for a torchvision dataset with a transform: RGB float tensors of varied sizes."""

    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.images = [torch.rand(3, 10 + i, 14, generator=g) for i in range(4)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], 0


def test_a_file_backed_set_is_converted_at_read_time_and_keeps_its_view():
    files = FileImageSet(_Files(), torch.tensor([0, 1, 0, 1]))
    data = DataSplits(files, files.subset(torch.tensor([0, 1])), num_classes=2)
    out = apply_options(data, DatasetConfig(image_size=9, channels=1, classes=[1]))
    x, y = _all(out.train)
    assert x.shape == (2, 1, 9, 9) and y.tolist() == [0, 0]
    assert torch.allclose(x[0], convert_images(files.base[1][0], size=9, channels=1))


# --- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [DigitsConfig, MnistConfig, CifarConfig, SvhnConfig, *(c for c, _ in
                                                                                      DATASETS.values())])
def test_every_dataset_takes_both_options_and_refuses_2_channels(config):
    table = {"root": "/nowhere"} if config is ImageFolderConfig else {}
    built = build_config(config, {**table, "image_size": 32, "channels": 3})
    assert (built.image_size, built.channels) == (32, 3)
    with pytest.raises(ConfigValueError, match="expected one of 1 | 3, got 2") as info:
        build_config(config, {**table, "channels": 2})
    assert info.value.key == "channels"
    with pytest.raises(ConfigValueError, match="at least 1"):
        build_config(config, {**table, "image_size": 0})


def test_channels_2_from_python_is_a_one_line_data_error(digits):
    with pytest.raises(DataError, match="channels = 2 is not supported: set channels = 1") as info:
        apply_options(digits, DatasetConfig(channels=2))
    assert "\n" not in str(info.value)


def test_images_neither_grey_nor_rgb_cannot_change_channels():
    four = ImageSet(torch.rand(2, 4, 8, 8), torch.zeros(2))
    with pytest.raises(DataError, match="cannot turn 4-channel images into 3 channels"):
        apply_options(DataSplits(four, four, num_classes=1), DatasetConfig(channels=3))
    assert apply_options(DataSplits(four, four, num_classes=1), DatasetConfig(image_size=4)).image_shape == (4, 4, 4)


def test_a_split_that_cannot_be_viewed_is_a_data_error():
    class Plain(torch.utils.data.Dataset):
        labels = torch.zeros(2, dtype=torch.long)

    data = DataSplits(Plain(), Plain(), num_classes=1, name="custom")
    with pytest.raises(DataError, match="custom returns a Plain, which cannot be resized"):
        apply_options(data, DatasetConfig(image_size=8))


# --- the store key and the CLI ------------------------------------------------------------------

def _key(tmp_path, *overrides: str) -> str:
    from rtk.config.recipe import load_recipe
    from rtk.config.source_key import source_key
    from rtk.config.spec import resolve
    from rtk.registry import default_registry
    from tests.helpers import TINY_RECIPE

    path = tmp_path / "recipe.toml"
    path.write_text(TINY_RECIPE)
    (spec,) = resolve(load_recipe(path, overrides=list(overrides)), default_registry())
    return source_key(spec.source)


def test_image_size_and_channels_change_the_source_key(tmp_path):
    keys = {_key(tmp_path), _key(tmp_path, "source.data.image_size=32"), _key(tmp_path, "source.data.channels=3"),
            _key(tmp_path, "source.data.image_size=32", "source.data.channels=3")}
    assert len(keys) == 4
    assert _key(tmp_path, "source.data.image_size=32") == _key(tmp_path, "source.data.image_size=32")


def test_list_plugins_options_shows_both(cli):
    result = cli("list-plugins", "--options", "digits", "--json")
    assert result.exit_code == 0, result.output
    assert "image_size" in result.output and "channels" in result.output and "ITU-R 601-2" in result.output


# --- the dataset seed ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed, ok", [(0, True), (2**31 - 1, True), (-1, False), (2**31, False), (2**63, False)])
def test_dataset_seed_range_is_that_of_the_run_seed(seed, ok, digits):
    if not ok:
        with pytest.raises(ConfigValueError, match="must be at") as info:
            build_config(DigitsConfig, {"seed": seed})
        assert info.value.key == "seed"
        return
    config = build_config(DigitsConfig, {"seed": seed, "per_class": 3})
    assert torch.bincount(apply_options(digits, config).train.labels).tolist() == [3] * 10
