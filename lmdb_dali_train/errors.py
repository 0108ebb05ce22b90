"""The trainer's one error a user can fix: raised anywhere below the command line, printed as one line."""


class ConfigError(Exception):
    """A bad flag, path, configuration file or checkpoint: one line on stderr, exit code ``ExitCode.USAGE``."""
