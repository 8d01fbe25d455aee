"""The node's lock: the verbs that stop dockerd or change the swarm never interleave (a
killed Pulumi run leaves its verb running), a verb that gives up names the holder, and
the daily image cleanup never starts dockerd in the middle of a backup."""

from __future__ import annotations

import fcntl
import os

import pytest
from swarm_agent import cli, lock, paths


@pytest.fixture
def holder():
    """Another verb holding the node's lock (another open file: flock conflicts as between processes)."""
    with open(paths.NODE_LOCK, "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        other.write("backup (pid 4242, since 19:00:01 UTC)\n")
        other.flush()
        yield other


@pytest.mark.parametrize(
    ("argv", "wait"),
    [(["bootstrap", "--restore", "latest"], 900), (["backup"], 900), (["join", "worker", "10.42.0.10:2377"], 600),
     (["reconcile", "--managers", "m0"], 600), (["leave"], 600), (["docker-service", "stop"], 600)],
)  # fmt: skip
def test_a_verb_waits_a_bounded_time_for_the_holder_then_names_it_and_does_nothing(fakes, holder, capsys, argv, wait):
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert f"swarm-node: {argv[0]}: 'swarm-node backup (pid 4242, since 19:00:01 UTC)' holds this node's lock" in error
    assert f"after {wait}s of waiting" in error
    assert wait <= fakes.clock.slept <= wait + 1
    assert fakes.calls() == []  # not one docker, aws or systemctl call


def test_the_lock_is_free_again_after_a_verb_fails(fakes):
    with pytest.raises(RuntimeError), lock.held("backup", 0):
        raise RuntimeError("the upload failed half way")
    with lock.held("bootstrap", 0), open(paths.NODE_LOCK) as record:
        assert record.read().startswith(f"bootstrap (pid {os.getpid()}, since ")
    assert open(paths.NODE_LOCK).read() == ""  # released: the record goes with it


def test_a_verb_that_finds_the_lock_free_holds_it_for_its_body(fakes):
    with lock.held("backup", 0):
        with pytest.raises(lock.Busy, match="reconcile: 'swarm-node backup"), lock.held("reconcile", 3):
            pass
    assert 3 <= fakes.clock.slept <= 4


@pytest.fixture
def systemd(fakes):
    """systemd runs, and knows docker.service and docker.socket."""
    os.makedirs(paths.SYSTEMD_RUN, exist_ok=True)
    fakes.on("systemctl", "show", "-P", "LoadState", stdout="loaded\n")
    return fakes


def test_the_image_cleanup_prunes_nothing_while_another_verb_holds_the_lock(systemd, holder, capsys):
    assert cli.main(["cleanup-images"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cleanup-images: nothing pruned: cleanup-images: 'swarm-node backup (pid 4242")
    assert systemd.calls() == [] and systemd.clock.slept == 0  # no wait, and no docker call to start dockerd


def test_the_image_cleanup_leaves_a_stopped_dockerd_stopped(systemd, capsys):
    systemd.on("systemctl", "is-active", "--quiet", rc=3)
    assert cli.main(["cleanup-images"]) == 0
    assert "docker.service is not running; nothing pruned" in capsys.readouterr().out
    assert ["is-active", "--quiet", "docker.service"] in systemd.argvs("systemctl")
    assert systemd.calls("docker") == []


def test_the_image_cleanup_prunes_when_dockerd_runs_and_the_lock_is_free(systemd, capsys):
    systemd.on("systemctl", "is-active", "--quiet")
    systemd.docker_up()
    systemd.on("docker", "image", "prune", stdout="Total reclaimed space: 0B\n")
    assert cli.main(["cleanup-images"]) == 0
    prune = [a for a in systemd.argvs("docker") if a[:2] == ["image", "prune"]]
    assert prune == [["image", "prune", "-a", "-f", "--filter", "until=24h", "--filter", "label!=swarm.keep"]]
