"""The study's torchvision datasets (rtk_plugins.study_datasets) on tiny fake copies written in the
exact layouts torchvision reads: DTD, Oxford-IIIT Pets, Caltech-101, FGVC-Aircraft, Food-101, SUN397.
Flowers-102 is not faked: torchvision checks the md5 of its .mat files. Nothing downloads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rtk.data import FileImageSet, apply_options
from rtk.errors import DataError
from rtk_plugins.study_datasets import (DATASETS, AircraftConfig, Caltech101Config, Caltech256Config, DtdConfig,
                                        Food101Config, PetsConfig, Sun397Config)
from rtk_plugins.study_datasets import torchvision_data


def _jpeg(path: Path, seed: int, size=(23, 31)) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def write_lists(folder: Path, lists: dict[str, list[str]], pattern: str = "{}.txt") -> None:
    """One text file per list (``folder/<pattern with the list's name>``), an entry a line."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in lists.items():
        (folder / pattern.format(name)).write_text("".join(f"{line}\n" for line in lines))


def load(name, config):
    """The registered factory, which reads the dataset the config class names."""
    assert type(config).dataset == name
    return torchvision_data.load(config)


@pytest.fixture
def dtd_root(tmp_path):
    """3 classes; partition 1: 2 train + 1 val + 2 test images per class; partition 2 lists other files."""
    base = tmp_path / "dtd" / "dtd"
    classes = ["banded", "dotted", "striped"]
    lists = {"train1": [], "val1": [], "test1": [], "train2": [], "val2": [], "test2": []}
    for c, cls in enumerate(classes):
        for i in range(6):
            name = f"{cls}_{i:04d}.jpg"
            _jpeg(base / "images" / cls / name, 10 * c + i, size=(20 + i, 28))
        for i, split in enumerate(["train1", "train1", "val1", "test1", "test1", "train2"]):
            lists[split].append(f"{cls}/{cls}_{i:04d}.jpg")
        lists["val2"].append(f"{cls}/{cls}_0000.jpg")
        lists["test2"].append(f"{cls}/{cls}_0001.jpg")
    write_lists(base / "labels", lists)
    return tmp_path


@pytest.fixture
def pets_root(tmp_path):
    """2 breeds (cat, dog), 3 trainval + 2 test images each; annotations as 'ID CLASS SPECIES BREED'."""
    base = tmp_path / "oxford-iiit-pet"
    rows = {"trainval": [], "test": []}
    for label, (breed, species) in enumerate([("Abyssinian", 1), ("american_bulldog", 2)], start=1):
        for i in range(5):
            image_id = f"{breed}_{i + 1}"
            _jpeg(base / "images" / f"{image_id}.jpg", 100 * label + i)
            rows["trainval" if i < 3 else "test"].append(f"{image_id} {label} {species} 1")
    write_lists(base / "annotations", rows)
    return tmp_path


@pytest.fixture
def caltech_root(tmp_path):
    """Caltech-101 with 3 categories (5, 6, 7 images, grayscale among them) and the BACKGROUND_Google folder."""
    from PIL import Image

    base = tmp_path / "caltech101" / "101_ObjectCategories"
    for c, (cls, n) in enumerate([("accordion", 5), ("BACKGROUND_Google", 4), ("camera", 6), ("yin_yang", 7)]):
        for i in range(n):
            _jpeg(base / cls / f"image_{i + 1:04d}.jpg", 1000 + 10 * c + i)
    Image.new("L", (17, 25), 128).save(base / "camera" / "image_0001.jpg")  # Caltech holds grayscale images
    return tmp_path


@pytest.fixture
def aircraft_root(tmp_path):
    base = tmp_path / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A300B4", "DC-3"]
    base.mkdir(parents=True)
    (base / "variants.txt").write_text("".join(f"{v}\n" for v in variants))
    (base / "families.txt").write_text("Boeing 707\nA300\nDC-3\n")
    (base / "manufacturers.txt").write_text("Boeing\nAirbus\nDouglas\n")
    rows = {"trainval": [], "test": []}
    for c, variant in enumerate(variants):
        for i in range(4):
            image_id = f"{c}{i:06d}"
            _jpeg(base / "images" / f"{image_id}.jpg", 2000 + 10 * c + i, size=(40, 24))
            rows["trainval" if i < 3 else "test"].append(f"{image_id} {variant}")
    write_lists(base, rows, "images_variant_{}.txt")
    return tmp_path


@pytest.fixture
def food_root(tmp_path):
    base = tmp_path / "food-101"
    meta = {"train": {}, "test": {}}
    for c, cls in enumerate(["apple_pie", "waffles"]):
        for i in range(4):
            _jpeg(base / "images" / cls / f"{i}.jpg", 3000 + 10 * c + i)
            meta["train" if i < 3 else "test"].setdefault(cls, []).append(f"{cls}/{i}")
    (base / "meta").mkdir()
    for split, data in meta.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(data))
    return tmp_path


def _pixels(split) -> set[bytes]:
    return {split[i][0].numpy().tobytes() for i in range(len(split))}


def test_every_study_dataset_is_registered_with_root_download_and_image_size():
    from rtk.registry import default_registry

    registry = default_registry()
    for name in DATASETS:
        component, _ = registry.resolve("dataset", name)
        config = component.config()
        assert (config.root, config.download, config.image_size) == (None, False, 224)
        assert config.dataset == name and component.target == "rtk_plugins.study_datasets.torchvision_data:load"


def test_dtd_train_is_train_plus_val_of_the_partition(dtd_root):
    data = load("dtd", DtdConfig(root=str(dtd_root), image_size=16))
    assert (len(data.train), len(data.test), data.num_classes) == (9, 6, 3)
    assert data.class_names == ["banded", "dotted", "striped"]
    assert isinstance(data.train, FileImageSet)
    assert data.train.labels.tolist() == [0, 0, 1, 1, 2, 2, 0, 1, 2]  # train1 then val1
    image, label = data.test[3]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert label == data.test.labels[3] == 1
    assert not _pixels(data.train) & _pixels(data.test)
    other = load("dtd", DtdConfig(root=str(dtd_root), image_size=16, partition=2))
    assert (len(other.train), len(other.test)) == (6, 3)


def test_images_are_decoded_only_when_asked_for(dtd_root, monkeypatch):
    data = load("dtd", DtdConfig(root=str(dtd_root), image_size=8))
    opened = []
    from PIL import Image

    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    batch, labels = data.train.take(torch.tensor([0, 4]))
    assert batch.shape == (2, 3, 8, 8) and labels.tolist() == [0, 2]
    assert len(opened) == 2


def test_channels_1_holds_for_augmented_training_images_their_unaugmented_view_and_subsets(dtd_root):
    from rtk_plugins.transfer.heads import unaugmented

    config = DtdConfig(root=str(dtd_root), image_size=8, channels=1, classes=[2, 0])
    out = apply_options(load("dtd", config), config)
    assert isinstance(out.train, torchvision_data.AugmentedImages)
    for split in (out.train, unaugmented(out.train), out.test):
        x, _ = split.take(torch.arange(len(split)))
        assert x.shape == (len(split), 1, 8, 8) and 0.0 <= x.min() and x.max() <= 1.0
    colour_config = DtdConfig(root=str(dtd_root), image_size=8, classes=[2, 0])
    rgb = apply_options(load("dtd", colour_config), colour_config)
    colour, _ = rgb.test.take(torch.arange(len(rgb.test)))
    grey, _ = out.test.take(torch.arange(len(out.test)))
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose(grey, (colour * luma).sum(1, keepdim=True), atol=1e-6)


def test_pets_official_trainval_and_test(pets_root):
    data = load("oxford-pets", PetsConfig(root=str(pets_root), image_size=12))
    assert (len(data.train), len(data.test), data.num_classes) == (6, 4, 2)
    assert data.class_names == ["Abyssinian", "American Bulldog"]
    assert data.test.labels.tolist() == [0, 0, 1, 1]
    assert data.train.take(torch.arange(6))[0].shape == (6, 3, 12, 12)


def test_caltech101_first_images_per_class_drop_background(caltech_root):
    """The study's split (certified/transfer_datasets.py _caltech101): the first train_per_class images of
    each class in file order (image_0001.jpg, ...) for training, every other image for testing."""
    config = Caltech101Config(root=str(caltech_root), image_size=10, train_per_class=3)
    data = load("caltech101", config)
    assert data.num_classes == 3 and data.class_names == ["accordion", "camera", "yin_yang"]
    assert torch.bincount(data.train.labels).tolist() == [3, 3, 3]
    assert torch.bincount(data.test.labels).tolist() == [2, 3, 4]  # every other image is a test image
    # Classes hold 5, 6 and 7 images (indices 0-4, 5-10, 11-17): the first three of each are the training set.
    assert data.train.indices.tolist() == [0, 1, 2, 5, 6, 7, 11, 12, 13]
    assert data.test.indices.tolist() == [3, 4, 8, 9, 10, 14, 15, 16, 17]
    files = data.train.base.base.index  # torchvision's file numbers: image_{n:04d}.jpg
    assert [files[i] for i in data.train.indices.tolist()] == [1, 2, 3] * 3
    images, _ = data.train.take(torch.arange(len(data.train)))  # the grayscale image comes back as RGB
    assert images.shape == (9, 3, 10, 10)


def test_caltech_seeded_draw_stays_an_option(caltech_root):
    seeded = dict(root=str(caltech_root), image_size=10, train_per_class=3, per_class_split="seeded")
    data = load("caltech101", Caltech101Config(**seeded))
    assert torch.bincount(data.train.labels).tolist() == [3, 3, 3]
    assert not set(data.train.indices.tolist()) & set(data.test.indices.tolist())
    assert load("caltech101", Caltech101Config(**seeded)).train.indices.tolist() == data.train.indices.tolist()
    other = load("caltech101", Caltech101Config(**seeded, split_seed=1))
    assert other.train.indices.tolist() != data.train.indices.tolist()
    assert (Caltech101Config().per_class_split, Caltech256Config().per_class_split) == ("first", "first")
    assert (Caltech101Config().train_per_class, Caltech256Config().train_per_class) == (30, 60)
    assert Sun397Config().per_class_split == "seeded"


def test_caltech101_capped_test_and_too_small_class(caltech_root):
    data = load("caltech101", Caltech101Config(root=str(caltech_root), train_per_class=2, test_per_class=2))
    assert torch.bincount(data.test.labels).tolist() == [2, 2, 2]
    with pytest.raises(DataError, match="class 0 has 5 images.*train_per_class = 5"):
        load("caltech101", Caltech101Config(root=str(caltech_root), train_per_class=5))


def test_aircraft_variant_trainval_test_and_shared_options(aircraft_root):
    data = load("fgvc-aircraft", AircraftConfig(root=str(aircraft_root), image_size=20))
    assert (len(data.train), len(data.test), data.num_classes) == (9, 3, 3)
    assert data.test[0][0].shape == (3, 20, 20)
    picked = apply_options(data, AircraftConfig(root=str(aircraft_root), per_class=2, classes=[2, 0]))
    assert picked.num_classes == 2 and torch.bincount(picked.train.labels).tolist() == [2, 2]
    assert sorted(picked.test.labels.tolist()) == [0, 1]
    assert picked.train[0][0].shape == (3, 20, 20)


def test_food101_official_split(food_root):
    data = load("food101", Food101Config(root=str(food_root), image_size=14))
    assert (len(data.train), len(data.test), data.num_classes) == (6, 2, 2)
    assert data.class_names == ["apple_pie", "waffles"] and data.test.labels.tolist() == [0, 1]


def test_root_from_rtk_data(dtd_root, monkeypatch):
    monkeypatch.setenv("RTK_DATA", str(dtd_root))
    assert load("dtd", DtdConfig(image_size=8)).num_classes == 3


@pytest.mark.parametrize("name, config, folder", [
    ("dtd", DtdConfig, "dtd/dtd"), ("flowers102", None, "flowers-102"), ("sun397", Sun397Config, "SUN397"),
    ("stanford-cars", None, "stanford_cars"), ("caltech256", None, "caltech256"),
    ("food101", Food101Config, "food-101"),
])
def test_missing_files_name_the_folder_layout_and_source(tmp_path, name, config, folder):
    config = (config or DATASETS[name][0])(root=str(tmp_path))
    with pytest.raises(DataError) as err:
        load(name, config)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / folder) in message and "no such folder" in message
    assert "--download" in message and "get it from" in message
    assert list(tmp_path.iterdir()) == []  # nothing was created (torchvision's Caltech makes folders)


def test_one_missing_file_is_named(pets_root):
    (pets_root / "oxford-iiit-pet" / "annotations" / "test.txt").unlink()
    with pytest.raises(DataError, match="missing annotations/test.txt"):
        load("oxford-pets", PetsConfig(root=str(pets_root)))


def test_unparsable_annotations_are_a_data_error(dtd_root):
    (dtd_root / "dtd" / "dtd" / "labels" / "test1.txt").write_text("no-slash-here\n")
    with pytest.raises(DataError, match="cannot read the test split"):
        load("dtd", DtdConfig(root=str(dtd_root)))


def test_unreadable_image_is_a_data_error_naming_the_dataset(pets_root):
    (pets_root / "oxford-iiit-pet" / "images" / "Abyssinian_1.jpg").write_bytes(b"not a jpeg")
    data = load("oxford-pets", PetsConfig(root=str(pets_root)))
    with pytest.raises(DataError, match="oxford-pets: cannot read image 0"):
        data.train[0]


def test_no_root_and_no_rtk_data(monkeypatch):
    monkeypatch.delenv("RTK_DATA", raising=False)
    with pytest.raises(DataError, match="RTK_DATA"):
        load("dtd", DtdConfig())


RECIPE = """
[run]
name = "study-dataset"
device = "cpu"

[source]
model = "small-cnn"
channels = [4]
feature_dim = 8
in_channels = 3
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
num_classes = 5

[target]
dataset = "dtd"
root = "{root}"
image_size = 8

[transfer]
strategy = "linear-probe"
epochs = 1

[eval]
n = 4
"""


def test_missing_root_through_the_cli_is_one_line_and_exit_2(cli, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(root=tmp_path / "nowhere"))
    assert cli("validate", recipe).exit_code == 0  # validation does not read data
    result = cli("run", recipe, "--out", tmp_path / "out")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0]  # after the run banner
    assert "dtd/dtd" in errors[0] and "rtk expects" in errors[0] and "Traceback" not in result.output


def test_a_recipe_runs_on_a_fake_dtd(cli, dtd_root, tmp_path, one_thread):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(root=dtd_root))
    result = cli("run", recipe, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]
    assert run["n_eval"] == 4 and 0 <= run["metrics"]["clean"] <= 1


def test_file_backed_sets_pickle_and_load_through_workers(dtd_root):
    import pickle

    from rtk.data import iterate

    data = load("dtd", DtdConfig(root=str(dtd_root), image_size=8))
    copy = pickle.loads(pickle.dumps(data.train))  # DataLoader workers under "spawn" receive the set pickled
    assert torch.equal(copy.unaugmented[2][0], data.train.unaugmented[2][0])
    assert copy[2][0].shape == (3, 8, 8)  # the training view augments, also in a copy
    batches = list(iterate(data.train, 4, num_workers=1))
    assert [tuple(images.shape) for images, _ in batches] == [(4, 3, 8, 8), (4, 3, 8, 8), (1, 3, 8, 8)]
    assert torch.cat([labels for _, labels in batches]).tolist() == data.train.labels.tolist()


def test_sun397_per_class_train_and_test_counts(tmp_path):
    base = tmp_path / "SUN397"
    classes = ["/a/abbey", "/b/bus_interior/indoor"]  # ClassName.txt lines; nested names exist
    base.mkdir()
    (base / "ClassName.txt").write_text("".join(f"{c}\n" for c in classes))
    for c, cls in enumerate(classes):
        for i in range(6):
            _jpeg(base / cls.lstrip("/") / f"sun_{c}{i:03d}.jpg", 4000 + 10 * c + i)
    data = load("sun397", Sun397Config(root=str(tmp_path), image_size=6, train_per_class=2, test_per_class=3))
    assert data.class_names == ["abbey", "bus_interior/indoor"]
    assert torch.bincount(data.train.labels).tolist() == [2, 2] and torch.bincount(data.test.labels).tolist() == [3, 3]
    assert not set(data.train.indices.tolist()) & set(data.test.indices.tolist())
    assert data.test[0][0].shape == (3, 6, 6)


# ---------------------------------------------------------------- the study's transforms


def _position_image(width: int = 400, height: int = 300):
    """An RGB image whose red channel is x / (width - 1) and green channel y / (height - 1): the pixels of a
    transformed image say where in the original they came from."""
    import numpy as np
    from PIL import Image

    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).round().astype(np.uint8))


def test_eval_transform_is_resize_256_then_center_crop_224():
    """certified/transfer_datasets.py _TEST_TRANSFORM: Scale(256) + CenterCrop(224). A 400x300 image becomes
    341x256, of which the center 224x224 is kept: x from ~68 to ~330 of 400, y from ~19 to ~281 of 300 (rtk's
    earlier short-side-to-224 crop kept all of y and x from 50 to 350)."""
    image = torchvision_data.eval_transform(Caltech101Config())(_position_image())
    assert image.shape == (3, 224, 224)
    red, green = image[0], image[1]
    assert 0.16 < red[:, 0].mean() < 0.18 and 0.81 < red[:, -1].mean() < 0.84
    assert 0.05 < green[0].mean() < 0.075 and 0.925 < green[-1].mean() < 0.95
    whole = torchvision_data.eval_transform(Caltech101Config(resize=224))(_position_image())  # the short side kept
    assert whole.shape == (3, 224, 224) and whole[1, 0].mean() < 0.01 and whole[1, -1].mean() > 0.99


def test_train_transform_is_random_resized_crop_and_flip_of_the_whole_image():
    """_TRAIN_TRANSFORM: RandomResizedCrop(224) + RandomHorizontalFlip on the decoded image, not on a
    pre-cropped square: over a few draws the crops reach the image's left and right borders, zoom in, and
    some are flipped."""
    transform = torchvision_data.train_transform(Caltech101Config())
    torch.manual_seed(0)
    draws = [transform(_position_image()) for _ in range(40)]
    assert all(d.shape == (3, 224, 224) for d in draws)
    assert len({d.numpy().tobytes() for d in draws}) == 40
    red = [d[0] for d in draws]
    assert min(r.min() for r in red) < 0.1 and max(r.max() for r in red) > 0.9  # outside the center square
    assert min(r.max() - r.min() for r in red) < 0.4  # some crops zoom in
    flipped = [bool(r[:, 0].mean() > r[:, -1].mean()) for r in red]
    assert any(flipped) and not all(flipped)
    plain = torchvision_data.train_transform(Caltech101Config(train_transform="center-crop"))
    assert torch.equal(plain(_position_image()), torchvision_data.eval_transform(Caltech101Config())(_position_image()))


@pytest.fixture
def big_caltech_root(tmp_path):
    """Caltech-101 with two classes of three 400x300 position images."""
    base = tmp_path / "caltech101" / "101_ObjectCategories"
    for cls in ("ant", "bee"):
        (base / cls).mkdir(parents=True)
        for i in range(3):
            _position_image().save(base / cls / f"image_{i + 1:04d}.jpg", quality=95)
    (base / "BACKGROUND_Google").mkdir()
    return tmp_path


def test_training_split_augments_as_it_reads_and_keeps_an_unaugmented_view(big_caltech_root):
    config = Caltech101Config(root=str(big_caltech_root), train_per_class=2)
    data = load("caltech101", config)
    assert data.test[0][0].shape == (3, 224, 224)
    torch.manual_seed(0)
    first, second = data.train[0][0], data.train[0][0]
    assert first.shape == (3, 224, 224) and not torch.equal(first, second)  # a new crop at every read
    plain = data.train.unaugmented
    assert torch.equal(plain[0][0], plain[0][0]) and torch.equal(plain[0][0], data.test[0][0])  # test transform
    assert 0.16 < plain[0][0][0, :, 0].mean() < 0.18
    # The shared dataset options keep both views.
    picked = apply_options(data, Caltech101Config(root=str(big_caltech_root), train_per_class=2, per_class=1,
                                                  classes=[1]))
    assert len(picked.train) == 1 and picked.train.labels.tolist() == [0]
    assert len(picked.train.unaugmented) == 1 and torch.equal(picked.train.unaugmented[0][0], data.test[0][0])
    # train_transform = "center-crop": the training images read exactly as the test images.
    still = load("caltech101", Caltech101Config(root=str(big_caltech_root), train_per_class=2,
                                                train_transform="center-crop"))
    assert torch.equal(still.train[0][0], data.test[0][0]) and not hasattr(still.train, "unaugmented")


def test_resize_smaller_than_the_crop_is_refused():
    with pytest.raises(ValueError, match="resize = 200 is smaller than image_size = 224"):
        Caltech101Config(resize=200)
    assert (Food101Config().image_size, Food101Config().resize, Food101Config().train_transform) == (
        224, 256, "random-resized-crop-flip")
