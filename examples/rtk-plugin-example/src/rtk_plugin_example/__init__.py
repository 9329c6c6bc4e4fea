"""An example third-party rtk plugin.

Adds the attack ``uniform-noise`` and the transfer strategy ``nearest-class-mean``. This module
is imported whenever rtk loads its plugins (``rtk list-plugins``, ``rtk validate``), so it only
holds configs and register lines; torch and the actual work live in the submodules ``noise`` and
``ncm``, named by "module:Class" strings that rtk imports only when a recipe uses the component.
"""
from __future__ import annotations

from dataclasses import dataclass

import rtk
from rtk.config import option

__version__ = "0.1.0"


@dataclass
class UniformNoiseConfig:
    """Random noise drawn uniformly from the Linf ball around each image, clamped to [0, 1].

    A sanity baseline, not an attack to report robustness with: it uses no gradients, so if it
    breaks a model about as often as PGD at the same eps, the gradient attack is not doing its
    job (or the model is fragile to any noise). An example counts as broken if any of its
    ``samples`` draws fools the model. Defaults: eps 8/255, 10 draws per example.
    """

    eps: float = option(8 / 255, min=0.0, help='Linf radius in [0, 1] pixel units; fractions like "8/255" are exact')
    samples: int = option(10, min=1, help="random draws per example (best of k: broken if any draw is misclassified)")


@dataclass
class NearestClassMeanConfig:
    """Nearest-class-mean classifier on frozen source features (Mensink et al., "Distance-Based
    Image Classification: Generalizing to new classes at near-zero cost", IEEE TPAMI 2013).

    The backbone runs once in eval mode over the target training set; the head is then set in
    closed form, with no training loop: with ``normalize`` (cosine NCM) its weights are the
    L2-normalised means of the L2-normalised features and its bias is 0; without, the head is
    the Euclidean NCM rule written as a linear layer (weight = class mean mu_c, bias =
    -|mu_c|^2 / 2), both divided by the mean |mu_c|^2 so that gradient attacks do not stall
    on a saturated softmax (the argmax is unchanged). Classes without training examples are
    never predicted. Defaults: normalize = true, feature_batch_size = 512.
    """

    normalize: bool = option(True, help=(
        "cosine NCM on L2-normalised features (false: Euclidean distance to the raw class means)"))
    feature_batch_size: int = option(512, min=1, help="batch size of the one feature-extraction pass")


@rtk.hookimpl
def register_attacks(register):
    # sanity_fields: the config field the sanity checks may vary for each role (eps-zero, large-eps).
    register("uniform-noise", "rtk_plugin_example.noise:UniformNoise", config=UniformNoiseConfig,
             sanity_fields={"eps": "eps"},
             summary="Uniform random noise in the Linf ball, best of k draws (gradient-free sanity baseline)")


@rtk.hookimpl
def register_transfer_strategies(register):
    # takes_objective=False: the head is set in closed form, so rtk validate rejects a [transfer.objective].
    register("nearest-class-mean", "rtk_plugin_example.ncm:NearestClassMean", config=NearestClassMeanConfig,
             takes_objective=False,
             summary="Frozen source, features cached once, head set to the (cosine) class means; no training")
