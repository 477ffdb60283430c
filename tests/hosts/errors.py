"""The one error the kit raises: a message that names the cause, printed without a traceback."""


class HostsError(RuntimeError):
    """A test host could not be built, started or stopped."""
