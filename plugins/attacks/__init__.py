"""Built-in attacks. Models keep their normalization inside, so eps is in [0, 1] pixel units (no
torchattacks ``set_normalization_used``). Implementations live beside this file, registered as
"rtk_plugins.attacks.module:Class" strings imported only when an attack is built, so that listing
plugins stays light.

- ``fgsm``, ``pgd``, ``cw-pgd``: torchattacks and a small loop of our own.
- ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab-t``, ``square``: the reference implementation
  (package ``pyautoattack``) with AutoAttack's standard settings (Linf / L2) as defaults. Targeted
  attacks use at most num_classes - 1 targets and flag it in diagnostics() when they asked for more
  (AutoAttack issue #110); the DLR losses raise an RtkError on models with too few classes (3 for
  apgd-dlr, 4 for apgd-t; issue #70) rather than falling back silently to another loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import rtk
from rtk.config import option

Norm = Literal["Linf", "L2"]
_EPS_HELP = 'radius in [0, 1] pixel units; fractions like "8/255" are exact (L2 evaluations usually use 0.5)'
_SEED_HELP = "seed of the attack's randomness (default: drawn from torch's global RNG, so the run's seed fixes it)"


@dataclass
class FGSMConfig:
    """Fast gradient sign method (Goodfellow et al., "Explaining and Harnessing Adversarial
    Examples", arXiv:1412.6572): one step of eps along the sign of the cross-entropy gradient.
    Linf only. Default: eps 8/255."""

    eps: float = option(8 / 255, min=0.0, help='Linf radius in [0, 1] pixel units; fractions like "8/255" are exact')


@dataclass
class PGDOptions:
    """The options PGD and CW-PGD share."""

    norm: Norm = option("Linf", help="threat model norm")
    eps: float = option(8 / 255, min=0.0, help='radius in [0, 1] pixel units; fractions like "8/255" are exact')
    steps: int = option(20, min=0, help="gradient steps")
    alpha: float | None = option(None, min=0.0, help="step size (default eps/4 for Linf, 2.5*eps/steps for L2)")
    random_start: bool = option(True, help="start from a uniform random point of the ball")
    restarts: int = option(1, min=1, help="random restarts; an example counts as broken if any restart breaks it")


@dataclass
class PGDConfig(PGDOptions):
    """Projected gradient descent (Madry et al., "Towards Deep Learning Models Resistant to
    Adversarial Attacks", arXiv:1706.06083) on cross-entropy. Defaults: Linf, eps 8/255, 20 steps
    of eps/4, one random start, the last iterate returned (the PGD-20 of Shafahi et al. 2020,
    through torchattacks).

    ``keep = "best-batch"`` returns instead the iterate (the start included) with the highest
    batch-mean loss: the ``use_best`` of RoLI's attack (Hua et al., "Initialization Matters for
    Adversarial Transfer Learning", arXiv:2312.05716; code DongXzz/RoLI src/adv_func.py,
    ``adv_generator``), whose loss is a batch mean, so one iterate is chosen for the whole batch
    of clean-correct examples the evaluation passes (the choice depends on ``[eval]
    batch_size``; RoLI's is 64). ``"best-example"`` picks each example's highest-loss iterate.
    Both cost one more forward pass per restart."""

    keep: Literal["last", "best-batch", "best-example"] = option("last", help=(
        "which iterate to return: last; best-batch, the one with the highest batch-mean loss (RoLI's use_best);"
        " best-example, each example's highest-loss one"))


@dataclass
class CWPGDConfig(PGDOptions):
    """PGD on the Carlini-Wagner margin loss -ReLU(z_y - max_{j!=y} z_j + kappa) (Carlini &
    Wagner, "Towards Evaluating the Robustness of Neural Networks", arXiv:1608.04644; PGD of Madry
    et al., arXiv:1706.06083): the CW-20 of Shafahi et al. 2020. Defaults: Linf, eps 8/255, 20
    steps of eps/4 (2/255), one random start, kappa 50. Linf steps follow the gradient's sign,
    L2 steps the normalised gradient; every step is projected onto the ball and [0, 1].

    kappa = 50 is Shafahi's setting: with so large a margin the hinge stays active, so the attack
    keeps pushing past the decision boundary instead of stopping at the first misclassification."""

    kappa: float = option(50.0, min=0.0, help=(
        "confidence margin: the loss stops rising once z_y trails the best other logit by kappa"))


@dataclass
class APGDConfig:
    """APGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", arXiv:2003.01690), reference implementation (pyautoattack).
    Defaults are AutoAttack's standard settings: Linf, eps 8/255, 100 iterations, 1 restart,
    rho 0.75, no EOT."""

    norm: Norm = option("Linf", help="threat model norm")
    eps: float = option(8 / 255, min=0.0, help=_EPS_HELP)
    steps: int = option(100, min=1, help="iterations per restart (AutoAttack's n_iter)")
    restarts: int = option(1, min=1, help="random restarts (AutoAttack's n_restarts; its constructor default is 5)")
    rho: float = option(0.75, min=0.0, max=1.0, help=(
        "step-size halving threshold on the fraction of loss-increasing steps"))
    eot_iter: int = option(1, min=1, help=(
        "gradients averaged per step (Expectation over Transformation, for randomized models)"))
    seed: int | None = option(None, min=0, help=_SEED_HELP)


@dataclass
class APGDTConfig(APGDConfig):
    """APGD-T: APGD on the targeted DLR loss, once per target class (the top-k other logits),
    Croce & Hein, arXiv:2003.01690 (pyautoattack). Defaults are AutoAttack's standard settings:
    Linf, eps 8/255, 100 iterations, 1 restart per target, 9 target classes (clamped to
    num_classes - 1, with a diagnostics flag). Needs at least 4 classes."""

    target_classes: int = option(9, min=1, help=(
        "target classes, the highest other logits first (AutoAttack's n_target_classes)"))


@dataclass
class FABTConfig:
    """FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein, "Minimally distorted
    Adversarial Examples with a Fast Adaptive Boundary Attack", arXiv:1907.02044), reference
    implementation (pyautoattack). A minimum-norm attack: a point counts only if it lies within
    eps. Defaults are AutoAttack's standard settings: Linf, eps 8/255, 100 iterations, 1 restart,
    9 target classes (clamped to num_classes - 1, with a diagnostics flag), alpha_max 0.1, eta
    1.05, beta 0.9."""

    norm: Norm = option("Linf", help="threat model norm")
    eps: float = option(8 / 255, min=0.0, help=_EPS_HELP)
    steps: int = option(100, min=1, help="iterations per restart and target (AutoAttack's n_iter)")
    restarts: int = option(1, min=1, help=(
        "restarts per target; later ones start at a random point (AutoAttack's n_restarts)"))
    target_classes: int = option(9, min=1, help=(
        "target classes, the highest other logits first (AutoAttack's n_target_classes)"))
    alpha_max: float = option(0.1, min=0.0, max=1.0, help="largest weight of the step towards the clean image")
    eta: float = option(1.05, min=1.0, help="overshoot factor of each step")
    beta: float = option(0.9, min=0.0, max=1.0, help="backward step towards the clean image after a success")
    seed: int | None = option(None, min=0, help=_SEED_HELP)


@dataclass
class SquareConfig:
    """Square Attack (Andriushchenko et al., "Square Attack: a query-efficient black-box
    adversarial attack via random search", arXiv:1912.00049), reference implementation
    (pyautoattack); a score-based black-box attack, useful to expose gradient masking. Defaults
    are AutoAttack's standard settings: Linf, eps 8/255, 5000 queries, p_init 0.8, 1 restart,
    margin loss, no rescaled schedule."""

    norm: Norm = option("Linf", help="threat model norm")
    eps: float = option(8 / 255, min=0.0, help=_EPS_HELP)
    queries: int = option(5000, min=1, help="model queries per restart (AutoAttack's n_queries)")
    p_init: float = option(0.8, min=0.0, max=1.0, help="initial fraction of pixels a square covers")
    restarts: int = option(1, min=1, help="restarts")
    loss: Literal["margin", "ce"] = option("margin", help="loss the random search minimises")
    rescale_schedule: bool = option(False, help=(
        "fit the p schedule to queries (AutoAttack keeps the 10,000-query schedule)"))
    seed: int | None = option(None, min=0, help=_SEED_HELP)


AttackName = Literal["apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"]


@dataclass
class AutoAttackConfig:
    """AutoAttack (Croce & Hein, arXiv:2003.01690). Defaults: Linf, eps 8/255, the standard
    version (APGD-CE, APGD-T with 9 target classes, FAB-T with 9 target classes, Square with
    5000 queries; 100 iterations and one restart each), the reference implementation,
    seed 0.

    ``custom`` runs ``attacks_to_run`` with AutoAttack's constructor settings: APGD-CE/APGD-DLR
    and FAB untargeted with 5 restarts, APGD-T and FAB-T with 1 restart per target class,
    100 iterations, Square 1 restart of 5000 queries. ``n_restarts`` and ``iterations`` change
    those for ``custom`` only: the named versions are protocols, so they stay fixed.
    """

    norm: Literal["Linf", "L2"] = option("Linf", help="threat model norm")
    eps: float = option(8 / 255, min=0.0, help='radius in [0, 1] pixel units; fractions like "8/255" are exact')
    version: Literal["standard", "plus", "rand", "custom"] = option(
        "standard", help="standard: APGD-CE, APGD-T, FAB-T, Square; plus: adds APGD-DLR and FAB, 5 restarts; "
                         "rand: APGD-CE and APGD-DLR with EOT over 20 draws, for randomised models; "
                         "custom: attacks_to_run")
    attacks_to_run: list[AttackName] = option(
        default_factory=list, help='custom only: attacks in the order they run, e.g. ["apgd-ce", "square"]')
    backend: Literal["pyautoattack", "torchattacks"] = option(
        "pyautoattack", help=(
            "pyautoattack: the reference implementation; torchattacks: its port, standard settings forced (flagged)"))
    seed: int = option(0, min=0, help="seed of every sub-attack's random starts (AutoAttack reseeds torch before each)")
    n_restarts: int | None = option(
        None, min=1, help=(
            "custom only: restarts of APGD-CE, APGD-DLR and untargeted"
            " FAB (default: AutoAttack's constructor value, 5)"))
    iterations: int | None = option(
        None, min=1, help="custom only: iterations of APGD-CE, APGD-DLR, APGD-T, FAB and FAB-T (default 100)")
    batch_size: int = option(250, min=1, help=(
        "AutoAttack's internal batch size (its default, 250); the random starts depend on it"))
    verbose: bool = option(False, help="log AutoAttack's progress (logger \"auto-attack\", to stderr)")

    def __post_init__(self):
        if self.version == "custom":
            if not self.attacks_to_run:
                raise ValueError('version "custom" needs attacks_to_run, e.g. ["apgd-ce", "square"]')
            if len(set(self.attacks_to_run)) != len(self.attacks_to_run):
                raise ValueError(f"attacks_to_run lists an attack twice: {self.attacks_to_run}")
            if self.backend == "torchattacks":
                raise ValueError('version "custom" runs only on backend "pyautoattack"'
                                 " (torchattacks has no custom version)")
        else:
            for key in ("attacks_to_run", "n_restarts", "iterations"):
                if getattr(self, key):
                    raise ValueError(f'{key} applies to version "custom" only; version "{self.version}" fixes its'
                                     " attacks and settings")


# The config fields the sanity checks vary, by role (rtk.registry.TRAITS["attack"]): each config's
# eps, steps and restarts fields (AutoAttack's n_restarts and iterations are not varied).
EPS = {"eps": "eps"}
EPS_STEPS_RESTARTS = {"eps": "eps", "steps": "steps", "restarts": "restarts"}


@rtk.hookimpl
def register_attacks(register):
    register("fgsm", "rtk_plugins.attacks.gradient:FGSMAttack", config=FGSMConfig, sanity_fields=EPS,
             summary="FGSM: one signed cross-entropy gradient step, Linf (torchattacks)")
    register("pgd", "rtk_plugins.attacks.pgd:PGDAttack", config=PGDConfig, sanity_fields=EPS_STEPS_RESTARTS,
             summary="PGD on cross-entropy, Linf or L2, random start and restarts (torchattacks)")
    register("cw-pgd", "rtk_plugins.attacks.gradient:CWPGDAttack", config=CWPGDConfig,
             sanity_fields=EPS_STEPS_RESTARTS,
             summary="PGD on the CW margin loss, kappa 50: Shafahi et al.'s CW-20, Linf or L2")
    # AutoAttack's gradient attacks one at a time, through its reference code (autoattack_family.py).
    for name, cls, config, summary in [
        ("apgd-ce", "APGDCE", APGDConfig, "APGD on cross-entropy, Linf or L2"),
        ("apgd-dlr", "APGDDLR", APGDConfig, "APGD on the DLR loss, Linf or L2, 3+ classes"),
        ("apgd-t", "APGDTargeted", APGDTConfig, "APGD on the targeted DLR loss, 9 targets, 4+ classes"),
        ("fab-t", "FABTargeted", FABTConfig, "targeted FAB, minimum-norm, 9 targets, Linf or L2"),
    ]:
        register(name, f"rtk_plugins.attacks.autoattack_family:{cls}", config=config, sanity_fields=EPS_STEPS_RESTARTS,
                 summary=f"{summary} (AutoAttack reference code)")
    register("square", "rtk_plugins.attacks.autoattack_family:Square", config=SquareConfig,
             sanity_fields={"eps": "eps", "restarts": "restarts"}, black_box=True,
             summary="Square Attack, black-box random search, 5000 queries (AutoAttack reference code)")
    register("autoattack", "rtk_plugins.attacks.autoattack:AutoAttack", config=AutoAttackConfig, sanity_fields=EPS,
             summary="AutoAttack (Croce & Hein): reference pyautoattack by default, its checks as flags")
