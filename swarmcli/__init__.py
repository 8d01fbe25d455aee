"""The operator CLI, `scripts/swarm`: one entry point for a stack's swarm as an operator
sees it: its state (status, context), its backups (list, verify, drill), rolling its
machines (roll) and the daily cycle (night, morning). `main.py` holds the verbs table and
the flags every verb shares; each verb's work lives in the module of its concern, and
every call to the Pulumi CLI goes through `pulumicli.py` (bounded, from the project
directory, never with an SSH agent socket that nothing answers)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
