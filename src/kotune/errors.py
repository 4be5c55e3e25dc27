"""The one exception type a user sees as a message instead of a traceback."""


class KotuneError(Exception):
    """A problem with the user's input or setup; `kotune` prints it and exits with status 2."""


class ConfigError(KotuneError):
    """params.yaml (or a preset) has an unknown key or a bad value."""
