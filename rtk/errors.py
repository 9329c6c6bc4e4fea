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


class OutputError(RtkError):
    """The output folder cannot be written: full disk, no permission, or another run holds it."""


def os_error(exc: OSError) -> OutputError:
    """An OSError nobody turned into an RtkError (a plugin writing a file, say), as one line."""
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return write_error(exc.filename or "the output folder", exc)
    where = f" {exc.filename}" if exc.filename else ""
    return OutputError(f"cannot access{where}: {exc.strerror or exc}")


def write_error(path, exc: OSError) -> OutputError:
    """A one-line OutputError for an OSError raised while writing ``path``."""
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"no space left on device while writing {path}: free space or choose another --out")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write {path}: {exc.strerror or 'permission denied'}; choose another --out")
    return OutputError(f"cannot write {path}: {exc.strerror or exc}; choose another --out")
