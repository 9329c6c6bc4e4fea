"""AutoAttack's attacks one at a time, through the reference implementation (package pyautoattack).

pyautoattack calls ``torch.manual_seed(seed)`` inside every ``perturb``; it runs here inside
``torch.random.fork_rng`` so that the caller's random stream (later batches, other attacks) is not
reset. Without a configured seed, each call draws one from that stream, so the run's seed fixes it.
The classes never switch the model's mode themselves; rtk's Attack.__call__ puts it in eval mode.
"""
from __future__ import annotations

import torch

from rtk.evaluation.attacks import Attack
from rtk.errors import RtkError
from rtk_plugins.attacks.gradient import project


class _Flags:
    """Collects the reference code's warnings (it accepts a ``logger``) and our own notes as
    diagnostics flags, named as plugins/autoattack.py names the same checks of the ensemble
    ("autoattack:zero_gradients", "autoattack:n_classes"), so reports group them together."""

    def __init__(self, attack: str):
        self.attack = attack
        self.flags: dict[str, dict] = {}

    def add(self, check: str, message: str) -> None:
        name = f"autoattack:{check}"
        self.flags.setdefault(name, {"name": name, "message": f"{self.attack}: {message}", "source": "autoattack"})

    def warning(self, message: str) -> None:
        message = " ".join(message.replace("See flags_doc.md for details.", "").split())
        self.add("zero_gradients" if "zero gradient" in message else "other", message)

    def info(self, message: str) -> None:
        pass

    debug = info


def _cuda_devices(images: torch.Tensor) -> list[int]:
    """The CUDA generator pyautoattack re-seeds (the current device's) when the images live there."""
    if not images.is_cuda:
        return []
    return [images.device.index if images.device.index is not None else torch.cuda.current_device()]


class ReferenceAttack(Attack):
    """Shared by the pyautoattack wrappers: seeding, class-count checks, flags and the final projection."""

    name = ""
    min_classes = 2  # subclasses whose loss needs more classes raise below that

    def __init__(self, config):
        self.config = config
        self.norm = config.norm
        self.eps = config.eps
        self._flags = _Flags(self.name)

    def diagnostics(self) -> list[dict]:
        return list(self._flags.flags.values())

    def build(self, model, num_classes: int, seed: int, device):
        raise NotImplementedError

    def too_few_classes(self, num_classes: int) -> str:
        return f"{self.name} needs at least {self.min_classes} classes, the model has {num_classes}"

    def target_classes(self, num_classes: int) -> int:
        """The configured number of targets, clamped to the num_classes - 1 that exist (and flagged)."""
        wanted = self.config.target_classes
        if wanted <= num_classes - 1:
            return wanted
        self._flags.add("n_classes", f"target_classes = {wanted} but the model has {num_classes} classes; "
                                     f"used {num_classes - 1} targets, every other class (AutoAttack issue #110)")
        return num_classes - 1

    def perturb(self, model, images, labels):
        if self.eps == 0 or len(images) == 0:
            return images.clone()
        with torch.no_grad():
            num_classes = model(images[:1]).shape[-1]
        if num_classes < self.min_classes:
            raise RtkError(self.too_few_classes(num_classes))
        seed = self.config.seed if self.config.seed is not None else int(torch.randint(2**31 - 1, ()))
        with torch.random.fork_rng(devices=_cuda_devices(images)):
            adversarial = self.build(model, num_classes, seed, images.device).perturb(images, labels)
        # The reference code projects in float arithmetic; re-projecting makes rtk's check exact.
        return project(images, adversarial.detach(), self.norm, self.eps)


class APGD(ReferenceAttack):
    """APGD on cross-entropy ("ce") or the DLR loss ("dlr")."""

    def __init__(self, config, loss: str):
        self.loss = loss
        self.name = f"apgd-{loss}"
        self.min_classes = 3 if loss == "dlr" else 2
        super().__init__(config)

    def too_few_classes(self, num_classes: int) -> str:
        return (f"apgd-dlr: the DLR loss needs at least 3 classes, the model has {num_classes} "
                "(AutoAttack issue #70); use apgd-ce or square")

    def build(self, model, num_classes, seed, device):
        from pyautoattack.autopgd_base import APGDAttack

        cfg = self.config
        return APGDAttack(model, n_iter=cfg.steps, norm=cfg.norm, n_restarts=cfg.restarts, eps=cfg.eps, seed=seed,
                          loss=self.loss, eot_iter=cfg.eot_iter, rho=cfg.rho, device=device, logger=self._flags)


class APGDCE(APGD):
    """apgd-ce: APGD on cross-entropy."""

    def __init__(self, config):
        super().__init__(config, "ce")


class APGDDLR(APGD):
    """apgd-dlr: APGD on the DLR loss."""

    def __init__(self, config):
        super().__init__(config, "dlr")


class APGDTargeted(ReferenceAttack):
    name = "apgd-t"
    min_classes = 4

    def too_few_classes(self, num_classes: int) -> str:
        return (f"apgd-t: the targeted DLR loss needs at least 4 classes, the model has {num_classes} "
                "(AutoAttack issue #70); use apgd-ce, fab-t or square")

    def build(self, model, num_classes, seed, device):
        from pyautoattack.autopgd_base import APGDAttack_targeted

        cfg = self.config
        return APGDAttack_targeted(model, n_iter=cfg.steps, norm=cfg.norm, n_restarts=cfg.restarts, eps=cfg.eps,
                                   seed=seed, eot_iter=cfg.eot_iter, rho=cfg.rho,
                                   n_target_classes=self.target_classes(num_classes), device=device,
                                   logger=self._flags)


class FABTargeted(ReferenceAttack):
    name = "fab-t"

    def build(self, model, num_classes, seed, device):
        from pyautoattack.fab_pt import FABAttack_PT

        cfg = self.config
        return FABAttack_PT(model, norm=cfg.norm, n_restarts=cfg.restarts, n_iter=cfg.steps, eps=cfg.eps,
                            alpha_max=cfg.alpha_max, eta=cfg.eta, beta=cfg.beta, seed=seed, targeted=True,
                            device=device, n_target_classes=self.target_classes(num_classes))


class Square(ReferenceAttack):
    name = "square"

    def build(self, model, num_classes, seed, device):
        from pyautoattack.square import SquareAttack

        cfg = self.config
        return SquareAttack(model, norm=cfg.norm, n_queries=cfg.queries, eps=cfg.eps, p_init=cfg.p_init,
                            n_restarts=cfg.restarts, seed=seed, loss=cfg.loss,
                            resc_schedule=cfg.rescale_schedule, device=device)
