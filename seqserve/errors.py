"""One exception type for user-facing failures: the CLI prints its message on one line."""


class SeqserveError(Exception):
    """Something the user can fix: a bad path, a bad input, a failed gate. Message = one line."""
