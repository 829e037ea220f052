"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class TlbenchError(Exception):
    """An error caused by the user's input (suite file, flag, missing data).

    The message is a single line naming the file, field and value and what is allowed.
    """


class ConfigError(TlbenchError):
    """A suite file or command-line option is invalid."""


class UnreadableData(TlbenchError):
    """An example of an image-file dataset cannot be read (a corrupt or truncated file).

    Raised in DataLoader workers too, which re-raise it in the main process with the
    worker's traceback as the message: only its last line, the original message, is kept.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_original_line(type(self), message))


class ImageSizeMismatch(ConfigError):
    """``image_size: native`` on images that are not all of one size. Raised in DataLoader
    workers too, and kept to its original line as :class:`UnreadableData` is."""

    def __init__(self, message: str) -> None:
        super().__init__(_original_line(type(self), message))


def _original_line(kind: type, message: str) -> str:
    """The original message of an error a DataLoader worker re-raised in the main process
    (which passes the worker's whole traceback as the message): its last line, unprefixed."""
    last = message.strip().splitlines()[-1] if message.strip() else message
    return last.removeprefix(f"{kind.__module__}.{kind.__name__}: ")


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss; the trial is pruned with this reason."""

    def __init__(self, epoch: int, value: float, *, what: str = "") -> None:
        where = f" of the reused {what}" if what else ""
        super().__init__(f"non-finite training loss {value} at epoch {epoch}{where}")
        self.epoch = epoch
        self.value = value
