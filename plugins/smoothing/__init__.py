"""Randomized smoothing: Cohen et al.'s certifier and the noise-training objectives it needs.

- certifier ``cohen``: PREDICT / CERTIFY of Cohen, Rosenfeld & Kolter, "Certified Adversarial
  Robustness via Randomized Smoothing" (arXiv:1902.02918; locuslab/smoothing code/core.py);
- objective ``gaussian``: Gaussian data augmentation, the base-classifier training of that paper;
- objective ``consistency``: Jeong & Shin, "Consistency Regularization for Certified Robustness
  of Smoothed Classifiers" (arXiv:2006.04062; jh-jeong/smoothing-consistency).

The configs are torch- and scipy-free so that ``rtk validate`` stays fast; the implementations
live in rtk_plugins.smoothing.cohen and rtk_plugins.smoothing.noise_training, the sample-size
bounds the configs check in rtk_plugins.smoothing.bounds (re-exported here).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import rtk
from rtk.config import option
from rtk_plugins.smoothing.bounds import max_certifiable_radius  # noqa: F401 (re-exported: light)
from rtk_plugins.smoothing.bounds import min_certify_n, min_predict_n

DEFAULT_RADII = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]


@dataclass
class CohenConfig:
    """Randomized-smoothing certification (Cohen et al., "Certified Adversarial Robustness via
    Randomized Smoothing", arXiv:1902.02918), exactly as locuslab/smoothing code/core.py:
    Gaussian noise of std ``sigma`` added in [0, 1] pixel space before the model's own
    normalization, no clipping; CERTIFY draws n0 samples to select the class, n fresh samples
    to estimate its probability, takes the one-sided (1 - alpha) Clopper-Pearson lower bound
    pA_lower, abstains (prediction -1, radius 0) when pA_lower < 0.5 and otherwise certifies the
    L2 radius sigma * Phi^-1(pA_lower). ``mode = "predict"`` runs PREDICT instead (n samples,
    two-sided binomial test of the top two counts, abstain when its p-value exceeds alpha; radius 0).

    Defaults: the paper's (n0 100, n 100,000, alpha 0.001, batch 1000, sigma 0.25). The
    transfer study (Vaishnavi, Eykholt, Rahmati, "A Study of the Effects of Transfer Learning
    on Adversarial Robustness", TMLR 2024; code
    Ethos-lab/transfer_learning_for_adversarial_robustness) smooths at sigma 0.5 on ~500 evenly
    spaced test images (``skip``). Handled
    pitfalls: scipy.stats.binom_test (removed in SciPy 1.12) is replaced by binomtest; the noise
    is drawn on the model's device (core.py hard-codes "cuda"); an n too small to certify
    anything is refused here, and an n that caps every radius below the grid is reported;
    radii are kept as raw floats (certify.py rounds them to 3 digits). Noise is seeded per
    example from (seed, position), so rows do not depend on order, sharding or resuming (the
    streams are the device's: a CPU and a GPU run draw different noise).

    ``max_examples`` is a COUNT of certified examples; code/certify.py's ``--max`` is an INDEX
    bound (``if i == args.max: break``, tested after the skip test, so it stops at test index
    ``--max``). ``--skip s --max M`` with M a multiple of s certifies indices 0, s, ..., M - s:
    ``skip = s``, ``max_examples = M / s`` here. (With M not a multiple of s certify.py's test
    never fires and it certifies the whole set.) PREDICT orders the classes by count as
    core.py's ``counts.argsort()[::-1]`` does up to ties: among equal counts rtk puts the lower
    class first, numpy's argsort the order its sort leaves (for a few classes the higher class
    first). The choice cannot change a result: when the top two counts tie, the two-sided
    binomial test's p-value is 1 > alpha and PREDICT abstains either way; a tie below the top
    two changes neither count.
    """

    sigma: float = option(0.25, min=0.0, help="noise std in [0, 1] pixel units (0: the base classifier, radius 0)")
    n0: int = option(100, min=1, help="noise samples that select the predicted class")
    n: int = option(100_000, min=1, help="noise samples that estimate its probability (PREDICT: the samples)")
    alpha: float = option(0.001, min=0.0, max=1.0, help="failure probability of the certificate")
    batch_size: int = option(1000, min=1, help="noisy copies per forward pass")
    skip: int = option(1, min=1, help="certify every skip-th example of the evaluated test subset")
    max_examples: int | None = option(None, min=1, help=(
        "certify at most this many of the selected examples (a count: certify.py's --max M, an index, is M / skip)"))
    radii: list[float] = option(default_factory=lambda: list(DEFAULT_RADII), min=0.0,
                                help="radii at which certified accuracy is reported and plotted")
    seed: int | None = option(None, help="noise seed (unset: the run seed); each example gets its own stream")
    mode: Literal["certify", "predict"] = option("certify", help=(
        "CERTIFY (radius) or PREDICT (smoothed prediction only)"))

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha: must lie strictly between 0 and 1, got {self.alpha}")
        if not self.radii:
            raise ValueError("radii: give at least one radius, e.g. [0.0, 0.5]")
        if self.mode == "certify" and self.n < (need := min_certify_n(self.alpha)):
            raise ValueError(f"n: n={self.n} cannot certify any example at alpha={self.alpha}: even if all n noisy"
                             " predictions agree, the lower bound alpha^(1/n) ="
                             f" {self.alpha ** (1 / self.n):.3f} < 0.5;"
                             f" use n >= {need} (the paper uses 100000)")
        if self.mode == "predict" and self.n < (need := min_predict_n(self.alpha)):
            raise ValueError(f"n: n={self.n} makes PREDICT abstain on every example at alpha={self.alpha}"
                             f" (the binomial p-value is at least 2*0.5^n); use n >= {need}")


@dataclass
class GaussianConfig:
    """Gaussian data augmentation (Cohen et al., "Certified Adversarial Robustness via
    Randomized Smoothing", arXiv:1902.02918; code locuslab/smoothing code/train.py):
    cross-entropy on x + sigma * N(0, I) in [0, 1] pixel space, no clipping, model in train
    mode. Default sigma 0.25; train with the sigma you certify at (Vaishnavi, Eykholt, Rahmati,
    "A Study of the Effects of Transfer Learning on Adversarial Robustness", TMLR 2024, Table 5:
    a mismatch destroys the smoothed classifier).
    The paper's CIFAR-10 schedule: 90 epochs, SGD lr 0.1, momentum 0.9, wd 1e-4, x0.1 every 30 epochs, batch 400."""

    sigma: float = option(0.25, min=0.0, help="noise std in [0, 1] pixel units")


@dataclass
class ConsistencyConfig:
    """Consistency regularization (Jeong & Shin, "Consistency Regularization for Certified
    Robustness of Smoothed Classifiers", arXiv:2006.04062; code jh-jeong/smoothing-consistency
    code/consistency.py, code/train_consistency.py): for m noisy copies x + d_i,
    d_i ~ N(0, sigma^2 I), with p_i = softmax(f(x + d_i)) and their mean p_bar
    (not detached), minimise mean_i CE(f(x + d_i), y) + lam * mean_i KL(p_bar || p_i) + eta * H(p_bar)
    (CE averaged over the m*b noisy samples, the rest over the b clean ones; the code's
    loss="xent" is eta = lam). The KL term is computed from log p_bar, so its gradient stays
    finite where a probability underflows to 0 (the code's F.kl_div gives NaN there).

    As in train_consistency.py, each loader batch of B examples is split into m chunks of
    B // m (a remainder of B mod m is dropped); each chunk is replicated m times with
    independent noise (a forward batch of B) and gets its own optimizer step, so an epoch takes
    m steps per batch. Defaults are the code's (lam 10, eta 0.5; its --num-noise-vec defaults
    to 1 and must be set to 2, here m = 2). The transfer study (Vaishnavi, Eykholt, Rahmati,
    "A Study of the Effects of Transfer Learning on Adversarial Robustness", TMLR 2024; code
    Ethos-lab/transfer_learning_for_adversarial_robustness certified/run_train.sh) uses sigma
    0.5, m 2, lam 5, eta 0.5; the consistency code's schedule is 150 epochs, batch 256, SGD lr
    0.1, momentum 0.9, wd 1e-4, x0.1 every 50 epochs."""

    sigma: float = option(0.25, min=0.0, help="noise std in [0, 1] pixel units")
    m: int = option(2, min=2, help="noise copies per example (and optimizer steps per loader batch)")
    lam: float = option(10.0, min=0.0, help="weight of the KL consistency term (lambda)")
    eta: float = option(0.5, min=0.0, help="weight of the entropy of the mean prediction")


@rtk.hookimpl
def register_certifiers(register):
    register("cohen", "rtk_plugins.smoothing.cohen:CohenCertifier", config=CohenConfig,
             summary="Randomized smoothing (Cohen et al.): CERTIFY/PREDICT, Clopper-Pearson, certified accuracy"
                     " and ACR")


@rtk.hookimpl
def register_objectives(register):
    register("gaussian", "rtk_plugins.smoothing.noise_training:GaussianAugmentation", config=GaussianConfig,
             summary="Gaussian noise augmentation (Cohen et al.): cross-entropy on x + sigma*N(0, I)")
    register("consistency", "rtk_plugins.smoothing.noise_training:ConsistencyRegularization", config=ConsistencyConfig,
             summary="Consistency regularization (Jeong & Shin): m noisy copies, KL to their mean, entropy")
