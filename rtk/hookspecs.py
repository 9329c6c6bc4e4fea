"""Hook specifications of rtk.

Every component hook is a *collecting* hook: rtk calls it once per plugin with a ``register``
callback, and the plugin calls ``register`` for each component it provides::

    @rtk.hookimpl
    def register_attacks(register):
        register("my-attack", "my_package.attack:MyAttack", config=MyAttackConfig, summary="One line.",
                 sanity_fields={"eps": "eps", "steps": "steps"})

``register(name, factory, config=ConfigClass, summary="...", replace=False, **traits)``:

- ``name``: the name recipes use (``[[eval.attacks]] name = "my-attack"``). A name registered
  by two plugins is an error naming both, unless the later one passes ``replace=True``.
  A name ending in ``/*`` (for example ``"timm/*"``) matches every ``"timm/<variant>"``; the
  factory then receives the variant as ``variant=`` keyword.
- ``factory``: a callable building the component from an instance of ``config`` (see each
  hook for its extra arguments and what it must return), or the string
  ``"package.module:Name"`` of one: it is imported only when the component is built, so
  listing plugins and validating recipes import none of the plugin's heavy code.
- ``config``: a dataclass whose fields are the component's recipe options; field defaults
  are the component's defaults and ``metadata["help"]`` documents each field
  (``rtk list-plugins --options NAME`` shows them). Use :func:`rtk.config.fields.option`.
- ``summary``: one line shown by ``rtk list-plugins``.
- ``traits``: what the component supports, declared by keyword (``rtk.registry.TRAITS`` lists
  each kind's with its default): an attack's ``sanity_fields`` (the config fields the sanity
  checks may vary, by role: ``{"eps": ..., "steps": ..., "restarts": ...}``) and ``black_box``;
  a strategy's ``takes_objective`` (``rtk validate`` rejects a ``[transfer.objective]`` for a
  strategy that does not take one). An undeclared trait name is an error.

Keep the module that registers light (configs and register lines, no torch): give the factory
as a string, or import heavy libraries (timm, torchattacks, scipy) inside it.
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
    N per class, validation split, image_size and channels are applied by rtk to what the
    factory returns; a dataset that crops to image_size itself sets ``resizes_itself = True``).
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
def register_importers(register):
    """Register checkpoint importers: formats of published checkpoints ([source.import] format = NAME).

    factory(config) -> ``rtk.importing.Importer``: reads a file with ``rtk.importing.safe_load`` (never
    unpickling anything but tensors and the globals its format needs), builds the rtk model its network
    maps onto, and loads the weights and normalisation into it, so that the logits equal the original
    network's. Trait ``builds_model``: the importer builds the network itself ([source] model unused).
    """


@hookspec
def register_trackers(register):
    """Register experiment trackers (``rtk run --tracker NAME``, ``[run] trackers``).

    factory(config, out_dir, run_name) -> rtk.tracking.Tracker (start, log_params, log_metrics,
    log_results, log_artifact, finish; see rtk.tracking). Trait ``requires``: the module the
    tracker imports (e.g. "mlflow") and ``extra``, the pip extra that installs it, so that a run
    asking for a tracker whose library is missing stops before it starts, naming the install command.
    """


@hookspec
def register_commands(cli):
    """Add subcommands to the ``rtk`` click group: ``@cli.command() def mycmd(): ...``."""
