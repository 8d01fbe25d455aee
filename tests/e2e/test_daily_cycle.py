"""The daily cycle for real: the program forms, backs up, loses and restores a swarm on the bed.

One stack lives through the module, in the order of a week in its life: a morning, a
second `up`, pulls through the mirror, a night and the next morning, a bad backup, a
crashed manager, and a teardown that cannot reach the leader. Every assertion reads real
`docker` output from the hosts. Secrets are compared by digest, never printed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

import pytest
from testbed import verify
from testbed.bed import ECR_HOST, LOCAL_BUSYBOX, wait_until
from testbed.engine import Engine, EngineError, files_under, scan_for
from testbed.image import image_archive
from testbed.screens import ROOT, ROOT_ARTIFACTS, screenshot, terminal_screen
from testbed.verify import bucket_of, fp, nodes, read, wait_service

from components.hostkeys import derive_host_key

pytestmark = pytest.mark.e2e

STACK = "bed"
PREFIX = f"swarm/{STACK}/"
SEEN_SECRETS: set[str] = set()  # every token and key the stack exported, for the last scenario
PRIVATE = "private-svc"  # a service on ECR's stand-in, made with --with-registry-auth on day one
PRIVATE_IMAGE = f"{ECR_HOST}/app/private:latest"
APP_TEAM_CONFIG = "/run/app-team-docker"  # the app team's docker login, on manager 0 (memory only)


@pytest.fixture(scope="module")
def engine(bed, log_dir):
    return Engine(bed, bed.program_config(3, 2), stack=STACK, log_dir=log_dir)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """An app team's machine that lives through the module: made on day one, kept."""
    directory = tmp_path_factory.mktemp("app-team")
    made = {}

    def cli_for(outputs: dict):
        if "cli" not in made:
            made["cli"] = verify.docker_client(outputs, directory)
        return made["cli"]

    return cli_for


@pytest.fixture(scope="module")
def days():
    """What each scenario leaves for the next: outputs of every up, in order."""
    return []


def up(engine: Engine, days: list):
    result = engine.up()
    days.append(result)
    for key in ("workerJoinToken", "managerJoinToken", "sshPrivateKey"):
        if result.outputs.get(key):
            SEEN_SECRETS.add(result.outputs[key])
    return result


def assert_one_healthy_swarm(engine, managers: int = 3, workers: int = 2) -> list[dict]:
    return verify.assert_one_healthy_swarm(engine, STACK, managers, workers)


# -- 1. Morning ---------------------------------------------------------------------------
def test_morning_forms_one_swarm(engine, days, bed):
    result = up(engine, days)
    assert result.outputs["bootstrapResult"] == "bootstrap: initialised a new swarm"
    assert_one_healthy_swarm(engine)

    leader = engine.host_of("manager-0")
    on_leader = leader.docker("swarm", "join-token", "-q", "worker").strip()
    assert fp(result.outputs["workerJoinToken"]) == fp(on_leader), "exported worker token differs from the leader's"
    assert {"workerJoinToken", "managerJoinToken", "sshPrivateKey"} <= result.secret_outputs

    # Five tasks, one per node, over an overlay network: each answers with its own hostname.
    leader.docker("network", "create", "--driver", "overlay", "--attachable", "bed-net")
    leader.docker(
        "service", "create", "--detach", "--quiet", "--name", "web", "--replicas", "5",
        "--replicas-max-per-node", "1", "--endpoint-mode", "dnsrr", "--network", "bed-net",
        "--no-resolve-image", LOCAL_BUSYBOX, "httpd", "-f", "-p", "8080", "-h", "/etc",
    )  # fmt: skip
    wait_service(leader, "web", 5)
    placed = leader.docker("service", "ps", "web", "--filter", "desired-state=running", "--format", "{{.Node}}")
    assert len(set(placed.split())) == 5, placed

    probe = (
        "for ip in $(nslookup tasks.web 127.0.0.11 | awk '/^Address: / && $2 !~ /:/ {print $2}'); "
        "do wget -qO- http://$ip:8080/hostname; done"
    )
    answers = leader.docker("run", "--rm", "--network", "bed-net", LOCAL_BUSYBOX, "sh", "-c", probe).split()
    task_ids = leader.docker("service", "ps", "web", "--filter", "desired-state=running", "-q", "--no-trunc").split()
    containers = {
        leader.docker("inspect", "--format", "{{.Status.ContainerStatus.ContainerID}}", t).strip()[:12]
        for t in task_ids
    }
    assert sorted(answers) == sorted(containers), (answers, containers)


def test_managers_are_reached_at_their_elastic_ips_and_an_app_team_makes_a_context(engine, days, bed, client):
    """The instances' own public addresses are gone the moment the kept ones are tied to
    them (as on EC2): the outputs and Pulumi's SSH must use the Elastic IPs."""
    outputs = days[0].outputs
    kept = outputs["managerPublicIps"]
    eips = {s.outputs["publicIp"] for s in engine.state.values() if s.type == "aws:ec2/eip:Eip"}
    assert set(kept) == eips and len(eips) == 3
    for state in (s for s in engine.state.values() if s.type == "aws:ec2/instance:Instance"):
        own, private = state.outputs["publicIp"], state.outputs["privateIp"]
        assert own and own != private and own not in eips  # what the state says the machine booted with
        if "manager" in state.name:
            assert bed.addresses.leads_to(own) is None, f"{state.name}'s own address {own} still leads somewhere"
    assert outputs["dockerHost"] == f"ssh://ec2-user@{kept[0]}"
    cli = client(outputs)
    cli("context", "create", "swarm-bed", "--docker", f"host={outputs['dockerHost']}")
    assert "Swarm: active" in cli("--context", "swarm-bed", "info")


# -- 2. Idempotent ------------------------------------------------------------------------
def test_second_up_changes_nothing(engine, days):
    leader = engine.host_of("manager-0")
    before = sorted((n["ID"], n["Hostname"], n["Status"]) for n in nodes(leader))
    result = up(engine, days)
    assert result.changed() == {}
    after = sorted((n["ID"], n["Hostname"], n["Status"]) for n in nodes(leader))
    assert after == before
    assert fp(result.outputs["workerJoinToken"]) == fp(days[0].outputs["workerJoinToken"])
    assert result.outputs["managerPrivateIps"] == days[0].outputs["managerPrivateIps"]


# -- 4. Mirror ----------------------------------------------------------------------------
def test_pulls_go_through_the_mirror_and_its_s3_cache(engine, days, bed):
    first, second = engine.host_of("worker-0"), engine.host_of("worker-1")
    mirrors = json.loads(first.docker("info", "--format", "{{json .RegistryConfig.Mirrors}}"))
    assert mirrors == [m + "/" for m in days[-1].outputs["registryMirrors"]]

    # Control: an image the upstream lacks cannot come from anywhere (Docker Hub is unreachable).
    missing = first.run(["docker", "pull", "alpine:3"], check=False, timeout=120)
    assert missing.returncode != 0

    first.docker("pull", "busybox", timeout=180)
    assert "busybox:latest" in first.docker("images", "--format", "{{.Repository}}:{{.Tag}}")
    bucket = bed.s3().list_objects_v2(Bucket=bucket_of(engine), Prefix=f"{PREFIX}mirror/")
    cached = [o["Key"] for o in bucket.get("Contents", [])]
    assert any("/blobs/" in key for key in cached), cached

    bed.stop_upstream()
    try:
        second.docker("pull", "busybox", timeout=180)
        assert "busybox:latest" in second.docker("images", "--format", "{{.Repository}}:{{.Tag}}")
    finally:
        bed.start_upstream()


# -- 5. On a node by itself: the image-cleanup timer and the journal ---------------------------
def test_image_cleanup_timer_fires_and_spares_kept_and_recent_images(engine):
    node = engine.host_of("worker-1")
    timer = "swarm-image-cleanup.timer"
    assert node.run(["systemctl", "is-active", timer]).stdout.decode().strip() == "active"
    schedule = node.run(["systemctl", "show", timer, "-p", "TimersMonotonic", "--value"]).stdout.decode()
    assert "OnBootUSec=1h" in schedule and "OnUnitActiveUSec=1d" in schedule, schedule
    loads = {
        "bed/old-unkept:1": image_archive("bed/old-unkept:1", created="2020-01-01T00:00:00Z"),
        "bed/old-kept:1": image_archive("bed/old-kept:1", created="2020-01-01T00:00:00Z", labels={"swarm.keep": "1"}),
        "bed/recent:1": image_archive("bed/recent:1", created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
    }
    for archive in loads.values():
        node.run(["docker", "load", "-q"], input=archive)

    def images() -> set[str]:
        return set(node.docker("images", "--format", "{{.Repository}}:{{.Tag}}").split())

    assert set(loads) <= images()
    # Its schedule is an hour after boot; a runtime drop-in makes the same timer fire now.
    dropin = "/run/systemd/system/swarm-image-cleanup.timer.d"
    node.run(
        f"mkdir -p {dropin} && printf '[Timer]\\nOnActiveSec=1s\\nRandomizedDelaySec=0\\n' >{dropin}/bed-now.conf"
        f" && systemctl daemon-reload && systemctl restart {timer}"
    )
    try:
        wait_until("the timer's cleanup to remove the old image", lambda: "bed/old-unkept:1" not in images(), 90)
    finally:
        node.run(f"rm -rf {dropin} && systemctl daemon-reload && systemctl restart {timer}")
    service = "swarm-image-cleanup.service"
    assert node.run(["systemctl", "show", service, "-p", "Result", "--value"]).stdout.decode().strip() == "success"
    assert {"bed/old-kept:1", "bed/recent:1"} <= images()
    ran = node.run(["journalctl", "-u", service, "--no-pager"]).stdout.decode()
    assert "bed/old-unkept:1" in ran and "bed/old-kept" not in ran, ran
    # The README sends operators to `journalctl -u docker`: it holds the daemon's log.
    docker_log = node.run(["journalctl", "-u", "docker", "--no-pager"]).stdout.decode()
    assert "Daemon has completed initialization" in docker_log


def create_private_service(bed, leader) -> None:
    """As an app team does it: log in to ECR with today's credentials, then create the
    service with --with-registry-auth (the credentials go into its spec, in Raft), at most
    one task per node, so a scale-up lands on nodes that never pulled the image."""
    bed.ecr.push("app/private")
    SEEN_SECRETS.add(bed.ecr.password)
    login = f"mkdir -m 700 -p {APP_TEAM_CONFIG} && docker --config {APP_TEAM_CONFIG} login -u AWS --password-stdin"
    login += f" {ECR_HOST}"
    leader.run(login, input=bed.ecr.password.encode())
    try:
        leader.docker(
            "--config", APP_TEAM_CONFIG, "service", "create", "--detach", "--quiet", "--name", PRIVATE,
            "--with-registry-auth", "--replicas", "2", "--replicas-max-per-node", "1", PRIVATE_IMAGE, "sleep", "86400",
        )  # fmt: skip
    finally:
        leader.run(["rm", "-rf", APP_TEAM_CONFIG])
    wait_service(leader, PRIVATE, 2, timeout=180)


def rotate_ecr(bed) -> None:
    """ECR's credentials expire: the registry refuses yesterday's from now on."""
    bed.ecr.rotate()
    SEEN_SECRETS.add(bed.ecr.password)


# -- 3. Night and next morning -------------------------------------------------------------
def test_night_then_next_morning_restores_everything(engine, days, bed):
    leader = engine.host_of("manager-0")
    create_private_service(bed, leader)
    leader.run(["docker", "secret", "create", "day1-secret", "-"], input=b"day-one-value")
    leader.run(["docker", "config", "create", "day1-config", "-"], input=b"greeting: hello\n")
    leader.docker(
        "service", "create", "--detach", "--quiet", "--name", "day1-svc", "--replicas", "2",
        "--endpoint-mode", "dnsrr", "--secret", "day1-secret", "--config", "day1-config",
        "--no-resolve-image", LOCAL_BUSYBOX, "sleep", "86400",
    )  # fmt: skip
    wait_service(leader, "day1-svc", 2)
    yesterday = days[-1].outputs

    machines = sorted(s.host for s in engine.state.values() if s.host)
    engine.destroy()
    rotate_ecr(bed)  # overnight, as ECR's 12 hours run out
    asked = bed.ecr.token_requests
    assert len(machines) == 5 and not set(machines) & set(bed.hosts), f"hosts left after destroy: {list(bed.hosts)}"
    bucket = bucket_of(engine)
    key, want = read(bed, bucket, f"{PREFIX}backups/latest").decode().split()
    tarball = read(bed, bucket, f"{PREFIX}{key}")
    assert hashlib.sha256(tarball).hexdigest() == want
    assert read(bed, bucket, f"{PREFIX}{key}.sha256").decode().split()[0] == want

    result = up(engine, days)
    assert result.outputs["bootstrapResult"].startswith(f"bootstrap: restored from {key}"), result.outputs[
        "bootstrapResult"
    ]
    assert fp(result.outputs["workerJoinToken"]) == fp(yesterday["workerJoinToken"])
    assert fp(result.outputs["managerJoinToken"]) == fp(yesterday["managerJoinToken"])
    listing = assert_one_healthy_swarm(engine)  # no Down or Unknown node of yesterday is left
    assert len(listing) == 5

    leader = engine.host_of("manager-0")
    assert "day1-secret" in leader.docker("secret", "ls", "--format", "{{.Name}}").split()
    assert "day1-config" in leader.docker("config", "ls", "--format", "{{.Name}}").split()
    wait_service(leader, "day1-svc", 2, timeout=180)
    assert verify.secret_in_task(engine, STACK, "day1-svc", "day1-secret") == "day-one-value"
    # The private service's replicas run on machines that never had its image, pulled with
    # the credentials registry-auth asked ECR for at the end of the formation, not yesterday's.
    wait_service(leader, PRIVATE, 2, timeout=240)
    assert bed.ecr.token_requests > asked
    (refresh,) = [st for st in engine.state.values() if st.name.endswith("-registry-auth")]
    assert f"registry-auth: 1 of 1 services on {ECR_HOST}" in refresh.outputs["stdout"], refresh.outputs


def private_tasks(leader) -> list[str]:
    """'<node>|<desired>|<state>|<error>' of each task of the private service."""
    shape = "{{.Node}}|{{.DesiredState}}|{{.CurrentState}}|{{.Error}}"
    return leader.docker("service", "ps", PRIVATE, "--no-trunc", "--format", shape).splitlines()


AUTH_REFUSED = ("unauthorized", "authentication required", "no basic auth credentials")


def refused_for_credentials(engine, leader, since: int) -> str:
    """A node whose task of the private service was rejected, the image missing, because
    the registry refused the credentials in the spec since `since` (its dockerd's journal
    says so: a swarm task's failed pull is only logged, then the task fails on the image)."""
    for line in private_tasks(leader):
        node, _, state, error = line.split("|", 3)
        if state.startswith("Rejected") and "No such image" in error:
            host = engine.host_of(node.removeprefix(f"swarm-{STACK}-"))
            journal = host.run(["journalctl", "-u", "docker", "--no-pager", "--since", f"@{since}"]).stdout.decode()
            if any(phrase in line.lower() for line in journal.splitlines() if "pull" in line.lower()
                   for phrase in AUTH_REFUSED):  # fmt: skip
                return node
    return ""


def test_credentials_that_expire_by_day_are_refreshed_by_the_leader_s_timer(engine, bed):
    """13 hours after the service was made: a new task pulls with the credentials in the
    spec. Without the refresh it cannot (the control); the timer's unit refreshes, and the
    failed task and a scale-up both pull. The running tasks are not restarted."""
    leader = engine.host_of("manager-0")
    timer = "swarm-registry-auth.timer"
    assert leader.run(["systemctl", "is-active", timer]).stdout.decode().strip() == "active"
    schedule = leader.run(["systemctl", "show", timer, "-p", "TimersMonotonic", "--value"]).stdout.decode()
    assert "OnBootUSec=4h" in schedule and "OnUnitActiveUSec=4h" in schedule, schedule
    running = set(leader.docker("service", "ps", PRIVATE, "-q", "--filter", "desired-state=running").split())
    rotated = int(time.time())  # the hosts share this machine's clock
    rotate_ecr(bed)
    leader.docker("service", "scale", "--detach", f"{PRIVATE}=3")
    try:
        wait_until("a task refused by the registry", lambda: refused_for_credentials(engine, leader, rotated), 120)
    except Exception as error:
        raise AssertionError(f"{error}: {private_tasks(leader)}") from None
    managers = [engine.host_of(f"manager-{i}") for i in range(3)]
    for manager in managers:  # only the leader acts; the others say so
        manager.run(["systemctl", "start", "swarm-registry-auth.service"], timeout=180)
    said = "".join(m.run(["journalctl", "-u", "swarm-registry-auth.service", "--no-pager"]).stdout.decode()
                   for m in managers)  # fmt: skip
    assert said.count("services on") == 1 and said.count("not the leader") == 2, said
    wait_service(leader, PRIVATE, 3, timeout=180)
    leader.docker("service", "scale", "--detach", f"{PRIVATE}=4")
    wait_service(leader, PRIVATE, 4, timeout=180)
    still = set(leader.docker("service", "ps", PRIVATE, "-q", "--filter", "desired-state=running").split())
    assert running <= still, "a refresh restarted a running task"


def test_the_same_doors_the_next_morning_and_yesterdays_context_still_works(days, client):
    """dockerHost, managerPublicIps and the managers' known_hosts lines are byte for byte
    yesterday's; the docker context an app team made then works today, strict host keys
    and all. Workers' public addresses are new every morning (only managers keep theirs)."""
    first, today = days[0].outputs, days[-1].outputs
    assert today["dockerHost"] == first["dockerHost"]
    assert today["managerPublicIps"] == first["managerPublicIps"]

    def lines(outputs: dict, role: str) -> list[str]:
        ips = {n["privateIp"] for n in outputs["nodes"] if n["role"] == role}
        return [line for line in outputs["sshKnownHosts"].splitlines() if set(line.split()[0].split(",")) & ips]

    assert lines(today, "manager") == lines(first, "manager") and len(lines(today, "manager")) == 3
    workers = [[n["publicIp"] for n in d["nodes"] if n["role"] == "worker"] for d in (first, today)]
    assert not set(workers[0]) & set(workers[1]), workers  # the bed hands out a new one at every launch
    cli = client(first)  # made on day one, not touched since
    assert "Swarm: active" in cli("--context", "swarm-bed", "info")
    assert len(cli("--context", "swarm-bed", "node", "ls", "-q").split()) == 5


def test_host_keys_are_the_same_every_day_and_a_strict_ssh_refuses_any_other(days, tmp_path):
    """The first morning's sshKnownHosts opens each of today's fresh machines with
    StrictHostKeyChecking yes at every address the machine kept (a manager's Elastic IP,
    any node's private one); the same file with another key for one node is refused."""
    first, today = days[0].outputs, days[-1].outputs
    for node in today["nodes"]:
        kept = {node["publicIp"], node["privateIp"]} if node["role"] == "manager" else {node["privateIp"]}
        for address in kept:
            opened = verify.ssh_strict(today, address, first["sshKnownHosts"], tmp_path)
            assert opened.returncode == 0, f"{node['name']} at {address}: {opened.stderr}"
        # A worker's new public address is in today's file, with the same key as yesterday's.
        if node["role"] == "worker":
            opened = verify.ssh_strict(today, node["publicIp"], today["sshKnownHosts"], tmp_path)
            assert opened.returncode == 0, f"{node['name']} at {node['publicIp']}: {opened.stderr}"
    target = today["nodes"][0]["privateIp"]
    other_key = derive_host_key("00" * 32, "someone-else")[1]
    tampered = "".join(
        f"{target} {other_key}\n" if line.split()[0] == target else f"{line}\n"
        for line in first["sshKnownHosts"].splitlines()
    )
    refused = verify.ssh_strict(today, target, tampered, tmp_path)
    assert refused.returncode != 0 and "Host key verification failed" in refused.stderr, refused.stderr


def test_status_in_a_terminal_as_json_and_as_a_page(days, tmp_path):
    """scripts/swarm status, as an operator runs it after the morning: in a real terminal
    (tmux, the screen read back), as JSON, and as a page that headless Chromium renders."""
    outputs = tmp_path / "outputs.json"
    outputs.touch(mode=0o600)
    outputs.write_text(json.dumps(days[-1].outputs))
    command = f"{ROOT / 'scripts' / 'swarm'} status {STACK} --outputs {outputs}"
    screen = terminal_screen(command, "Backups (", tmp_path)
    for expected in ("swarm-bed-manager-0", "manager ★ leader", "swarm-bed-worker-1", "day1-svc", "2/2",
                     "restored from backups/", "latest · sha256 ✓ · signature ✓", "mirror cache",
                     "ECR refresh", "registry-auth: 1 of 1 services on"):  # fmt: skip
        assert expected in screen, f"{expected!r} not on the screen:\n{screen}"
    assert "PRIVATE KEY" not in screen and "SWMTKN" not in screen
    if ROOT_ARTIFACTS:
        (ROOT_ARTIFACTS / "swarm-status.txt").write_text(screen)

    page = ROOT_ARTIFACTS / "swarm-status.html" if ROOT_ARTIFACTS else tmp_path / "swarm-status.html"
    run = subprocess.run([*command.split(), "--json", "--html", str(page)], capture_output=True, text=True,
                         timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    view = json.loads(run.stdout)
    assert {n["name"] for n in view["nodes"] if n["state"] == "ready"} == {
        f"swarm-{STACK}-{role}-{i}" for role, count in (("manager", 3), ("worker", 2)) for i in range(count)
    }
    assert view["latestBackup"]["verified"] and view["latestBackup"]["signature"] == "ok"
    assert view["mirror"]["bytes"] > 0
    shot = screenshot(page, tmp_path)
    # A rendered page of tables, not a blank one (a blank 1300x1100 PNG is about 5 KB).
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 30_000, shot.stat().st_size


# -- 5. Faults ----------------------------------------------------------------------------
def test_a_corrupted_backup_is_refused_and_left_alone(engine, days, bed):
    engine.destroy()
    bucket = bucket_of(engine)
    key, _ = read(bed, bucket, f"{PREFIX}backups/latest").decode().split()
    garbage = b"not a swarm backup"
    bed.s3().put_object(Bucket=bucket, Key=f"{PREFIX}{key}", Body=garbage)

    with pytest.raises(EngineError) as failure:
        up(engine, days)
    message = str(failure.value)
    assert "-bootstrap" in message
    assert f"refusing to restore s3://{bucket}/{PREFIX}{key}" in message
    assert read(bed, bucket, f"{PREFIX}{key}") == garbage, "the bad backup was overwritten"
    assert read(bed, bucket, f"{PREFIX}backups/latest").decode().split()[0] == key

    # The way out the message gives: the newest other backup whose signature checks.
    listing = bed.s3().list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}backups/")
    older = sorted(
        o["Key"].removeprefix(PREFIX)
        for o in listing["Contents"]
        if o["Key"].endswith(".tar.gz") and o["Key"] != f"{PREFIX}{key}"
    )[-1]
    assert f"The newest backup whose signature checks: {older} (pulumi config set swarm:restoreFrom {older}" in message
    engine.config["swarm:restoreFrom"] = older
    result = up(engine, days)
    assert result.outputs["bootstrapResult"].startswith(f"bootstrap: restored from {older}")
    assert fp(result.outputs["workerJoinToken"]) == fp(days[0].outputs["workerJoinToken"])
    assert_one_healthy_swarm(engine)
    assert "day1-secret" in engine.host_of("manager-0").docker("secret", "ls", "--format", "{{.Name}}").split()


def test_the_swarm_survives_a_crashed_manager(engine):
    engine.host_of("manager-0").kill()
    survivor = engine.host_of("manager-1")

    def accepted():
        created = survivor.run(
            ["docker", "service", "create", "--detach", "--quiet", "--name", "after-crash", "--no-resolve-image",
             "--endpoint-mode", "dnsrr", LOCAL_BUSYBOX, "sleep", "3600"],
            check=False,
        )  # fmt: skip
        return created.returncode == 0 or "already exists" in created.stderr.decode()

    wait_until("a manager to accept docker service create after the leader crashed", accepted, 90, interval=2)
    wait_service(survivor, "after-crash", 1)
    leaders = [n["Hostname"] for n in nodes(survivor) if n["ManagerStatus"] == "Leader"]
    assert leaders and leaders != [f"swarm-{STACK}-manager-0"], leaders


def test_destroy_stops_when_the_leader_is_unreachable(engine, bed):
    hosts_before = sorted(bed.hosts)
    started = time.monotonic()
    with pytest.raises(EngineError) as failure:
        engine.destroy()
    message = str(failure.value)
    assert "-backup" in message and "unable to connect" in message, message
    assert time.monotonic() - started < 180
    assert sorted(bed.hosts) == hosts_before, "destroy wiped machines although the backup failed"
    assert any(s.type == "aws:ec2/instance:Instance" for s in engine.state.values())
    assert len(nodes(engine.host_of("manager-1"))) == 5


# -- 6. Secrets ---------------------------------------------------------------------------
def test_no_secret_in_logs_or_recorded_state(engine, log_dir):
    assert len(SEEN_SECRETS) >= 3, "the scenarios did not export the tokens and the key"
    needles = set()
    for value in SEEN_SECRETS:
        needles.add(value)
        # A private key must not appear in part either: look for each of its body lines.
        needles.update(line for line in value.splitlines() if len(line) > 40 and "PRIVATE KEY" not in line)
    files = files_under(log_dir)
    assert any(p.name.startswith("state-") for p in files) and any(p.name.startswith("engine-") for p in files)
    assert scan_for(sorted(needles), files) == []
