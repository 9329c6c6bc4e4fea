"""rtk's public Python API; everything here is exported by ``import rtk`` (``rtk.run``, ``rtk.evaluate``...).

- rtk.api.recipes: load_recipe, run, Results;
- rtk.api.evaluation: evaluate, certify (their inputs in rtk.api.inputs and rtk.api.attack_lists,
  their results in rtk.api.reports);
- rtk.api.components: attack, model, dataset, source, sources, components, options.

None imports torch or a plugin when imported; each function imports what it needs when called.
"""
