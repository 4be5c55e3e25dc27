"""The one exception type a user sees as a message instead of a traceback."""


class KotuneError(Exception):
    """A problem with the user's input or setup; `kotune` prints it and exits with status 2."""


class ConfigError(KotuneError):
    """params.yaml (or a preset) has an unknown key or a bad value."""


def hub_unreachable_message(what: str, name: str, exc: Exception) -> str:
    """What to do when a Hub id cannot be loaded: the user's fix, not the library's traceback."""
    return (
        f"cannot load {what} '{name}': it is not a local path and the Hugging Face Hub could not be "
        f"reached or it is not cached ({type(exc).__name__}). Either download it where there is network "
        f"(`hf download {name}`) and point HF_HOME at that cache with HF_HUB_OFFLINE=1, or set the "
        f"param to a local folder."
    )
