"""The CLI's failures: each is reported as one line on stderr, never as a traceback.

Exit codes, the same for every verb: 0 done, 1 failed (`SwarmCliError` and its kinds),
2 a command line that cannot run (argparse's own, and `UsageError`), 3 nothing backed up
yet (`backups verify`: on a first morning a new swarm is right).
"""

from __future__ import annotations


class SwarmCliError(Exception):
    """Something the operator must fix; the message says what and, where it can, how."""


class UsageError(SwarmCliError):
    """A command line that is not enough to run, e.g. no stack given or in $PULUMI_STACK."""
