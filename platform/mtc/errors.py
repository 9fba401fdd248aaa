"""The one base class of mistakes a user can fix: the CLI prints these as messages, not tracebacks."""


class MtcError(Exception):
    """An error whose message says what is wrong and what to change."""
