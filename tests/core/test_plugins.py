"""Plugin loading, registry errors and `rtk list-plugins`."""
import json
import tomllib
import types
from dataclasses import dataclass

import pytest

import rtk
import rtk.registry
from rtk.config.fields import option
from rtk.errors import PluginError, UnknownComponentError
from rtk.plugins import load_plugins
from rtk.registry import Registry, registry_with
from tests.helpers import REPO


def plugin_module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, func in hooks.items():
        setattr(module, hook_name, rtk.hookimpl(func))
    return module


@dataclass
class StepsConfig:
    steps: int = option(3, help="how many")


def attack_plugin(name="dummy-attack", replace=False, module="plug_a"):
    def register_attacks(register):
        register(name, lambda config: None, config=StepsConfig, summary="a test attack", replace=replace)

    return plugin_module(module, register_attacks=register_attacks)


def fake_distribution(tmp_path, dist: str, entry: str, module_source: str, module: str) -> None:
    """Make importlib.metadata see an installed distribution with an rtk entry point."""
    info = tmp_path / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[rtk]\n{entry} = {module}\n")
    (tmp_path / f"{module}.py").write_text(module_source)


def test_every_builtin_module_has_an_entry_point():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = set(pyproject["project"]["entry-points"]["rtk"].values())
    modules = {f"rtk_plugins.{p.parent.name}" for p in (REPO / "plugins").glob("*/__init__.py")}
    assert modules, "no plugin folders found under plugins/"
    assert modules == declared


def test_builtins_of_every_kind_are_registered():
    registry = Registry(*load_plugins())
    for kind, name in [("model", "small-cnn"), ("dataset", "digits"), ("attack", "pgd"), ("objective", "pgd-at"),
                       ("objective", "natural"), ("strategy", "linear-probe"), ("strategy", "finetune")]:
        component = registry.get(kind, name)
        assert component.plugin.distribution == "rtk"
        assert component.summary


def test_duplicate_name_names_both_providers():
    with pytest.raises(PluginError) as info:
        registry_with(attack_plugin(module="first"), attack_plugin(module="second"), entry_points=False)
    assert "first" in str(info.value) and "second" in str(info.value) and "replace=True" in str(info.value)


def test_replace_true_wins():
    registry = registry_with(attack_plugin(module="first"), attack_plugin(module="second", replace=True),
                             entry_points=False)
    assert registry.get("attack", "dummy-attack").plugin.name == "second"


def test_clash_with_a_builtin_is_an_error():
    with pytest.raises(PluginError, match='attack "pgd" is registered twice: by rtk_plugins.attacks'):
        registry_with(attack_plugin(name="pgd"))


def test_unknown_name_suggests_close_matches():
    registry = Registry(*load_plugins())
    with pytest.raises(UnknownComponentError) as info:
        registry.get("attack", "pdg")
    assert "'pgd'" in str(info.value) and "rtk list-plugins --kind attack" in str(info.value)


def test_misspelled_hook_is_rejected():
    def register_atacks(register):
        pass

    with pytest.raises(PluginError, match="register_atacks"):
        registry_with(plugin_module("typo", register_atacks=register_atacks), entry_points=False)


def test_failing_plugin_import_is_named(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "broken-dist", "broken", "raise RuntimeError('boom')\n", "broken_plugin_mod")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r'rtk failed to load plugin "broken-dist\[broken\]": RuntimeError: boom'):
        load_plugins()
    monkeypatch.setenv("RTK_DISABLE_PLUGINS", "broken")
    assert "broken_plugin_mod" not in load_plugins()[1]


def test_failing_plugin_is_a_one_line_cli_error(tmp_path, monkeypatch, cli):
    fake_distribution(tmp_path, "broken-dist", "broken", "raise RuntimeError('boom')\n", "broken_plugin_mod2")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(rtk.registry, "_default", None)
    result = cli("list-plugins")
    assert result.exit_code == 2
    assert "broken-dist[broken]" in result.stderr and "Traceback" not in result.stderr


def test_disable_plugins_blocks_builtins(monkeypatch):
    monkeypatch.setenv("RTK_DISABLE_PLUGINS", "attacks, autoattack, rtk_plugins.objectives")
    registry = Registry(*load_plugins())
    assert registry.names("attack") == []
    assert not {"natural", "pgd-at", "free-at", "trades"} & set(registry.names("objective"))
    assert "digits" in registry.names("dataset")


def test_wildcard_names_pass_the_variant():
    def register_source_models(register):
        register("fam/*", lambda config, num_classes, variant=None: variant, summary="a family")

    registry = registry_with(plugin_module("family", register_source_models=register_source_models), entry_points=False)
    component, variant = registry.resolve("model", "fam/big")
    assert component.name == "fam/*" and variant == "big"


def test_list_plugins_table_json_and_options(cli):
    table = cli("list-plugins")
    assert table.exit_code == 0 and "linear-probe" in table.stdout and "rtk_plugins.transfer" in table.stdout
    rows = json.loads(cli("list-plugins", "--json", "--kind", "attack").stdout)
    assert {r["kind"] for r in rows} == {"attack"} and "pgd" in {r["name"] for r in rows}
    assert all(r["distribution"] and r["version"] and r["summary"] for r in rows)
    options = json.loads(cli("list-plugins", "--options", "pgd", "--json").stdout)
    fields = {o["name"]: o for o in options[0]["options"]}
    assert fields["steps"]["default"] == 20 and fields["norm"]["type"] == '"Linf" | "L2"' and fields["eps"]["help"]
    assert cli("list-plugins", "--options", "linear-probe").exit_code == 0
    missing = cli("list-plugins", "--options", "nope")
    assert missing.exit_code == 2 and "rtk list-plugins" in missing.stderr


def test_plugin_commands_are_added(monkeypatch, cli):
    import click

    def register_commands(cli):
        @cli.command("hello-plugin")
        def hello():
            click.echo("hello from a plugin")

    registry = registry_with(plugin_module("cmds", register_commands=register_commands))
    monkeypatch.setattr(rtk.registry, "_default", registry)
    monkeypatch.setattr("rtk.cli.RtkGroup._plugins_loaded", False)
    result = cli("hello-plugin")
    assert result.exit_code == 0 and "hello from a plugin" in result.stdout


# --- lazy factories and declared traits ------------------------------------------------------


def test_a_lazy_factory_is_imported_only_when_the_component_is_built(tmp_path, monkeypatch):
    (tmp_path / "lazy_attack_impl.py").write_text("BUILT = []\n\ndef build(config):\n    BUILT.append(config)\n"
                                                  "    return ('built', config.steps)\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def register_attacks(register):
        register("lazy-attack", "lazy_attack_impl:build", config=StepsConfig, summary="lazy")

    import sys

    registry = registry_with(plugin_module("lazy", register_attacks=register_attacks), entry_points=False)
    component = registry.get("attack", "lazy-attack")
    assert "lazy_attack_impl" not in sys.modules and component.summary == "lazy"
    assert component.factory(StepsConfig(steps=4)) == ("built", 4)
    assert sys.modules["lazy_attack_impl"].BUILT == [StepsConfig(steps=4)]


def test_a_lazy_factory_that_cannot_be_imported_names_it():
    def register_attacks(register):
        register("broken", "no_such_module_xyz:Attack", config=StepsConfig)

    registry = registry_with(plugin_module("broken", register_attacks=register_attacks), entry_points=False)
    with pytest.raises(PluginError, match='cannot import the factory "no_such_module_xyz:Attack"'):
        registry.get("attack", "broken").factory(StepsConfig())


def test_a_factory_string_without_a_colon_is_refused():
    def register_attacks(register):
        register("bad", "just_a_module", config=StepsConfig)

    with pytest.raises(PluginError, match='"package.module:Name"'):
        registry_with(plugin_module("bad", register_attacks=register_attacks), entry_points=False)


def test_traits_default_per_kind_and_unknown_traits_are_refused():
    def register_attacks(register):
        register("declared", lambda config: None, config=StepsConfig, black_box=True, sanity_fields={"steps": "steps"})
        register("plain", lambda config: None, config=StepsConfig)

    registry = registry_with(plugin_module("traits", register_attacks=register_attacks), entry_points=False)
    declared, plain = registry.get("attack", "declared"), registry.get("attack", "plain")
    assert declared.trait("black_box") is True and declared.trait("sanity_fields") == {"steps": "steps"}
    assert plain.trait("black_box") is False and plain.trait("sanity_fields") == {}

    def register_wrong(register):
        register("wrong", lambda config: None, config=StepsConfig, takes_objective=True)

    expected = "declares takes_objective; attack components may declare: sanity_fields, black_box"
    with pytest.raises(PluginError, match=expected):
        registry_with(plugin_module("wrong", register_attacks=register_wrong), entry_points=False)


def test_listing_and_validating_import_no_torch():
    """The built-in plugins register lazily: `rtk list-plugins` and `rtk validate` never import torch."""
    import subprocess
    import sys

    code = ("import sys\nfrom click.testing import CliRunner\nfrom rtk.cli import cli\n"
            "for args in (['list-plugins'], ['validate', 'recipes/quickstart.toml']):\n"
            "    result = CliRunner().invoke(cli, args)\n"
            "    assert result.exit_code == 0, result.output\n"
            "heavy = sorted(m for m in ('torch', 'timm', 'torchattacks', 'scipy') if m in sys.modules)\n"
            "sys.exit(f'imported {heavy}' if heavy else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]


def test_build_checks_options_like_a_recipe_and_passes_variants():
    from rtk.config.fields import ConfigValueError

    registry = Registry(*load_plugins())
    attack = registry.build("attack", "pgd", {"eps": "8/255", "steps": 3})
    assert attack.eps == pytest.approx(8 / 255)
    with pytest.raises(ConfigValueError, match="nope"):
        registry.build("attack", "pgd", {"nope": 1})
    model = registry.build("model", "timm/resnet18", {"pretrained": False}, num_classes=3)
    assert model.num_classes == 3
