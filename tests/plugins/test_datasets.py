"""Dataset plugins and the shared dataset options.

The factories (rtk_plugins.datasets.digits and .vision_data) and rtk.data are called directly
(not through the plugin registry) so these tests pin down the datasets themselves.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
import torch

from rtk.data import DatasetConfig, apply_options
from rtk.errors import DataError
from rtk_plugins.datasets import CifarConfig, DigitsConfig, ImageFolderConfig, MnistConfig, SvhnConfig
from rtk_plugins.datasets.digits import load_digits
from rtk_plugins.datasets.vision_data import load_cifar10, load_cifar100, load_imagefolder, load_mnist, load_svhn

REPO = Path(__file__).resolve().parents[2]
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _image_keys(split) -> set[bytes]:
    # The 1,797 digits images are pairwise distinct, so equal pixels mean the same example.
    return {img.numpy().tobytes() for img in split.images}


@pytest.fixture(scope="module")
def digits():
    return load_digits(DigitsConfig())


@pytest.fixture
def no_data_env(monkeypatch):
    monkeypatch.delenv("RTK_DATA", raising=False)


# --- digits and the shared options -------------------------------------------------------------

def test_digits_images_in_unit_range_with_ten_classes_and_disjoint_splits(digits):
    assert digits.num_classes == 10 and len(digits.class_names) == 10
    assert len(digits.train) + len(digits.test) == 1797
    for split in (digits.train, digits.test):
        x, y = split.take(torch.arange(len(split)))
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
        assert set(y.tolist()) == set(range(10))
    assert not _image_keys(digits.train) & _image_keys(digits.test)


def test_classes_with_remap_relabels_in_listed_order(digits):
    out = apply_options(digits, DatasetConfig(classes=[5, 6, 7, 8, 9]))
    assert out.num_classes == 5 and out.class_names == ["5", "6", "7", "8", "9"]
    for split, source in ((out.train, digits.train), (out.test, digits.test)):
        assert set(split.labels.tolist()) == set(range(5))
        assert len(split) == int((source.labels >= 5).sum())
    # Relabelling must not reorder images: class 5 comes out as label 0.
    assert _image_keys(out.train.subset((out.train.labels == 0).nonzero().flatten())) == \
        _image_keys(digits.train.subset((digits.train.labels == 5).nonzero().flatten()))


def test_classes_without_remap_keeps_original_ids(digits):
    out = apply_options(digits, DatasetConfig(classes=[5, 6, 7, 8, 9], remap=False))
    assert out.num_classes == 10 and out.class_names == digits.class_names
    assert set(out.train.labels.tolist()) == set(out.test.labels.tolist()) == {5, 6, 7, 8, 9}


def test_per_class_takes_exactly_n_and_is_seeded(digits):
    a = apply_options(digits, DatasetConfig(per_class=7, seed=1))
    assert torch.equal(torch.bincount(a.train.labels, minlength=10), torch.full((10,), 7))
    assert len(a.test) == len(digits.test)
    same = apply_options(digits, DatasetConfig(per_class=7, seed=1))
    other = apply_options(digits, DatasetConfig(per_class=7, seed=2))
    assert torch.equal(a.train.images, same.train.images) and torch.equal(a.train.labels, same.train.labels)
    assert _image_keys(a.train) != _image_keys(other.train)


def test_val_fraction_is_stratified_and_disjoint_from_train(digits):
    out = apply_options(digits, DatasetConfig(val_fraction=0.2, seed=3))
    assert len(out.train) + len(out.val) == len(digits.train)
    assert not _image_keys(out.train) & _image_keys(out.val)
    per_class_val = torch.bincount(out.val.labels, minlength=10)
    per_class_all = torch.bincount(digits.train.labels, minlength=10)
    assert torch.equal(per_class_val, (per_class_all.double() * 0.2).round().long())


def test_per_class_larger_than_available_raises(digits):
    with pytest.raises(DataError, match="per_class=1000"):
        apply_options(digits, DatasetConfig(per_class=1000))


@pytest.mark.parametrize("classes", [[3, 10], [-1], []])
def test_invalid_class_ids_raise(digits, classes):
    with pytest.raises(DataError, match="not valid for digits"):
        apply_options(digits, DatasetConfig(classes=classes))


# --- MNIST: small IDX files written here, and the real files when present ----------------------

def _write_idx(folder: Path, prefix: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    n, h, w = images.shape
    header = struct.pack(">iiii", 0x803, n, h, w)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.numpy().tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 0x801, n) + labels.numpy().tobytes())


@pytest.fixture
def tiny_mnist(tmp_path) -> Path:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        _write_idx(raw, prefix, images, torch.arange(n, dtype=torch.uint8) % 10)
    return tmp_path


def test_mnist_idx_files_become_uint8_image_sets(tiny_mnist):
    splits = load_mnist(MnistConfig(root=str(tiny_mnist)))
    assert (len(splits.train), len(splits.test)) == (12, 5)
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape == (12, 1, 28, 28)
    assert splits.train.labels.tolist() == [i % 10 for i in range(12)]
    assert splits.num_classes == 10 and len(splits.class_names) == 10
    raw = (tiny_mnist / "MNIST" / "raw" / "train-images-idx3-ubyte").read_bytes()[16:]
    assert torch.equal(splits.train.images.flatten(), torch.frombuffer(bytearray(raw), dtype=torch.uint8))


def test_mnist_root_defaults_to_rtk_data(tiny_mnist, monkeypatch):
    monkeypatch.setenv("RTK_DATA", str(tiny_mnist))
    assert len(load_mnist(MnistConfig()).test) == 5


def test_mnist_without_root_or_rtk_data_says_how_to_fix(no_data_env, source_store):
    with pytest.raises(DataError, match="RTK_DATA") as info:
        load_mnist(MnistConfig())
    message = str(info.value)
    assert "\n" not in message and "--download" in message
    assert str(source_store / "data" / "MNIST" / "raw") in message  # where it looked: the store's data folder


def test_mnist_missing_files_name_the_folder_and_layout(tmp_path, monkeypatch):
    import torchvision

    def no_download(self):
        raise AssertionError("download attempted although download = false")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_download)
    with pytest.raises(DataError) as info:
        load_mnist(MnistConfig(root=str(tmp_path)))
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "RTK_DATA" in message and "--download" in message


def test_mnist_one_missing_file_is_named(tiny_mnist):
    (tiny_mnist / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        load_mnist(MnistConfig(root=str(tiny_mnist)))


@pytest.mark.parametrize("keep", [100, 2])
def test_mnist_truncated_idx_file_is_a_data_error(tiny_mnist, keep):
    path = tiny_mnist / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(DataError, match="corrupt or truncated") as info:
        load_mnist(MnistConfig(root=str(tiny_mnist)))
    assert str(tiny_mnist / "MNIST" / "raw") in str(info.value) and "\n" not in str(info.value)


def test_failed_download_is_a_data_error(tmp_path, monkeypatch):
    import torchvision

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got URLError")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(DataError, match="could not download") as info:
        load_mnist(MnistConfig(root=str(tmp_path), download=True))
    assert "\n" not in str(info.value)


def _real_mnist_root() -> Path | None:
    candidates = [os.environ.get("RTK_DATA"), REPO.parent / "shared" / "data"]
    for root in filter(None, candidates):
        if all((Path(root) / "MNIST" / "raw" / name).is_file() for name in MNIST_FILES):
            return Path(root)
    return None


@pytest.fixture(scope="module")
def real_mnist_root() -> Path:
    root = _real_mnist_root()
    if root is None:
        pytest.skip("MNIST IDX files not found: set RTK_DATA to a folder holding MNIST/raw, or add"
                    " ../shared/data/MNIST/raw")
    return root


@pytest.mark.data
def test_real_mnist_sizes_shape_and_range(real_mnist_root):
    splits = load_mnist(MnistConfig(root=str(real_mnist_root)))
    assert (len(splits.train), len(splits.test)) == (60000, 10000)
    assert splits.train.images.dtype == torch.uint8 and splits.image_shape == (1, 28, 28)
    x, y = splits.test.take(torch.arange(256))
    assert x.dtype == torch.float32 and x.min() == 0.0 and x.max() == 1.0
    expected = torch.tensor([980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert torch.equal(torch.bincount(splits.test.labels), expected)
    assert splits.num_classes == 10 and splits.class_names[0].startswith("0")


def test_mnist_at_224_px_with_3_channels_stays_28_px_uint8_in_memory(tiny_mnist):
    """In-memory sets are converted batch by batch as they are read (rtk.data.apply_options): the whole
    MNIST training set at 3x224x224 in float32 would take 36 GB."""
    config = MnistConfig(root=str(tiny_mnist), image_size=224, channels=3)
    stored = load_mnist(config)
    out = apply_options(stored, config)
    assert out.train.images is stored.train.images and out.train.images.shape == (12, 1, 28, 28)
    x, y = out.train.take(torch.arange(5))
    assert x.shape == (5, 3, 224, 224) and torch.equal(y, stored.train.labels[:5])
    assert torch.equal(x[:, 0], x[:, 2]) and 0.0 <= x.min() and x.max() <= 1.0


@pytest.mark.data
def test_real_mnist_at_32_px_with_3_channels(real_mnist_root):
    config = MnistConfig(root=str(real_mnist_root), image_size=32, channels=3)
    stored = load_mnist(config)
    out = apply_options(stored, config)
    assert (len(out.train), len(out.test)) == (60000, 10000) and out.image_shape == (3, 32, 32)
    assert torch.equal(out.test.labels, stored.test.labels)
    x, _ = out.test.take(torch.arange(256))
    small, _ = stored.test.take(torch.arange(256))
    assert x.shape == (256, 3, 32, 32) and 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x[:, 0], x[:, 1]) and torch.allclose(x.mean((1, 2, 3)), small.mean((1, 2, 3)), atol=0.02)


@pytest.mark.data
def test_real_mnist_truncated_copy_is_a_data_error(real_mnist_root, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    source = real_mnist_root / "MNIST" / "raw"
    for name in MNIST_FILES:
        if name == "train-images-idx3-ubyte":
            with open(source / name, "rb") as f:
                (raw / name).write_bytes(f.read(100_000))
        else:
            (raw / name).symlink_to(source / name)
    with pytest.raises(DataError, match="mnist: cannot read the train split"):
        load_mnist(MnistConfig(root=str(tmp_path)))


# --- CIFAR / SVHN: no data here, so the error paths ------------------------------------------

@pytest.mark.parametrize("factory, config, folder", [
    (load_cifar10, CifarConfig, "cifar-10-batches-py"),
    (load_cifar100, CifarConfig, "cifar-100-python"),
    (load_svhn, SvhnConfig, "SVHN"),
])
def test_missing_torchvision_files_name_folder_and_fix(tmp_path, factory, config, folder):
    with pytest.raises(DataError) as info:
        factory(config(root=str(tmp_path)))
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / folder) in message
    assert "RTK_DATA" in message and "--download" in message


@pytest.mark.parametrize("factory, config", [(load_cifar10, CifarConfig), (load_svhn, SvhnConfig)])
def test_missing_root_and_rtk_data(no_data_env, source_store, factory, config):
    with pytest.raises(DataError, match="RTK_DATA") as info:
        factory(config())
    assert str(source_store / "data") in str(info.value) and "--download" in str(info.value)


def test_cifar_files_that_fail_the_checksum_are_a_data_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"):
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_cifar10(CifarConfig(root=str(tmp_path)))


def test_svhn_extra_needs_its_file(tmp_path):
    with pytest.raises(DataError, match="extra_32x32.mat"):
        load_svhn(SvhnConfig(root=str(tmp_path), extra=True))


# --- ImageFolder -----------------------------------------------------------------------------

@pytest.fixture
def image_root(tmp_path) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for cls, size in (("cat", (20, 12)), ("dog", (9, 15))):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return tmp_path


def test_imagefolder_splits(image_root):
    splits = load_imagefolder(ImageFolderConfig(root=str(image_root), image_size=8))
    assert splits.num_classes == 2 and splits.class_names == ["cat", "dog"]
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and splits.test.labels.tolist() == [0, 0, 0, 1, 1, 1]
    x, y = splits.train.take(torch.arange(6))
    assert x.shape == (6, 3, 8, 8) and x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    out = apply_options(splits, DatasetConfig(classes=[1]))
    assert out.class_names == ["dog"] and out.train.labels.tolist() == [0, 0, 0]


def test_imagefolder_channels_1_is_the_luma_of_the_rgb_crop_and_image_size_crops_once(image_root):
    config = ImageFolderConfig(root=str(image_root), image_size=8, channels=1)
    rgb = load_imagefolder(config)
    out = apply_options(rgb, config)
    x, y = out.train.take(torch.arange(6))
    assert x.shape == (6, 1, 8, 8) and y.tolist() == [0, 0, 0, 1, 1, 1]
    colour, _ = rgb.train.take(torch.arange(6))
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose(x, (colour * luma).sum(1, keepdim=True), atol=1e-6)
    # image_size is the short-side resize + center crop of the transform; rtk never resizes those crops again
    assert out.train.size is None and out.test[0][0].shape == (1, 8, 8)


def test_imagefolder_test_labels_follow_training_ids(image_root):
    for image in (image_root / "test" / "cat").iterdir():
        image.unlink()
    (image_root / "test" / "cat").rmdir()
    splits = load_imagefolder(ImageFolderConfig(root=str(image_root), image_size=8))
    assert splits.test.labels.tolist() == [1, 1, 1]


def test_imagefolder_missing_test_dir_suggests_val(image_root):
    (image_root / "test").rename(image_root / "val")
    with pytest.raises(DataError, match='test_dir = "val"'):
        load_imagefolder(ImageFolderConfig(root=str(image_root)))
    assert len(load_imagefolder(ImageFolderConfig(root=str(image_root), test_dir="val", image_size=8)).test) == 6


def test_imagefolder_missing_root(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        load_imagefolder(ImageFolderConfig(root=str(tmp_path / "nowhere")))


def test_imagefolder_unreadable_image_names_the_file(image_root):
    bad = image_root / "train" / "cat" / "0.png"
    bad.write_bytes(b"\x89PNG broken")
    splits = load_imagefolder(ImageFolderConfig(root=str(image_root), image_size=8))
    with pytest.raises(DataError, match="0.png"):
        splits.train[0]


def test_mnist_label_count_mismatch_is_a_data_error(tiny_mnist):
    raw = tiny_mnist / "MNIST" / "raw"
    _write_idx(raw, "t10k", torch.zeros(5, 28, 28, dtype=torch.uint8), torch.zeros(5, dtype=torch.uint8))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 0x801, 3) + bytes(3))
    with pytest.raises(DataError, match="mnist: the files hold 5"):
        load_mnist(MnistConfig(root=str(tiny_mnist)))


@pytest.mark.parametrize("layout, shape", [("NHWC", (4, 32, 32, 3)), ("NCHW", (4, 3, 32, 32))])
def test_torchvision_arrays_become_nchw_uint8(layout, shape):
    import numpy as np

    from rtk_plugins.datasets.vision_data import to_image_set

    arrays = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    images = to_image_set(arrays, [0, 1, 2, 3], layout, "cifar10").images
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8 and images.is_contiguous()
    nchw = arrays.transpose(0, 3, 1, 2) if layout == "NHWC" else arrays
    assert torch.equal(images, torch.from_numpy(np.ascontiguousarray(nchw)))


def test_a_resized_image_set_stays_resized_through_the_shared_options():
    """CIFAR's image_size (the study's 224 px) is applied as images are read: class subsets,
    validation splits and per-class subsets must all keep it."""
    from rtk.data import DataSplits, ImageSet, apply_options
    from rtk.config.schema import DatasetConfig

    images = (torch.rand(40, 3, 32, 32) * 255).to(torch.uint8)
    labels = torch.arange(40) % 4
    splits = DataSplits(ImageSet(images, labels, size=64), ImageSet(images[:8], labels[:8], size=64), num_classes=4)
    out = apply_options(splits, DatasetConfig(classes=[1, 3], per_class=4, val_fraction=0.2))
    for split in (out.train, out.val, out.test):
        x, _ = split.take(torch.arange(len(split)))
        assert x.shape[1:] == (3, 64, 64) and 0 <= x.min() and x.max() <= 1
        assert split[0][0].shape == (3, 64, 64)
    plain = ImageSet(images, labels)
    assert plain.take(torch.arange(2))[0].shape == (2, 3, 32, 32)
    big = ImageSet(images, labels, size=64).take(torch.arange(2))[0]
    # bilinear upsampling keeps each image's mean (up to edge effects)
    assert torch.allclose(big.mean((1, 2, 3)), plain.take(torch.arange(2))[0].mean((1, 2, 3)), atol=0.01)
