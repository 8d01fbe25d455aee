"""The managers' Elastic IPs: kept through the night, tied to each morning's machine, never
dropped by a config change, and counted against EC2's quota before anything is made."""

from __future__ import annotations

import pytest
from harness import SwarmMocks, run_program

EIP = "aws:ec2/eip:Eip"
ASSOCIATION = "aws:ec2/eipAssociation:EipAssociation"
INSTANCE = "aws:ec2/instance:Instance"


def ours(*indexes: int, stack: str = "dev") -> dict[str, dict[str, str]]:
    """Addresses this stack already holds in the region (as AWS would list them)."""
    return {f"eipalloc-kept{i}": {"swarm:address": f"swarm/{stack}/manager-{i}"} for i in indexes}


def others(count: int) -> dict[str, dict[str, str]]:
    return {f"eipalloc-other{i}": {"team": "web"} for i in range(count)}


def test_each_manager_has_a_protected_address_tied_to_its_machine_by_an_unprotected_association():
    run = run_program()
    eips = sorted(run.of_type(EIP), key=lambda e: e.name)  # registered concurrently: in any order
    assert [e.name for e in eips] == [f"swarm-dev-nodes-addresses-manager-{i}" for i in range(3)]
    assert all(e.protect and e.inputs["domain"] == "vpc" for e in eips)
    assert [e.inputs["tags"]["swarm:address"] for e in eips] == [f"swarm/dev/manager-{i}" for i in range(3)]
    # Tied by an association, never by the Eip's own `instance`: a protected resource keeps
    # what it depends on through the night, and that would keep the machine.
    assert not any("instance" in e.inputs for e in eips)
    associations = run.of_type(ASSOCIATION)
    assert len(associations) == 3 and not any(a.protect for a in associations)
    for index in range(3):
        association = run.named(f"swarm-dev-nodes-manager-{index}-address")
        machine = run.named(f"swarm-dev-nodes-manager-{index}")
        assert association.inputs["instanceId"] == f"{machine.name}-id"
        assert association.inputs["allocationId"] == f"eipalloc-{eips[index].name}"
        # Pulumi's SSH waits for the association: before it, the address leads nowhere.
        ready = run.command(f"-ready-swarm-dev-manager-{index}")
        assert run.depends_on(ready, association)


def test_outputs_and_known_hosts_carry_the_kept_addresses_not_the_machines_own():
    run = run_program()
    kept = run.outputs["managerPublicIps"]
    assert len(set(kept)) == 3 and all(ip.startswith("198.51.") for ip in kept)
    assert run.command("-ready-swarm-dev-manager-0").inputs["connection"]["host"] == kept[0]
    assert run.outputs["dockerHost"] == f"ssh://ec2-user@{kept[0]}"
    managers = [n for n in run.outputs["nodes"] if n["role"] == "manager"]
    assert [n["publicIp"] for n in managers] == kept
    known = run.outputs["sshKnownHosts"].splitlines()
    for ip in kept:
        assert any(line.split()[0].split(",")[0] == ip for line in known), (ip, known)
    # Workers keep the address their machine boots with (not kept through the night).
    worker_ips = [n["publicIp"] for n in run.outputs["nodes"] if n["role"] == "worker"]
    assert worker_ips and not set(worker_ips) & set(kept)


def test_fewer_managers_keep_the_dropped_managers_addresses_and_say_what_they_cost(caplog):
    """A protected address the program stopped registering would fail every later `up`."""
    run = run_program({"managerCount": 1}, mocks=SwarmMocks(addresses=ours(0, 1, 2)))
    assert sorted(e.name for e in run.of_type(EIP)) == [f"swarm-dev-nodes-addresses-manager-{i}" for i in range(3)]
    assert all(e.protect for e in run.of_type(EIP))
    assert [a.name for a in run.of_type(ASSOCIATION)] == ["swarm-dev-nodes-manager-0-address"]
    warning = " ".join(r.getMessage() for r in caplog.records if "are kept, unassociated" in r.getMessage())
    assert "manager-1, manager-2" in warning and "USD" in warning and "release-addresses" in warning


def test_a_released_address_is_no_longer_registered():
    run = run_program({"managerCount": 1}, mocks=SwarmMocks(addresses=ours(0, 2)))
    names = sorted(e.name for e in run.of_type(EIP))
    assert names == ["swarm-dev-nodes-addresses-manager-0", "swarm-dev-nodes-addresses-manager-2"]


def test_another_stacks_addresses_are_not_kept_for_this_one():
    run = run_program({"managerCount": 1}, mocks=SwarmMocks(addresses=ours(1, 2, stack="prod")))
    assert sorted(e.name for e in run.of_type(EIP)) == ["swarm-dev-nodes-addresses-manager-0"]


def test_a_region_without_room_stops_before_anything_is_registered_and_names_the_quota():
    mocks = SwarmMocks(addresses=others(3), address_quota=5.0)
    with pytest.raises(Exception) as caught:
        run_program(mocks=mocks)
    message = str(caught.value)
    assert "needs 3 more Elastic IP(s)" in message and "holds 3 of its quota of 5" in message
    assert "L-0263D0A3" in message and "swarm:elasticIps false" in message
    assert not [r for r in caught.value.registered if r.custom]


def test_addresses_already_held_need_no_room():
    """Every morning after the first: the stack's own three fill the quota and need none more."""
    mocks = SwarmMocks(addresses={**ours(0, 1, 2), **others(2)}, address_quota=5.0)
    run = run_program(mocks=mocks)
    assert len(run.of_type(EIP)) == 3
    assert not [t for t, _ in run.invokes if t.startswith("aws:servicequotas")]


def test_without_service_quotas_the_default_of_five_is_assumed():
    with pytest.raises(Exception, match="holds 3 of its quota of 5"):
        run_program(mocks=SwarmMocks(addresses=others(3), address_quota=None))
    assert len(run_program(mocks=SwarmMocks(addresses=others(2), address_quota=None)).of_type(EIP)) == 3


@pytest.mark.parametrize("config", [{"elasticIps": False}, {"connectVia": "private"}])
def test_no_addresses_when_turned_off_or_reached_privately(config):
    run = run_program(config)
    assert not run.of_type(EIP) and not run.of_type(ASSOCIATION)
    # One lookup (for addresses held from before), none of the quota.
    assert [t for t, _ in run.invokes if "Eips" in t or "Quota" in t] == ["aws:ec2/getEips:getEips"]
    host = run.command("-ready-swarm-dev-manager-0").inputs["connection"]["host"]
    if "connectVia" in config:
        assert host == run.named("swarm-dev-nodes-manager-0").inputs["privateIp"]
    else:  # the machine's own public address, new every morning
        assert host == run.outputs["managerPublicIps"][0] and host.startswith("198.51.")


@pytest.mark.parametrize("config", [{"elasticIps": False}, {"connectVia": "private"}])
def test_turning_them_off_keeps_the_addresses_held_unassociated_until_released(config, caplog):
    """They are protected: dropping them from the program would fail this `up` and every later one."""
    run = run_program(config, mocks=SwarmMocks(addresses=ours(0, 1, 2)))
    assert len(run.of_type(EIP)) == 3 and all(e.protect for e in run.of_type(EIP))
    assert not run.of_type(ASSOCIATION)
    assert any("no manager uses Elastic IPs" in r.getMessage() for r in caplog.records)
    assert (
        run.command("-ready-swarm-dev-manager-0").inputs["connection"]["host"]
        not in run.outputs["managerPublicIps"][:0]
    )


# -- scripts/swarm release-addresses --------------------------------------------------------
NODES = "urn:pulumi:dev::swarm::swarm:index:SwarmCluster$swarm:index:Nodes"


def eip_state(index: int) -> dict:
    urn = f"{NODES}$swarm:index:ManagerAddresses$aws:ec2/eip:Eip::swarm-dev-nodes-addresses-manager-{index}"
    outputs = {"allocationId": f"eipalloc-{index:017x}", "publicIp": f"203.0.113.{index + 10}"}
    return {"urn": urn, "type": EIP, "protect": True, "outputs": outputs}


def association_state(index: int) -> dict:
    urn = f"{NODES}${ASSOCIATION}::swarm-dev-nodes-manager-{index}-address"
    return {"urn": urn, "type": ASSOCIATION, "inputs": {"allocationId": f"eipalloc-{index:017x}"}}


def test_release_picks_the_addresses_no_manager_of_the_config_uses():
    from swarmcli.addresses import unused

    state = [eip_state(i) for i in range(3)] + [association_state(0)]
    assert [a.index for a in unused(state, {"swarm:managerCount": "1"})] == [1, 2]
    assert unused(state, {}) == []  # three managers by default: all in use
    # Off: all are unused, but one still tied to a machine (its association not yet gone) is kept.
    assert [a.index for a in unused(state, {"swarm:elasticIps": "false"})] == [1, 2]
    assert [a.index for a in unused(state, {"swarm:connectVia": "private"})] == [1, 2]


def test_release_unprotects_then_destroys_each_one_and_a_dry_run_nothing(monkeypatch, capsys):
    import argparse

    from swarmcli import addresses, outputs, pulumicli

    calls = []
    monkeypatch.setattr(outputs, "stack_resources", lambda stack: [eip_state(i) for i in range(3)])
    monkeypatch.setattr(outputs, "config_values", lambda stack: {"swarm:managerCount": "1"})
    monkeypatch.setattr(pulumicli, "run", lambda args, stack, **kw: calls.append((args, stack)))
    addresses.command(argparse.Namespace(stack="dev", dry_run=True, json=False))
    assert calls == [] and "would release swarm-dev-nodes-addresses-manager-1 203.0.113.11" in capsys.readouterr().out
    addresses.command(argparse.Namespace(stack="dev", dry_run=False, json=True))
    urn = eip_state(1)["urn"]
    assert calls[:2] == [
        (["state", "unprotect", urn, "--yes"], "dev"),
        (["destroy", "--target", urn, "--yes", "--skip-preview"], "dev"),
    ]
    assert len(calls) == 4
    assert '"released"' in capsys.readouterr().out
