"""Domain errors. The CLI turns them into one clean line: UsageError exits 2, RunFailure exits 1."""


class UsageError(Exception):
    """Bad input from the user (an option, an unknown study, a file): exit code 2."""


class RunFailure(Exception):
    """The search itself could not go on (storage unreachable, every worker crashing): exit code 1."""
