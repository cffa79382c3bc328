"""Errors of fleet deployment. All are TaoflowErrors: the CLI prints them on one line, without a traceback."""

from ..errors import TaoflowError


class DeployError(TaoflowError):
    """A deploy step failed on a device; `device` names it."""

    def __init__(self, message, device=None, path=None, line=None, details=None):
        self.device = device
        self.reason = message  # without the device prefix, for wrapping into another error
        self.details = details or {}
        super().__init__(f"{device}: {message}" if device else message, path, line)


class InventoryError(DeployError):
    """fleet.toml does not parse or does not validate (path and line say where)."""


class HostKeyError(DeployError):
    """The device's SSH host key is unknown or does not match the trusted one: nothing is sent to it."""


class UnreachableError(DeployError):
    """Connecting, authenticating or keeping the SSH connection failed (after retries where they apply)."""

    exit_code = 1  # the run failed, the input was fine (taoflow.cli: 0 ok, 1 the run failed, 2 bad input)


class RemoteTimeout(DeployError):
    """A remote command ran past its time limit; it was killed on the device too (coreutils timeout)."""

    exit_code = 1


class AgentError(DeployError):
    """The device agent ran and reported {"ok": false}: `details` carries its error details (e.g. smoke)."""

    def __init__(self, message, device=None, command=None, details=None):
        self.command = command
        super().__init__(message, device=device, details=details)


class UploadError(DeployError):
    """An upload could not be completed and verified by checksum within its retries."""

    exit_code = 1
