"""The night and the morning carry an overall bound and say which host hung: pulumi-command
bounds only the TCP connect, so a host that accepts it and never speaks SSH holds
`pulumi destroy` for ever (issue 19, item 15). A stand-in Pulumi CLI that hangs."""

from __future__ import annotations

import json
import os
import time

from swarmcli import main, pulumicli

BACKUP_URN = "urn:pulumi:dev::swarm::swarm:index:SwarmFormation$command:remote:Command::swarm-dev-swarm-backup"
HUNG = {
    "deployment": {
        "resources": [],
        "pending_operations": [
            {
                "type": "deleting",
                "resource": {
                    "urn": BACKUP_URN,
                    "inputs": {"connection": {"host": "203.0.113.7", "port": 22, "privateKey": "not shown"}},
                },
            }
        ],
    }
}


def test_a_night_that_hangs_stops_at_its_bound_and_names_the_host(tmp_path, monkeypatch, capsys):
    (tmp_path / "bin").mkdir()
    (tmp_path / "export.json").write_text(json.dumps(HUNG))
    # `destroy` ignores SIGINT as a pulumi stuck in an SSH handshake does: it needs the kill.
    (tmp_path / "bin" / "pulumi").write_text(
        f'#!/bin/sh\ncase "$1 $2" in\n  "stack export") cat {tmp_path}/export.json ;;\n'
        "  destroy*) trap '' INT; sleep 30 ;;\nesac\n"
    )
    (tmp_path / "bin" / "pulumi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setattr(pulumicli, "LONG", 1)
    monkeypatch.setattr(pulumicli, "CANCEL_GRACE", 1)
    started = time.monotonic()
    code = main.main(["night", "--stack", "dev", "--json"])
    assert time.monotonic() - started < 20
    assert code == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error.startswith("pulumi destroy --exclude-protected --yes --stack dev did not finish within 1 s")
    assert "still running: deleting of swarm-dev-swarm-backup on 203.0.113.7:22" in error
    assert "not shown" not in error  # nothing of the state but where
