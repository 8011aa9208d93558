"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


class QpsnnError(Exception):
    """Base of every error that is the user's input, not a bug: shown without a traceback."""


class ModelFileError(QpsnnError, ValueError):
    """A `.qpsnn` file that cannot be trusted: truncated, corrupted, wrong version or inconsistent."""


class DatasetError(QpsnnError, ValueError):
    """A data set that is unknown, missing or malformed."""


class SpecError(QpsnnError, ValueError):
    """An architecture spec string that does not describe a valid network."""
