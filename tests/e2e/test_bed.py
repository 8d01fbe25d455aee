"""The bed itself: machines as EC2 has them, and nothing left behind, even by a killed run."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from testbed.addresses import AddressError
from testbed.bed import BED_REGION, ECR_HOST, reap_stale_beds, sh, wait_until
from testbed.host import cgroup_left
from testbed.volumes import BY_ID, VolumeError

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_two_machines_may_share_a_name(bed):
    """As two EC2 instances may (a replacement and the machine it replaces)."""
    first = bed.create_host("twin", str(bed.network[200 * 256 + 30]))
    second = bed.create_host("twin", str(bed.network[200 * 256 + 31]))
    try:
        assert first.key != second.key and first.name == second.name == "twin"
        for host in (first, second):
            assert host.run(["hostname"]).stdout.decode().strip() == "twin"
            assert host.run(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout.decode().count(host.ip) == 1
    finally:
        bed.wipe_host(first.key)
        bed.wipe_host(second.key)


def ssh_banner(address: str, timeout: float = 5) -> str:
    """What answers on port 22 at `address`, from here ("" when nothing does)."""
    try:
        with socket.create_connection((address, 22), timeout=timeout) as connection:
            connection.settimeout(timeout)
            return connection.recv(64).decode(errors="replace")
    except OSError:
        return ""


def test_public_addresses_are_not_the_private_ones_and_lead_only_where_ec2s_would(bed):
    """New at every launch and every stop and start, given up to an associated Elastic IP
    and back when it is disassociated; EC2's quota and its refusals."""
    host = bed.create_host("addressed", str(bed.network[200 * 256 + 32]))
    addresses = bed.addresses
    try:
        wait_until(f"sshd on {host.ip}", lambda: ssh_banner(host.ip).startswith("SSH-2.0"), 120, interval=1)
        first = addresses.launched("i-addressed", host.ip, public=True)
        assert ipaddress.ip_address(first) in addresses.pool and first != host.ip
        assert ssh_banner(first).startswith("SSH-2.0"), f"{first} does not lead to {host.ip}"
        second = addresses.restarted("i-addressed")
        assert second != first and ssh_banner(first, timeout=2) == "" and ssh_banner(second).startswith("SSH-2.0")

        quota, addresses.quota = addresses.quota, len(addresses.eips) + 1
        try:
            eip = addresses.allocate({"swarm:address": "bed/test/manager-0"})
            with pytest.raises(AddressError, match="AddressLimitExceeded"):
                addresses.allocate({})
        finally:
            addresses.quota = quota
        assert addresses.describe({"swarm:address": "bed/test/manager-0"}, []) == [eip]
        assert ssh_banner(eip.public_ip, timeout=2) == ""  # allocated, not yet associated: nowhere
        addresses.associate(eip.allocation_id, "i-addressed")
        assert ssh_banner(eip.public_ip).startswith("SSH-2.0") and ssh_banner(second, timeout=2) == ""
        assert addresses.restarted("i-addressed") == eip.public_ip  # kept across a stop and start
        with pytest.raises(AddressError, match=r"InvalidIPAddress\.InUse"):
            addresses.release(eip.allocation_id)
        addresses.disassociate(eip.association_id)
        assert ssh_banner(eip.public_ip, timeout=2) == ""
        addresses.disassociate("eipassoc-gone")  # already gone: not an error, as the provider's delete
        addresses.release(eip.allocation_id)
    finally:
        addresses.terminated("i-addressed")
        bed.wipe_host(host.key)
    assert not [r for r in addresses._routes.values() if r == host.ip]


def ecr_password(host, endpoint: str) -> str:
    """What a node's agent does: ask ECR for a token with the AWS CLI (the instance role's
    credentials come from the metadata service) and decode its password."""
    ask = ["aws", "ecr", "get-authorization-token", "--region", BED_REGION, "--endpoint-url", endpoint]
    data = json.loads(host.run([*ask, "--output", "json"]).stdout)["authorizationData"][0]
    # Taken apart before any assertion: pytest would print the token with the dictionary.
    proxy_endpoint, token = data["proxyEndpoint"], data["authorizationToken"]
    assert proxy_endpoint == f"https://{ECR_HOST}"
    user, _, password = base64.b64decode(token).decode().partition(":")
    assert user == "AWS"
    return password


def docker_login(host, password: str) -> tuple[bool, str]:
    """`docker login` with the password on stdin (never in argv): whether it worked, and
    what Docker said (which carries no password)."""
    login = ["docker", "login", "--username", "AWS", "--password-stdin", ECR_HOST]
    result = host.run(login, input=password.encode(), check=False)
    return result.returncode == 0, result.stderr.decode(errors="replace")


def test_the_private_registry_wants_the_current_credentials_as_ecr_does(bed):
    """Docker on a host pulls from ECR's name with its CA trusted only with the token's
    credentials; after a rotation the old ones are refused and a new token's work."""
    bed.ecr.push("app/private")
    image = f"{ECR_HOST}/app/private:latest"
    host = bed.create_host("ecr-client", str(bed.network[200 * 256 + 33]))
    try:
        host.wait_docker()
        anonymous = host.run(["docker", "pull", image], check=False)
        output = (anonymous.stdout + anonymous.stderr).decode(errors="replace")
        pulled = anonymous.returncode == 0
        assert not pulled, "pulled from the private registry without credentials"
        # Refused for want of credentials, not for an untrusted certificate or a wrong address.
        assert "no basic auth credentials" in output and "x509" not in output, output

        asked = bed.ecr.token_requests
        first = ecr_password(host, bed.ecr_endpoint)
        is_current = first == bed.ecr.password  # compared here: an assertion would print both
        assert is_current, "the token does not carry the registry's current password"
        logged_in, said = docker_login(host, first)
        assert logged_in, said
        host.docker("pull", image)

        bed.ecr.rotate()
        host.docker("logout", ECR_HOST)
        logged_in, _ = docker_login(host, first)
        assert not logged_in, "the registry took the password from before the rotation"
        second = ecr_password(host, bed.ecr_endpoint)
        is_new = second != first
        assert is_new, "the token after the rotation carries the old password"
        logged_in, said = docker_login(host, second)
        assert logged_in, said
        host.docker("rmi", image)
        host.docker("pull", image)  # from the registry again, with the new credentials
        assert bed.ecr.token_requests >= asked + 2  # the two asks above (a node of another test may ask too)
    finally:
        bed.wipe_host(host.key)


def test_an_ebs_volume_is_one_machine_s_at_a_time_and_keeps_its_data_apart_from_them(bed):
    """As EC2's: found by its ID, refused to a second machine and to another zone, not
    detached while mounted, attached across a reboot, detached and kept at termination,
    and a snapshot starts a new volume with what the disk held."""
    first = bed.create_host("disk-a", str(bed.network[200 * 256 + 34]))
    second = bed.create_host("disk-b", str(bed.network[200 * 256 + 35]))
    first.zone = second.zone = "eu-west-1a"
    volume = bed.volumes.create("eu-west-1a", 1)
    made_here = [volume]
    link = BY_ID + volume.volume_id.replace("-", "")
    mount = f"mkdir -p /var/data && mount {link} /var/data"
    try:
        device = bed.volumes.attach(volume.volume_id, first)
        assert first.run(["readlink", "-f", link]).stdout.decode().strip() == device
        first.run(f"mkfs.ext4 -q {link} && {mount} && echo before-the-night >/var/data/lines")
        with pytest.raises(VolumeError, match="VolumeInUse"):
            bed.volumes.attach(volume.volume_id, second)
        with pytest.raises(VolumeError, match="VolumeBusy"):
            bed.volumes.detach(volume.volume_id, first)
        first.reboot()
        assert first.run(f"{mount} && cat /var/data/lines").stdout == b"before-the-night\n"
        first.run("sync && umount /var/data")
        bed.volumes.detach(volume.volume_id, first)
        assert first.run(["test", "-e", link], check=False).returncode != 0
        bed.volumes.attach(volume.volume_id, second)
        assert second.run(f"{mount} && cat /var/data/lines").stdout == b"before-the-night\n"
        second.run("echo after >>/var/data/lines && sync")
        snapshot = bed.volumes.snapshot(volume.volume_id)
        bed.wipe_host(second.key)  # terminated: the volume is detached, and kept
        assert bed.volumes.volumes[volume.volume_id].host_key is None and volume.path.exists()
        copy = bed.volumes.create("eu-west-1b", 1, snapshot_id=snapshot)
        made_here.append(copy)
        with pytest.raises(VolumeError, match="ZoneMismatch"):
            bed.volumes.attach(copy.volume_id, first)
        first.zone = "eu-west-1b"  # another machine, in the copy's zone
        bed.volumes.attach(copy.volume_id, first)
        copied = first.run(f"mkdir -p /var/data && mount {BY_ID + copy.volume_id.replace('-', '')} /var/data && "
                           "cat /var/data/lines").stdout  # fmt: skip
        assert copied == b"before-the-night\nafter\n"
    finally:
        for host in (first, second):
            if host.key in bed.hosts:
                bed.wipe_host(host.key)
        for made in made_here:
            bed.volumes.delete(made.volume_id)


KILLED_RUN = """
import time
from testbed.bed import Bed
bed = Bed()
bed.start()
bed.create_host("doomed", str(bed.network[10]))
bed.addresses.launched("i-doomed", str(bed.network[10]), public=True)
bed.volumes.attach(bed.volumes.create("eu-west-1a", 1).volume_id, bed.hosts["doomed"])
print(bed.run_id, bed.root, flush=True)
time.sleep(600)
"""


def leftovers(run_id: str, root: Path) -> list[str]:
    """Everything of run `run_id` still on this machine."""
    found = [f"netns {n}" for n in sh("ip", "netns", "list").split() if n.startswith(f"swarmbed-{run_id}-")]
    links = json.loads(sh("ip", "-j", "link") or "[]")
    found += [f"link {link['ifname']}" for link in links if link.get("ifname", "").startswith(f"sb{run_id}-")]
    for table in ("filter", "nat"):
        rules = sh("iptables", "-w", "10", "-t", table, "-S").splitlines()
        found += [f"iptables {table} {r}" for r in rules if f"sb{run_id}-br" in r]
    found += [f"cgroup {c}" for c in cgroup_left(f"swarmbed-{run_id}-*")]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(root) in cmdline:
            found.append(f"process {proc.name}: {cmdline[:80]}")
    found += [
        f"mount {line.split()[4]}"
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(root) in line
    ]
    found += [f"loop device {line}" for line in sh("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE")
              .splitlines() if str(root) in line]  # fmt: skip
    if root.exists():
        found.append(f"directory {root}")
    return found


def test_a_killed_run_leaves_nothing_once_the_next_run_starts(bed_prerequisites):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    run = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    try:
        ready, _, _ = select.select([run.stdout], [], [], 300)
        assert ready, "the doomed run did not start its bed within 300s"
        run_id, root = run.stdout.readline().decode().split()
    finally:
        os.kill(run.pid, signal.SIGKILL)  # no cleanup of its own runs
        run.wait(timeout=30)
    root = Path(root)
    left = leftovers(run_id, root)
    assert any(item.startswith("netns") for item in left) and any(item.startswith("process") for item in left), left
    assert any(item.startswith("iptables nat") for item in left), left  # its public address
    assert any(item.startswith("loop device") for item in left), left  # its EBS volume

    reap_stale_beds(root.parent)  # what the next run's Bed.start() does first
    assert leftovers(run_id, root) == []
