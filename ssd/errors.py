"""What every error a user can fix has in common.

A `UserError` is a bad file, flag value, config field or model directory: its message names it
(and the fix where there is one). The command-line apps print it as one line, `<app>: error:
<message>`, and exit 1 (`ssd.cli.run`); a traceback is for the project's own bugs. The errors of
the library's modules (ConfigError, DataError, CheckpointError, ...) derive from it besides their
built-in base (ValueError, RuntimeError, ...), so callers catching those keep working.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; its message is the whole report (module docstring)."""
