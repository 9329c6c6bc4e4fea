"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


class RtkError(Exception):
    """Base class: the message is one line that says what is wrong and how to fix it."""


class RecipeError(RtkError):
    """A recipe (or a --set / --profile override) is malformed or names something invalid."""


class PluginError(RtkError):
    """A plugin failed to load, clashes with another, or implements an unknown hook."""


class UnknownComponentError(RtkError):
    """A recipe or command names a component no loaded plugin registers."""


class DataError(RtkError):
    """A dataset is missing, corrupt or cannot be obtained offline."""


class WeightsError(RtkError):
    """A weights file is missing, unsafe, corrupt, or does not match the model."""
