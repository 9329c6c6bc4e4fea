"""Store keys stay valid across versions: an option added later (image_size, channels) enters the key
only when set, so the sources already in users' stores keep their keys."""
from rtk.config.recipe import load_recipe
from rtk.config.source_key import source_key
from rtk.config.spec import resolve
from rtk.registry import default_registry
from tests.helpers import REPO


def keys(overrides=()):
    specs = resolve(load_recipe(REPO / "recipes" / "quickstart.toml", None, list(overrides)), default_registry())
    return [source_key(spec.source) for spec in specs]


def test_the_quickstart_sources_keep_the_keys_the_readme_shows():
    assert keys() == ["5009383294552c87", "6ccae361b8f3b90b"]
    readme = (REPO / "README.md").read_text()
    assert all(key in readme for key in keys())


def test_setting_an_option_added_later_changes_the_key():
    assert keys(["source.data.channels=3"])[0] not in keys()
    assert keys(["source.data.image_size=16"])[0] not in keys()
    assert keys(["source.data.image_size=16"]) != keys(["source.data.image_size=32"])
