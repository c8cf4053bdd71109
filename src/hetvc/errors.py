"""Errors hetvc raises for problems a user can fix.

Every user-facing failure is a :class:`HetvcError` whose message is one line that names the
file, column, row or id at fault and says what to do.  The CLI prints the message and exits
with status 2 (bad input) or 3 (a fit that did not converge).
"""


class HetvcError(Exception):
    """Base class: a problem with the user's input or request (one-line message)."""

    exit_code = 2


class InputError(HetvcError, ValueError):
    """Bad data, kinship or arguments."""


class ConvergenceError(HetvcError, RuntimeError):
    """A fit that did not converge (raised only when the caller asks for strictness)."""

    exit_code = 3
