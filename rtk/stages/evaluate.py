"""The evaluation stage: the target model under the recipe's [[eval.attacks]] as [eval] says, with
the sanity checks and per-class accuracy when asked. Its progress is saved batch by batch in the
run's evaluation state (rtk.services.state), so an interrupted evaluation continues."""
from __future__ import annotations

from rtk.config.fields import to_table
from rtk.config.spec import RunSpec
from rtk.data import DataSplits
from rtk.errors import RtkError
from rtk.evaluation.robust_accuracy import evaluate
from rtk.evaluation.sanity import SanityAttack
from rtk.services.state import RunFolder
from rtk.stages.context import RunContext


def evaluate_target(model, target: DataSplits, spec: RunSpec, ctx: RunContext, folder: RunFolder) -> tuple[dict, dict]:
    """evaluate()'s result, and the run's results entries: n_eval, attack_order, per_class and
    class_names (when asked), flags."""
    if model.num_classes < target.num_classes:
        raise RtkError(f"the model has {model.num_classes} outputs but [target] has {target.num_classes} classes;"
                       " add a [transfer] strategy")
    config = spec.eval
    attacks = [(a.label, a.build()) for a in spec.attacks]
    state = folder.evaluation(ctx.run_index, {"attack_configs": [[a.name, to_table(a.config)] for a in spec.attacks]})
    result = evaluate(model, target.test, attacks, ctx, config, num_classes=target.num_classes,
                      sanity_attacks=[SanityAttack.of(a) for a in spec.attacks], state=state)
    extra = {"n_eval": result["n"], "attack_order": config.attack_order}
    if config.per_class:
        extra["per_class"] = result["per_class"]
        extra["class_names"] = target.class_names or [str(c) for c in range(target.num_classes)]
    extra["flags"] = result["flags"]
    return result, extra
