"""Recipe loading, overrides, profiles, sweeps, and the one-line errors of `rtk validate` / `rtk run`."""
import pytest

from rtk.errors import RecipeError
from rtk.config.recipe import load_recipe, paper_for, parse_value
from rtk.registry import default_registry
from rtk.config.spec import resolve
from tests.helpers import REPO, TINY_RECIPE


def specs(path, profile=None, overrides=()):
    return resolve(load_recipe(path, profile, list(overrides)), default_registry())


def test_tiny_recipe_resolves(tiny_recipe):
    (spec,) = specs(tiny_recipe)
    assert spec.source.model.name == "small-cnn" and spec.source.model.config.channels == [8, 16]
    assert spec.source.train.epochs == 2 and spec.source.objective.name == "natural"
    assert spec.target.config.classes == [5, 6, 7, 8, 9]
    assert spec.attacks[0].label == "PGD-5" and spec.attacks[0].config.eps == 0.1


def test_set_overrides_with_types_and_fractions(tiny_recipe):
    (spec,) = specs(tiny_recipe,
                    overrides=["transfer.lr=0.5", "eval.attacks.0.eps=8/255", "source.train.augment=crop-flip"])
    assert spec.transfer.config.lr == 0.5
    assert spec.attacks[0].config.eps == 8 / 255
    assert spec.source.train.augment == "crop-flip"


def test_parse_value():
    assert parse_value("0.01") == 0.01 and parse_value("true") is True and parse_value("[1, 2]") == [1, 2]
    assert parse_value("8/255") == "8/255" and parse_value('"x"') == "x"


def test_sweep_is_a_cartesian_product_with_readable_ids(write_recipe):
    path = write_recipe(TINY_RECIPE + '\n[sweep]\n"transfer.lr" = [0.1, 0.01]\n'
                        '"source.objective" = [{name = "natural"}, {name = "pgd-at", eps = 0.1}]\n')
    runs = specs(path)
    assert [r.id for r in runs] == ["lr=0.1,objective=natural", "lr=0.1,objective=pgd-at",
                                    "lr=0.01,objective=natural", "lr=0.01,objective=pgd-at"]
    assert runs[1].source.objective.config.eps == 0.1 and runs[2].transfer.config.lr == 0.01


def test_profile_overrides_keys_and_sweeps(write_recipe):
    path = write_recipe(TINY_RECIPE + '\n[sweep]\n"transfer.lr" = [0.1, 0.01, 0.001]\n'
                        '[profile.smoke]\n"source.train.epochs" = 1\n"sweep.transfer.lr" = [0.1]\n')
    (spec,) = specs(path, profile="smoke")
    assert spec.source.train.epochs == 1
    with pytest.raises(RecipeError, match='no profile "fast"; profiles in this recipe: smoke'):
        load_recipe(path, "fast")


def test_profile_unset_removes_keys_before_setting(write_recipe, tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"")
    text = TINY_RECIPE.replace('model = "small-cnn"', 'model = "small-cnn"\nweights = "w.safetensors"')
    path = write_recipe(text + '\n[sweep]\n"transfer.lr" = [0.1, 0.01]\n'
                        '[profile.smoke]\nunset = ["source.weights", "sweep.transfer.lr", "source"]\n'
                        '"source.model" = "small-cnn"\n"source.channels" = [4]\n"source.data.dataset" = "digits"\n')
    raw = load_recipe(path, "smoke").raw
    assert raw["source"] == {"model": "small-cnn", "channels": [4], "data": {"dataset": "digits"}}
    assert raw["sweep"] == {}
    bad = write_recipe(TINY_RECIPE + '[profile.smoke]\nunset = ["source.wieghts"]\n', "bad.toml")
    with pytest.raises(RecipeError, match='"source.wieghts" is not in the recipe'):
        load_recipe(bad, "smoke")


def test_sweep_cases_set_keys_together(write_recipe):
    path = write_recipe(TINY_RECIPE + '\n[sweep]\n"run.seed" = [0, 1]\n'
                        '[[sweep.cases]]\nid = "fast"\n"transfer.lr" = 0.1\n"transfer.epochs" = 1\n'
                        '[[sweep.cases]]\n"transfer.lr" = 0.01\n"transfer.epochs" = 5\n'
                        '[[paper.rows]]\nwhere = { "transfer.epochs" = 5 }\nclean = 0.5\n')
    recipe = load_recipe(path)
    points = recipe.points()
    assert [p.id for p in points] == ["seed=0,fast", "seed=0,lr=0.01,epochs=5",
                                      "seed=1,fast", "seed=1,lr=0.01,epochs=5"]
    assert [(p.raw["transfer"]["lr"], p.raw["transfer"]["epochs"]) for p in points] == [(0.1, 1), (0.01, 5)] * 2
    assert points[1].params == {"run.seed": 0, "transfer.lr": 0.01, "transfer.epochs": 5}
    assert paper_for(recipe, points[1].params) == {"clean": 0.5} and paper_for(recipe, points[0].params) == {}
    bad = write_recipe(TINY_RECIPE + '\n[[sweep.cases]]\nid = "empty"\n', "bad.toml")
    with pytest.raises(RecipeError, match="cases.0 must be a table"):
        load_recipe(bad).points()


def test_source_label_names_sweep_points(write_recipe):
    path = write_recipe(TINY_RECIPE + '\n[sweep]\nsource = [{ label = "A", model = "small-cnn", channels = [4] },'
                        ' { label = "B", model = "small-cnn", channels = [8] }]\n'
                        '[[paper.rows]]\nwhere = { source = "B" }\nclean = 0.5\n')
    recipe = load_recipe(path)
    assert [p.id for p in recipe.points()] == ["source=A", "source=B"]
    assert paper_for(recipe, recipe.points()[1].params) == {"clean": 0.5}
    assert len(resolve(recipe, default_registry())) == 2  # label is not a model option


def test_paper_rows_match_sweep_points(write_recipe):
    path = write_recipe(TINY_RECIPE + '\n[sweep]\n"transfer.lr" = [0.1, 0.01]\n[paper]\ncite = "T"\n'
                        '[[paper.rows]]\nwhere = { "transfer.lr" = 0.01 }\nclean = 0.9\n"PGD-5" = 0.4\n')
    recipe = load_recipe(path)
    first, second = recipe.points()
    assert paper_for(recipe, first.params) == {"cite": "T"}
    assert paper_for(recipe, second.params) == {"cite": "T", "clean": 0.9, "PGD-5": 0.4}


def test_paper_percentages_are_refused(write_recipe):
    path = write_recipe(TINY_RECIPE + "\n[paper]\nclean = 81.2\n")
    with pytest.raises(RecipeError, match="fractions in"):
        paper_for(load_recipe(path), {})


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: t.replace('strategy = "linear-probe"', 'strategy = "linear-probe"\nlamda = 1'),
     '[transfer] unknown key "lamda"; valid keys: strategy, objective, epochs'),
    (lambda t: t.replace("epochs = 3", 'epochs = "three"'), "[transfer] epochs: expected an integer"),
    (lambda t: t.replace('name = "pgd"', 'name = "pdg"'),
     '[eval.attacks.0] name: unknown attack "pdg"; did you mean \'pgd\''),
    (lambda t: t.replace('model = "small-cnn"', 'model = "small-cnn"\nweights = "missing.safetensors"'),
     "[source] weights: file"),
    (lambda t: t.replace("eps = 0.1", "eps = -0.1"), "[eval.attacks.0] eps: must be at least 0.0"),
    (lambda t: t.replace("[run]", "[rnu]"), "unknown table [rnu]"),
    (lambda t: t.replace("steps = 5", "steps = 5\nsteps = 6"), "invalid TOML"),
    (lambda t: t + "\n[sweep]\n\"transfer.lr\" = []\n", '"transfer.lr" must be a non-empty list'),
    (lambda t: t.replace('dataset = "digits"\nclasses = [5', 'classes = [5'), '[target] missing key "dataset"'),
])
def test_bad_recipes_give_one_line_errors(write_recipe, cli, edit, fragment):
    path = write_recipe(edit(TINY_RECIPE))
    for command in ("validate", "run"):
        result = cli(command, path)
        assert result.exit_code == 2, result.stdout + result.stderr
        assert fragment in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0
        assert str(path) in result.stderr or "invalid TOML" in result.stderr


def test_errors_name_component_and_plugin(write_recipe, cli):
    path = write_recipe(TINY_RECIPE.replace("steps = 5", "stepz = 5"))
    result = cli("validate", path)
    assert 'attack "pgd" (plugin rtk_plugins.attacks (rtk' in result.stderr
    assert "valid keys: name, label, norm, eps, steps" in result.stderr


def test_missing_recipe_and_non_utf8(tmp_path, cli):
    result = cli("validate", tmp_path / "nope.toml")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[run]\nname = "\xff\xfe"\n')
    result = cli("validate", bad)
    assert result.exit_code == 2 and "not valid UTF-8" in result.stderr


def test_bad_set_override(tiny_recipe, cli):
    result = cli("validate", tiny_recipe, "--set", "transfer.lr")
    assert result.exit_code == 2 and "expected KEY=VALUE" in result.stderr
    result = cli("validate", tiny_recipe, "--set", "eval.attacks.3.eps=0.1")
    assert result.exit_code == 2 and "needs an index 0..0" in result.stderr
    result = cli("validate", tiny_recipe, "--set", "transfer.lr=fast")
    assert result.exit_code == 2 and "[transfer] lr" in result.stderr


def test_debug_shows_the_traceback(write_recipe, cli):
    from rtk.errors import RtkError

    path = write_recipe(TINY_RECIPE.replace('name = "pgd"', 'name = "pdg"'))
    with pytest.raises(RtkError):
        cli("--debug", "validate", path)


SHIPPED = sorted((REPO / "recipes").rglob("*.toml"))
# Recipes whose source is a published checkpoint rtk cannot train at a sensible cost (ImageNet
# ResNet-50s, RoLI's Swin-B): they name it as [source.import]. Every other recipe trains its
# sources or selects them from another recipe.
IMPORTS = {"shafahi_table3", "shafahi_fig3", "shafahi_fig4", "study_table2", "study_table3", "study_table4",
           "study_table5", "roli_cifar"}


@pytest.fixture(scope="module")
def fresh_recipes(tmp_path_factory):
    """recipes/ as a fresh clone has it: the recipe files, no weights or imported checkpoints."""
    root = tmp_path_factory.mktemp("clone") / "recipes"
    for path in SHIPPED:
        copy = root / path.relative_to(REPO / "recipes")
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(path.read_bytes())
    return root


def test_imports_are_where_the_recipes_say():
    top = {p.stem: p for p in SHIPPED if p.parent == REPO / "recipes"}
    assert {name for name, path in top.items() if "import" in path.read_text()} >= IMPORTS


@pytest.mark.parametrize("recipe", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates_and_plans_offline(recipe, cli, fresh_recipes, monkeypatch):
    """On a fresh clone, no weights, no network: every recipe validates, and its dry run prints the
    plan (downloads named, nothing fetched or written)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    copy = fresh_recipes / recipe.relative_to(REPO / "recipes")
    result = cli("validate", copy)
    assert result.exit_code == 0, result.stderr
    plan = cli("run", copy, "--dry-run")
    assert plan.exit_code == 0 and "source 1/" in plan.stdout, plan.stderr
    if recipe.stem in IMPORTS and recipe.parent == REPO / "recipes":
        assert "DOWNLOAD" in plan.stdout or "IMPORT" in plan.stdout, plan.stdout
    profiles = load_recipe(recipe).profiles
    assert "smoke" in profiles, f"{recipe.name} needs a [profile.smoke]"
    smoke = cli("validate", copy, "--profile", "smoke")
    assert smoke.exit_code == 0, smoke.stderr


def _keys_and_strings(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _keys_and_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _keys_and_strings(value)
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize("recipe", SHIPPED, ids=lambda p: p.name)
def test_no_shipped_recipe_needs_a_weights_file(recipe):
    """Sources are trained, selected from another recipe or imported; no recipe (profiles
    included) points at a weights/ file the user has to make by hand. Comments may mention one."""
    import tomllib

    found = [s for s in _keys_and_strings(tomllib.loads(recipe.read_text(encoding="utf-8"))) if "weights/" in s]
    assert not found, f"{recipe.name} names weights files: {found}"


def test_readme_recipe_example_validates(tmp_path, cli):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Recipes\n\n```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "readme.toml"
    path.write_text(block)
    for profile in ((), ("--profile", "smoke")):
        result = cli("validate", path, *profile)
        assert result.exit_code == 0, result.stderr
