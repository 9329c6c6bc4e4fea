"""Hook specifications of rtk.

Every component hook is a *collecting* hook: rtk calls it once per plugin with a ``register``
callback, and the plugin calls ``register`` for each component it provides::

    @rtk.hookimpl
    def register_attacks(register):
        register("my-attack", make_my_attack, config=MyAttackConfig, summary="One line.")

``register(name, factory, config=ConfigClass, summary="...", replace=False)``:

- ``name``: the name recipes use (``[[eval.attacks]] name = "my-attack"``). A name registered
  by two plugins is an error naming both, unless the later one passes ``replace=True``.
  A name ending in ``/*`` (for example ``"timm/*"``) matches every ``"timm/<variant>"``; the
  factory then receives the variant as ``variant=`` keyword.
- ``factory``: a callable building the component from an instance of ``config`` (see each
  hook for its extra arguments and what it must return).
- ``config``: a dataclass whose fields are the component's recipe options; field defaults
  are the component's defaults and ``metadata["help"]`` documents each field
  (``rtk list-plugins --options NAME`` shows them). Use :func:`rtk.config.fields.option`.
- ``summary``: one line shown by ``rtk list-plugins``.

Import heavy libraries (torch models, timm, torchattacks, scipy) inside factories so that
``rtk list-plugins`` and ``rtk validate`` stay fast.
"""
import pluggy

hookspec = pluggy.HookspecMarker("rtk")


@hookspec
def register_source_models(register):
    """Register model architectures.

    factory(config, num_classes, variant=None) -> rtk.models.RtkModel, a module that takes
    images in [0, 1] and does its own preprocessing (see rtk.models).
    """


@hookspec
def register_datasets(register):
    """Register datasets.

    The config class must subclass rtk.data.DatasetConfig (class subsets, label remapping,
    N per class and validation split are applied by rtk to what the factory returns).
    factory(config) -> rtk.data.DataSplits with images in [0, 1].
    """


@hookspec
def register_attacks(register):
    """Register adversarial attacks.

    factory(config) -> rtk.evaluation.attacks.Attack: declares ``norm`` and ``eps`` and maps
    (model, images, labels) to adversarial images inside the threat model and [0, 1].
    """


@hookspec
def register_objectives(register):
    """Register training objectives (losses used to train a source or fine-tune a model).

    factory(config) -> rtk.stages.training.Objective: ``loss(model, images, labels) -> scalar``.
    """


@hookspec
def register_transfer_strategies(register):
    """Register transfer strategies (how a source model is adapted to the target task).

    factory(config) -> rtk.stages.strategy.TransferStrategy:
    ``transfer(model, data, ctx, objective) -> model`` where ``data`` is the target
    rtk.data.DataSplits, ``ctx`` the rtk.stages.context.RunContext and ``objective`` the objective
    named in ``[transfer.objective]`` (or None).
    """


@hookspec
def register_certifiers(register):
    """Register certifiers (provable robustness, e.g. randomized smoothing).

    factory(config) -> object with ``certify(model, data, ctx) -> dict`` (``data`` the test set) returning
    JSON-serialisable results (summary metrics under "metrics"). Subclass ``rtk.evaluation.certifier.Certifier``
    (per-example ``certify_examples`` + ``summarize``) so that runs can shard and resume it.
    """


@hookspec
def register_commands(cli):
    """Add subcommands to the ``rtk`` click group: ``@cli.command() def mycmd(): ...``."""
