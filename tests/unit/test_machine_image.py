"""The morning's AMI is the stack's choice: recorded once, kept through the night, moved
only on purpose (`scripts/swarm adopt-ami`), and the status view says when SSM has a newer."""

from __future__ import annotations

import argparse
import datetime as dt
import os

import pytest
from harness import AMI, SwarmMocks, run_program
from rich.console import Console

from swarmcli import ami, outputs, pulumicli, status
from swarmcli.errors import SwarmCliError

PIN = "random:index/randomShuffle:RandomShuffle"
INSTANCE = "aws:ec2/instance:Instance"
OLD = "ami-0aaaaaaaaaaaaaaa1"


class PinnedYesterday(SwarmMocks):
    """A stack whose record holds the AMI of its first morning, older than SSM's now."""

    def new_resource(self, args):
        resource_id, state = super().new_resource(args)
        if args.typ == PIN:
            state["results"] = [OLD]  # what the state holds: its `inputs` are ignored since
        return resource_id, state


def test_the_first_morning_records_ssms_newest_in_a_protected_record_that_ignores_later_ones():
    run = run_program()
    (pin,) = run.of_type(PIN)
    assert pin.protect and pin.ignore_changes == ["inputs"] and pin.inputs["inputs"] == [AMI]
    assert {i.inputs["ami"] for i in run.of_type(INSTANCE)} == {AMI}
    assert run.outputs["amiId"] == run.outputs["amiNewest"] == AMI


def test_later_mornings_boot_the_recorded_ami_and_export_the_newest_beside_it():
    run = run_program(mocks=PinnedYesterday())
    assert {i.inputs["ami"] for i in run.of_type(INSTANCE)} == {OLD}
    assert run.outputs["amiId"] == OLD and run.outputs["amiNewest"] == AMI


def test_an_ami_named_in_the_config_is_used_and_the_record_still_kept():
    run = run_program({"amiId": "ami-0fedcba9876543210"}, mocks=PinnedYesterday())
    assert {i.inputs["ami"] for i in run.of_type(INSTANCE)} == {"ami-0fedcba9876543210"}
    assert len(run.of_type(PIN)) == 1 and run.of_type(PIN)[0].protect
    assert run.outputs["amiNewest"] == "" and not [t for t, _ in run.invokes if "getParameter" in t]


# -- scripts/swarm adopt-ami --------------------------------------------------------------
PIN_STATE = {"urn": f"urn:pulumi:dev::swarm::swarm:index:Nodes${PIN}::swarm-dev-nodes-ami", "type": PIN}


def adopt(monkeypatch, stack_outputs: dict, dry_run: bool = False) -> list:
    calls = []
    monkeypatch.setattr(outputs, "load_outputs", lambda stack, path: stack_outputs)
    monkeypatch.setattr(outputs, "stack_resources", lambda stack: [PIN_STATE])
    monkeypatch.setattr(pulumicli, "run", lambda args, stack, **kw: calls.append(args))
    ami.command(argparse.Namespace(stack="dev", dry_run=dry_run, json=False))
    return calls


def test_adopting_unprotects_the_record_and_replaces_it_in_one_up(monkeypatch, capsys):
    calls = adopt(monkeypatch, {"amiId": OLD, "amiNewest": AMI})
    assert calls == [
        ["state", "unprotect", PIN_STATE["urn"], "--yes"],
        ["up", "--replace", PIN_STATE["urn"], "--yes", "--skip-preview"],
    ]
    assert f"adopted {AMI} (was {OLD})" in capsys.readouterr().out


def test_nothing_to_adopt_or_a_dry_run_changes_nothing(monkeypatch, capsys):
    assert adopt(monkeypatch, {"amiId": AMI, "amiNewest": AMI}) == []
    assert "already SSM's newest" in capsys.readouterr().out
    assert adopt(monkeypatch, {"amiId": OLD, "amiNewest": AMI}, dry_run=True) == []


def test_an_ami_named_in_the_config_is_changed_there(monkeypatch):
    with pytest.raises(SwarmCliError, match="pulumi config set swarm:amiId"):
        adopt(monkeypatch, {"amiId": "ami-0fedcba9876543210", "amiNewest": ""})


def test_the_status_view_says_when_a_newer_ami_exists():
    now = dt.datetime(2026, 11, 26, 7, 0, tzinfo=dt.UTC)
    for newest, expected in ((AMI, "newer: " + AMI), (OLD, None)):
        view = status.summarize("dev", {"amiId": OLD, "amiNewest": newest}, {}, now=now)
        assert view["image"]["newerExists"] == (expected is not None)
        console = Console(record=True, width=140, file=open(os.devnull, "w"))
        status.render(view, console)
        text = console.export_text()
        assert OLD in text and ((expected in text) if expected else "newer" not in text)
