"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


class QpsnnError(Exception):
    """Base of every error that is the user's input, not a bug: shown without a traceback."""


class ModelFileError(QpsnnError, ValueError):
    """A `.qpsnn` file that cannot be trusted: truncated, corrupted, wrong version or inconsistent."""


class DatasetError(QpsnnError, ValueError):
    """A data set that is unknown, missing or malformed."""


class SpecError(QpsnnError, ValueError):
    """An architecture spec string that does not describe a valid network."""


class DeviceError(QpsnnError):
    """Talking to an accelerator failed; the message says what happened and what to check."""


class NoDeviceError(DeviceError):
    """Nothing to talk to at the URL: the port does not exist, is closed or is busy."""


class DeviceBusy(DeviceError):
    """The device (a serve-sim link) is serving another client."""


class DeviceTimeout(DeviceError):
    """The device did not answer (or not correctly) within the time-out, after the allowed retries."""


class ProtocolVersionError(DeviceError):
    """The device speaks another version of the host protocol."""


class ModelMismatchError(DeviceError):
    """The model does not fit the accelerator on the device (another geometry, bit width or capacity)."""


class DeviceRefused(DeviceError):
    """The device answered a request with an error code."""

    def __init__(self, command: str, code: int, meaning: str):
        super().__init__(f"the device refused {command} with code {code}: {meaning}")
        self.command, self.code = command, code


EXTRAS = {"hw": "the hardware extras", "fpga": "the FPGA extras", "nir": "the NIR extras", "pcie": "the PCIe extras"}


class MissingExtra(QpsnnError):
    """A command whose optional dependencies (one of qpsnn's pip extras) are not installed."""


def require_extra(command: str, extra: str, *modules: str) -> None:
    """Refuse ``qpsnn COMMAND`` in one line, naming the extra to install, when one of ``modules`` is not installed.
    A module that is there but fails to import (a broken install, a bug) raises as it is."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not (name == exc.name or name.startswith(f"{exc.name}.")):  # itself, or its package, is missing
                raise
            raise MissingExtra(f"qpsnn {command} needs {EXTRAS[extra]}: pip install 'qpsnn[{extra}]'") from None
