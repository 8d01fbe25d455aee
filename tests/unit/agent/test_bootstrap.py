"""bootstrap and stage-restore: manager 0 joins a live swarm, restores or starts one, and
never makes a second swarm; its stdout is one swarm-bootstrap line."""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
import sys
import tarfile
from pathlib import Path

import pytest
from node_fakes import make_tar, write_env
from swarm_agent import bootstrap, cli, contract, paths, restore
from swarm_agent.run import AgentError

TOKEN = "SWMTKN-1-abcdef0123456789-manager0123"
KEY = "backups/20240102T030405Z.tar.gz"


def ns(restore="latest", autolock=None) -> argparse.Namespace:
    return argparse.Namespace(restore=restore, autolock=autolock)


def probe(addr="10.42.0.11:2377", state="inactive", manager=False, quorum=False, token=None, **more) -> str:
    if state == "down":
        more.setdefault("raft_on_disk", False)
    return contract.line("swarm-probe", addr=addr, state=state, manager=manager, quorum=quorum, token=token, **more)


def stdin(monkeypatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True

    def read(self, *args):
        raise AssertionError("bootstrap read a terminal")


@pytest.fixture
def joins(monkeypatch):
    """membership.join_swarm as bootstrap calls it: recorded, not run."""
    from swarm_agent import membership

    calls = []
    monkeypatch.setattr(membership, "join_swarm", lambda env, *rest: calls.append((env.node_name, *rest)))
    return calls


@pytest.fixture
def inactive(fakes):
    """Manager 0, its swarm inactive until it is started, then an active manager."""
    fakes.docker_up()
    fakes.swarm(state="inactive", manager=False, times=1)
    fakes.swarm(state="active", manager=True)
    fakes.on("docker", "swarm", "init")
    fakes.on("docker", "swarm", "update")
    return fakes


@pytest.fixture
def restores(monkeypatch):
    """restore.restore_or_init, recorded (its own tests are in test_restore.py)."""
    calls = []

    def restore_or_init(node, wanted, allow_unsigned=False):
        calls.append(wanted + (" unsigned" if allow_unsigned else ""))
        return "restored", f"bootstrap: restored from {KEY}", KEY

    monkeypatch.setattr(restore, "restore_or_init", restore_or_init)
    return calls


def one_line(capsys) -> dict:
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1, out
    return contract.read("swarm-bootstrap", out)


def docker_calls(fakes, *prefix: str) -> list[list[str]]:
    return [argv for argv in fakes.argvs("docker") if argv[: len(prefix)] == list(prefix)]


# -- already in a swarm ------------------------------------------------------------------
def test_an_active_manager_is_left_as_it_is(fakes, capsys, monkeypatch):
    fakes.docker_up()
    fakes.swarm(state="active", manager=True, node_id="abc123")
    stdin(monkeypatch, probe(state="active", manager=True, quorum=True, token=TOKEN))
    bootstrap.bootstrap(ns())
    assert one_line(capsys) == {
        "kind": "swarm-bootstrap",
        "action": "already-active",
        "result": "bootstrap: already active (node abc123)",
    }
    assert docker_calls(fakes, "swarm") == []


def test_an_active_manager_gets_the_autolock_asked_for(fakes, capsys):
    fakes.docker_up()
    fakes.swarm(state="active", manager=True, autolock=False)
    fakes.on("docker", "swarm", "update", stdout="To unlock a swarm manager ... SWMKEY-1-secret\n")
    bootstrap.bootstrap(ns(autolock="true"))
    captured = capsys.readouterr()
    assert docker_calls(fakes, "swarm") == [["swarm", "update", "--autolock=true"]]
    assert "bootstrap: autolock is now true" in captured.err
    assert "SWMKEY" not in captured.out + captured.err  # the unlock key goes nowhere
    assert contract.read("swarm-bootstrap", captured.out)["action"] == "already-active"


def test_an_autolock_already_so_is_not_updated(fakes, capsys):
    fakes.docker_up()
    fakes.swarm(state="active", manager=True, autolock=True)
    bootstrap.bootstrap(ns(autolock="true"))
    assert docker_calls(fakes, "swarm") == []


def test_an_active_worker_is_refused(fakes):
    fakes.docker_up()
    fakes.swarm(state="active", manager=False)
    with pytest.raises(AgentError, match="this node is an active swarm worker; run bootstrap on manager 0"):
        bootstrap.bootstrap(ns())


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("locked", "the swarm on this node is locked; run 'docker swarm unlock'"),
        ("pending", "swarm state is 'pending'; run 'docker swarm leave --force' on this node, then retry"),
        ("error", "swarm state is 'error'"),
    ],
)
def test_a_swarm_in_between_is_refused(fakes, state, message):
    fakes.docker_up()
    fakes.swarm(state=state, manager=False)
    with pytest.raises(AgentError, match=message):
        bootstrap.bootstrap(ns())
    assert docker_calls(fakes, "swarm") == [] and fakes.calls("aws") == []


def test_a_manager_without_its_address_is_refused_before_anything_runs(inactive, monkeypatch, joins):
    write_env(SWARM_ADVERTISE_ADDR="")
    stdin(monkeypatch, probe(state="active", manager=True, quorum=True, token=TOKEN))
    with pytest.raises(AgentError, match="SWARM_ADVERTISE_ADDR is empty"):
        bootstrap.bootstrap(ns())
    assert joins == []


# -- the live swarm ----------------------------------------------------------------------
def test_it_joins_through_the_first_manager_with_quorum(inactive, capsys, monkeypatch, joins):
    probes = [
        probe("10.42.0.11:2377", state="down"),
        probe("10.42.0.12:2377", state="active", manager=True, quorum=True, token=TOKEN),
        probe("10.42.0.13:2377", state="active", manager=True, quorum=True, token=TOKEN),
    ]
    stdin(monkeypatch, "a note from ssh\n" + "\n".join(probes) + "\n")
    bootstrap.bootstrap(ns())
    assert joins == [("swarm-dev-manager-0", "manager", "10.42.0.12:2377", TOKEN)]
    assert one_line(capsys) == {
        "kind": "swarm-bootstrap",
        "action": "joined",
        "result": "bootstrap: joined the live swarm through 10.42.0.12:2377 as a manager; nothing restored",
    }
    assert docker_calls(inactive, "swarm", "init") == [] and inactive.calls("aws") == []
    assert not any(TOKEN in " ".join(argv) for argv in inactive.argvs("docker"))


def test_a_joined_manager_gets_the_autolock_asked_for(inactive, capsys, monkeypatch, joins):
    stdin(monkeypatch, probe(state="active", manager=True, quorum=True, token=TOKEN))
    bootstrap.bootstrap(ns(autolock="true"))
    assert docker_calls(inactive, "swarm", "update") == [["swarm", "update", "--autolock=true"]]


def test_a_swarm_without_quorum_is_never_doubled(inactive, monkeypatch, joins, restores):
    probes = [
        probe("10.42.0.11:2377", state="inactive"),
        probe("10.42.0.12:2377", state="active", manager=True, quorum=False),
        probe("10.42.0.13:2377", state="locked", manager=False, quorum=False),
    ]
    stdin(monkeypatch, "\n".join(probes))
    with pytest.raises(AgentError) as raised:
        bootstrap.bootstrap(ns())
    assert str(raised.value) == (
        "bootstrap: refusing to start a second swarm beside the one these managers are in: "
        "10.42.0.12:2377 (swarm active, manager true, quorum false) "
        "10.42.0.13:2377 (swarm locked, manager false, quorum false). Bring that swarm's quorum back (its other "
        "managers), or on one of them run 'docker swarm init --force-new-cluster --advertise-addr <its address>', "
        "then 'pulumi up' again."
    )
    assert joins == [] and restores == [] and docker_calls(inactive, "swarm") == []


def test_a_manager_with_quorum_but_no_token_counts_as_a_swarm_not_joined(inactive, monkeypatch, joins, restores):
    stdin(monkeypatch, probe(state="active", manager=True, quorum=True))
    with pytest.raises(AgentError, match="refusing to start a second swarm"):
        bootstrap.bootstrap(ns())
    assert joins == [] and restores == []


def test_a_live_manager_after_a_stuck_one_is_joined_as_bash_did(inactive, capsys, monkeypatch, joins):
    probes = [
        probe("10.42.0.11:2377", state="active", manager=True, quorum=False),
        probe("10.42.0.12:2377", state="active", manager=True, quorum=True, token=TOKEN),
    ]
    stdin(monkeypatch, "\n".join(probes))
    bootstrap.bootstrap(ns())
    assert one_line(capsys)["action"] == "joined"
    assert [j[2] for j in joins] == ["10.42.0.12:2377"]


def test_a_live_manager_with_an_odd_address_is_not_joined(inactive, monkeypatch, joins):
    stdin(monkeypatch, probe("10.42.0.12 --force", state="active", manager=True, quorum=True, token=TOKEN))
    with pytest.raises(AgentError, match="not HOST:PORT"):
        bootstrap.bootstrap(ns())
    assert joins == []


def test_a_bad_probe_line_is_refused_without_quoting_it(inactive, monkeypatch, joins, restores):
    line = json.dumps({"kind": "swarm-probe", "addr": "a:1", "state": "active", "manager": True, "quorum": True,
                       "token": "SWMTKN-1-secret token"})  # fmt: skip
    stdin(monkeypatch, line)
    with pytest.raises(AgentError, match="bootstrap: stdin is not the other managers' probes") as raised:
        bootstrap.bootstrap(ns())
    assert "secret" not in str(raised.value)
    assert joins == [] and restores == []


@pytest.mark.parametrize("on_disk", [{"raft_on_disk": True}, {"raft_on_disk": None}])
def test_a_manager_whose_dockerd_does_not_answer_but_holds_a_swarm_stops_the_restore(
    inactive, monkeypatch, joins, restores, on_disk
):
    # raft_on_disk None: a probe that cannot say is read as the worse case.
    stdin(monkeypatch, "\n".join([probe("10.42.0.11:2377"), probe("10.42.0.12:2377", state="down", **on_disk)]))
    with pytest.raises(AgentError, match=r"the manager at 10.42.0.12:2377 has a dockerd that does not answer and a sw"):
        bootstrap.bootstrap(ns(restore=KEY))
    assert joins == [] and restores == []
    assert docker_calls(inactive, "swarm", "init") == []


# -- restore or init -------------------------------------------------------------------
def test_no_live_swarm_restores_what_was_asked_for(inactive, capsys, monkeypatch, joins, restores):
    stdin(monkeypatch, "\n".join([probe("10.42.0.11:2377"), probe("10.42.0.12:2377", state="down")]))
    bootstrap.bootstrap(ns(restore=KEY))
    assert restores == [KEY]
    assert one_line(capsys) == {
        "kind": "swarm-bootstrap",
        "action": "restored",
        "result": f"bootstrap: restored from {KEY}",
        "restored_from": KEY,
    }


def test_target_none_never_restores(inactive, capsys, monkeypatch, joins):
    write_env(SWARM_BACKUP_TARGET="none")
    stdin(monkeypatch, "")
    bootstrap.bootstrap(ns(restore="latest"))
    assert one_line(capsys) == {
        "kind": "swarm-bootstrap",
        "action": "initialised",
        "result": "bootstrap: initialised a new swarm",
    }
    assert docker_calls(inactive, "swarm", "init") == [
        ["swarm", "init", "--advertise-addr", "10.42.0.10", "--listen-addr", "10.42.0.10:2377"]
    ]
    assert inactive.calls("aws") == []


def test_a_terminal_on_stdin_is_not_read(inactive, capsys, monkeypatch, joins, restores):
    monkeypatch.setattr(sys, "stdin", Terminal())
    bootstrap.bootstrap(ns())
    assert restores == ["latest"]
    assert one_line(capsys)["action"] == "restored"


def test_a_new_swarm_gets_the_autolock_asked_for(inactive, capsys, monkeypatch):
    write_env(SWARM_BACKUP_TARGET="none")
    stdin(monkeypatch, "")
    bootstrap.bootstrap(ns(autolock="true"))
    assert [argv[:2] for argv in docker_calls(inactive, "swarm")] == [["swarm", "init"], ["swarm", "update"]]
    assert "bootstrap: autolock is now true" in capsys.readouterr().err


def test_the_cli_runs_bootstrap_and_reports_a_refusal_on_one_line(inactive, capsys, monkeypatch, joins):
    stdin(monkeypatch, probe(state="active", manager=True, quorum=False))
    assert cli.main(["bootstrap", "--restore", "none"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("swarm-node: bootstrap: refusing to start a second swarm beside")


def test_the_cli_prints_the_line_pulumi_reads(inactive, capsys, monkeypatch):
    stdin(monkeypatch, "")
    assert cli.main(["bootstrap", "--restore", "none", "--autolock", "false"]) == 0
    assert one_line(capsys)["action"] == "initialised"


@pytest.mark.parametrize(("flag", "recorded"), [([], KEY), (["--allow-unsigned"], f"{KEY} unsigned")])
def test_allow_unsigned_reaches_the_restore_only_when_given(inactive, monkeypatch, restores, flag, recorded):
    stdin(monkeypatch, "")
    assert cli.main(["bootstrap", "--restore", KEY, *flag, "--autolock", "false"]) == 0
    assert restores == [recorded]


# -- stage-restore -----------------------------------------------------------------------
def archive(files: dict[str, bytes]) -> bytes:
    return make_tar(files, gz=False)


def stage(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    bootstrap.stage_restore(argparse.Namespace())


STAGED = {
    "backups/latest": f"{KEY} abc\n".encode(),
    KEY: b"tarball",
    f"{KEY}.sha256": b"abc  x\n",
    f"{KEY}.meta": b"engine=26.1.5\n",
}


def test_stage_restore_replaces_the_staged_copy(fakes, capsys, monkeypatch):
    write_env(SWARM_BACKUP_TARGET="local")
    Path(paths.RESTORE_DIR, "swarm/dev/backups").mkdir(parents=True)
    Path(paths.RESTORE_DIR, "swarm/dev/backups/old.tar.gz").write_text("yesterday's")
    stage(monkeypatch, archive(STAGED))
    store = Path(paths.RESTORE_DIR, "swarm/dev")
    assert capsys.readouterr().out == f"stage-restore: staged 4 file(s) in {store}/\n"
    assert (store / KEY).read_bytes() == b"tarball"
    assert sorted(os.listdir(store / "backups")) == sorted(n[len("backups/") :] for n in STAGED)
    assert stat.S_IMODE(os.stat(paths.RESTORE_DIR).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o700
    assert [n for n in os.listdir(paths.WORK_DIR) if n.startswith("swarm-stage.")] == []


def test_stage_restore_wants_target_local(fakes, monkeypatch):
    with pytest.raises(AgentError, match="stage-restore: this swarm's backups go to s3, not to the Pulumi machine"):
        stage(monkeypatch, archive(STAGED))


def test_stage_restore_refuses_what_is_not_a_tar(fakes, monkeypatch):
    write_env(SWARM_BACKUP_TARGET="local")
    with pytest.raises(AgentError, match="stage-restore: stdin is not a tar"):
        stage(monkeypatch, b"this is not a tar archive at all\n" * 40)
    assert [n for n in os.listdir(paths.WORK_DIR) if n.startswith("swarm-stage.")] == []


@pytest.mark.parametrize("name", ["backups/../../etc/cron.d/x", "swarm/raft/x", "backups/x.tar.gz.sig", "backups/"])
def test_stage_restore_refuses_other_files_and_keeps_the_old_copy(fakes, monkeypatch, name):
    write_env(SWARM_BACKUP_TARGET="local")
    Path(paths.RESTORE_DIR, "swarm/dev/backups").mkdir(parents=True)
    Path(paths.RESTORE_DIR, "swarm/dev/backups/latest").write_text("kept")
    files = {**STAGED, name: b"x"} if not name.endswith("/") else STAGED
    data = archive(files)
    if name.endswith("/"):  # a directory entry
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        data = buffer.getvalue()
    with pytest.raises(
        AgentError, match=r"may only hold backups/latest and backups/<name>\.tar\.gz\[\.sha256\|\.meta\]"
    ):
        stage(monkeypatch, data)
    assert Path(paths.RESTORE_DIR, "swarm/dev/backups/latest").read_text() == "kept"
