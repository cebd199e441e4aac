"""Exception types raised by the library.

Every message is meant for a person: it names the item (file, row, column, slide) that was wrong
and says how to fix it. The CLI prints ``str(error)`` without a traceback.
"""

from __future__ import annotations


class GhanetError(Exception):
    """Base class of all errors raised on purpose by ghanet."""


class InputError(GhanetError):
    """A user-supplied file, row, column or value is invalid."""


class ConfigError(GhanetError):
    """Invalid options or configuration (CLI exit code 2)."""


class OptionValueError(ConfigError):
    """One option's value cannot work (CLI exit code 2, a usage error naming ``option``).

    ``option``: the option as typed (``--cases``); ``detail``: why, and the smallest value that works.
    """

    def __init__(self, option: str, detail: str) -> None:
        super().__init__(f"{option}: {detail}")
        self.option = option
        self.detail = detail


class SlideError(GhanetError):
    """A slide cannot be opened, has no usable scale, or a region cannot be read."""


class MismatchError(GhanetError):
    """Artifacts that must agree do not (encoders, weights, patch geometry, parameters)."""


class CheckpointError(GhanetError):
    """A model directory is missing files or was written by an incompatible version."""


class ManifestError(ConfigError, InputError):
    """The ``--manifest`` CSV is missing or malformed (a usage error: CLI exit code 2)."""


class BusyError(GhanetError):
    """Another running process holds an output this command would change (e.g. a fold job of a run)."""


class IdMismatchError(ConfigError, MismatchError):
    """No slide id of a table meets a slide or bag on disk: the mapping needs a manifest or a flag (exit 2)."""
