"""group-join: a group's machine claims its instance in dockerd's engine labels, reads the
worker join token from SSM and joins through the first manager that takes it, and the
token is in no argv, no output and no message, whatever fails."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from node_fakes import write_env
from swarm_agent import cli, dockerd, group_join, paths, run

INSTANCE = "i-0123456789abcdef0"
PARAM = "/swarm/swarm/dev/worker-join-token"
ROOT_CA = b"-----BEGIN CERTIFICATE-----\nMIIBazCCARCgAwIBAgIUOurswarmroot\n-----END CERTIFICATE-----\n"


def token_for(ca_pem: bytes, tail: str = "s3cr3tw0rkertail") -> str:
    """A join token for the swarm whose root CA is `ca_pem` (swarmkit's format)."""
    number, digits = int(hashlib.sha256(ca_pem).hexdigest(), 16), ""
    while number:
        number, digit = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
    return f"SWMTKN-1-{digits.rjust(50, '0')}-{tail}"


TOKEN = token_for(ROOT_CA)
SECRET = "s3cr3tw0rkertail"  # the token's secret part: must show up nowhere


class Imds(ThreadingHTTPServer):
    daemon_threads = True
    life_cycle = "spot"
    down = 0  # requests refused before it answers (a metadata service that lags at boot)
    seen: list


@pytest.fixture
def imds(monkeypatch):
    """IMDSv2 on loopback: a token by PUT, then GETs that must carry it."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: str = "") -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def do_PUT(self):
            self.server.seen.append(("PUT", self.path, self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")))
            if self.server.down:
                self.server.down -= 1
                return self._send(503)
            return self._send(200, "imds-session")

        def do_GET(self):
            self.server.seen.append(("GET", self.path, self.headers.get("X-aws-ec2-metadata-token")))
            if self.headers.get("X-aws-ec2-metadata-token") != "imds-session":
                return self._send(401)
            answers = {"/latest/meta-data/instance-id": INSTANCE,
                       "/latest/meta-data/instance-life-cycle": self.server.life_cycle}  # fmt: skip
            return self._send(200, answers[self.path]) if self.path in answers else self._send(404)

        def log_message(self, *args):
            pass

    server = Imds(("127.0.0.1", 0), Handler)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(group_join, "IMDS_URL", f"http://127.0.0.1:{server.server_address[1]}")
    yield server
    server.shutdown()


@pytest.fixture
def posts(monkeypatch):
    """Docker's API socket: answers scripted per call, bodies recorded."""
    record = {"answers": [(200, "")], "bodies": []}

    def api_post(path, body, timeout):
        record["bodies"].append((path, body))
        answers = record["answers"]
        return answers.pop(0) if len(answers) > 1 else answers[0]

    monkeypatch.setattr(dockerd, "api_post", api_post)
    return record


@pytest.fixture
def worker(fakes, imds, posts):
    """A group's fresh machine: its env file, daemon.json as user-data wrote it, systemd and
    dockerd up, not in a swarm yet, and SSM holding the token."""
    write_env(SWARM_NODE_NAME=f"batch-{INSTANCE}", SWARM_ROLE="worker", SWARM_ADVERTISE_ADDR="10.42.1.5",
              SWARM_GROUP="batch", SWARM_MANAGER_ADDRS="10.42.0.10,10.42.0.11,10.42.0.12",
              SWARM_JOIN_TOKEN_PARAMETER=PARAM, SWARM_SSM_ENDPOINT="")  # fmt: skip
    Path(paths.DAEMON_JSON).parent.mkdir(parents=True, exist_ok=True)
    Path(paths.DAEMON_JSON).write_text(json.dumps({"log-driver": "json-file", "labels": ["team=data"]}))
    os.makedirs(paths.SYSTEMD_RUN, exist_ok=True)
    fakes.on("systemctl", "show", "-P", "LoadState", stdout="loaded\n")
    fakes.on("systemctl")
    fakes.docker_up()
    fakes.swarm(state="inactive", manager=False, times=2)  # before the join, and join_swarm's first look
    fakes.swarm(state="active", manager=False, node_id="w9node")
    fakes.on("aws", "ssm", "get-parameter", stdout=TOKEN + "\n")
    return fakes


def nowhere_but_the_body(fakes, capsys) -> None:
    """The token's secret in no argv, no stdin of a program, no line printed."""
    said = capsys.readouterr()
    assert SECRET not in json.dumps([c["args"] for c in fakes.calls()])
    assert SECRET not in json.dumps([c["stdin"] for c in fakes.calls()])
    assert SECRET not in said.out + said.err


def test_a_fresh_machine_claims_its_instance_restarts_dockerd_and_joins(worker, imds, posts, capsys):
    assert cli.main(["group-join"]) == 0
    daemon = json.loads(Path(paths.DAEMON_JSON).read_text())
    assert daemon["log-driver"] == "json-file"  # user-data's settings kept
    assert daemon["labels"] == ["team=data", "swarm.capacity=spot", "swarm.group=batch", f"swarm.instance={INSTANCE}"]
    assert ["restart", "docker.service"] in worker.argvs("systemctl")
    assert worker.argvs("aws") == [["ssm", "get-parameter", "--name", PARAM, "--with-decryption", "--query",
                                    "Parameter.Value", "--output", "text", "--region", "eu-west-1"]]  # fmt: skip
    assert [(p, b["RemoteAddrs"], b["JoinToken"]) for p, b in posts["bodies"]] == [
        ("/swarm/join", ["10.42.0.10:2377"], TOKEN)
    ]
    assert imds.seen[0] == ("PUT", "/latest/api/token", "300")
    said = capsys.readouterr()
    assert said.out == (
        f"group-join: {INSTANCE} of group batch (spot) joined the swarm through 10.42.0.10:2377 as a worker "
        "(node w9node)\n"
    )
    assert SECRET not in said.out + said.err
    nowhere_but_the_body(worker, capsys)


def test_a_rerun_at_reboot_changes_nothing(worker, posts, capsys):
    Path(paths.DAEMON_JSON).write_text(json.dumps({"labels": [
        "swarm.capacity=spot", "swarm.group=batch", f"swarm.instance={INSTANCE}"]}))  # fmt: skip
    before = Path(paths.DAEMON_JSON).read_text()
    worker.rules[:] = [r for r in worker.rules if r["args"][:2] != ["info", "--format"] or "Server" in r["args"][2]]
    worker.swarm(state="active", manager=False)
    os.makedirs(os.path.join(paths.SWARM_DIR, "certificates"))
    Path(paths.SWARM_DIR, "certificates", "swarm-root-ca.crt").write_bytes(ROOT_CA)
    assert cli.main(["group-join"]) == 0
    assert Path(paths.DAEMON_JSON).read_text() == before
    assert not [a for a in worker.argvs("systemctl") if a[0] == "restart"] and posts["bodies"] == []
    assert capsys.readouterr().out == f"group-join: {INSTANCE} of group batch (spot) is already in this swarm\n"


def test_a_worker_of_another_swarm_leaves_it_and_joins_this_one(worker, posts):
    worker.rules[:] = [r for r in worker.rules if r["args"][:2] != ["info", "--format"] or "Server" in r["args"][2]]
    worker.swarm(state="active", manager=False, times=1)  # yesterday's swarm (another root CA)
    worker.swarm(state="inactive", manager=False, times=2)
    worker.swarm(state="active", manager=False)
    worker.on("docker", "swarm", "leave", "--force")
    os.makedirs(os.path.join(paths.SWARM_DIR, "certificates"))
    Path(paths.SWARM_DIR, "certificates", "swarm-root-ca.crt").write_bytes(b"another swarm's CA\n")
    assert cli.main(["group-join"]) == 0
    assert ["swarm", "leave", "--force"] in worker.argvs("docker") and len(posts["bodies"]) == 1


def test_the_token_is_read_again_while_ssm_fails_and_only_its_error_is_shown(worker, capsys):
    worker.rules.insert(0, {"tool": "aws", "args": ["ssm"], "stdout": "", "rc": 255, "times": 3, "writes": [],
                            "stderr": "Unable to locate credentials. You can configure credentials by running "
                                      "\"aws configure\".\n"})  # fmt: skip
    worker._save()
    assert cli.main(["group-join"]) == 0
    assert len(worker.argvs("aws")) == 4
    assert 15 <= worker.clock.slept <= 16
    nowhere_but_the_body(worker, capsys)


def test_ssm_that_never_answers_fails_at_the_bound_naming_the_parameter_and_the_right(worker, posts, capsys):
    worker.rules[:] = [r for r in worker.rules if r["tool"] != "aws"]
    worker.on("aws", "ssm", rc=254, stderr="An error occurred (AccessDeniedException) when calling GetParameter\n")
    assert cli.main(["group-join"]) == 1
    error = capsys.readouterr().err
    assert f"no worker join token from SSM parameter {PARAM} after 120s" in error
    assert "AccessDeniedException" in error and "ssm:GetParameter" in error
    assert 120 <= worker.clock.slept <= 126 and posts["bodies"] == []


def test_a_cli_that_prints_the_token_and_fails_never_shows_it(worker, capsys):
    """Only stderr reaches a message: a failing CLI's stdout may hold the value."""
    worker.rules[:] = [r for r in worker.rules if r["tool"] != "aws"]
    worker.on("aws", "ssm", rc=1, stdout=TOKEN + "\n", stderr="")
    assert cli.main(["group-join"]) == 1
    assert "(exit 1)" in capsys.readouterr().err
    nowhere_but_the_body(worker, capsys)


def test_the_bed_s_ssm_endpoint_is_used(worker):
    write_env(SWARM_GROUP="batch", SWARM_MANAGER_ADDRS="10.42.0.10", SWARM_JOIN_TOKEN_PARAMETER=PARAM,
              SWARM_SSM_ENDPOINT="http://10.200.255.254:8190")  # fmt: skip
    assert cli.main(["group-join"]) == 0
    assert worker.argvs("aws")[0][-2:] == ["--endpoint-url", "http://10.200.255.254:8190"]


def test_a_manager_that_does_not_take_it_passes_to_the_next(worker, posts, capsys, monkeypatch):
    monkeypatch.setattr(run, "pause", lambda seconds: worker.clock.sleep(seconds * 10))
    worker.rules[:] = [r for r in worker.rules if r["args"][:2] != ["info", "--format"] or "Server" in r["args"][2]]
    worker.swarm(state="inactive", manager=False, times=2)  # before any join, and before the first manager's
    # The first manager: ten tries and a minute's wait (17 looks) left pending; so it is before the second's.
    worker.swarm(state="pending", manager=False, times=18)
    worker.swarm(state="active", manager=False, node_id="w9node")
    worker.on("docker", "swarm", "leave", "--force")
    late = (503, f'{{"message":"Timeout was reached before node joined ({TOKEN})"}}')
    posts["answers"] = [late] * 10 + [(200, "")]
    assert cli.main(["group-join"]) == 0
    remotes = [b["RemoteAddrs"][0] for _, b in posts["bodies"]]
    assert remotes[0] == "10.42.0.10:2377" and remotes[-1] == "10.42.0.11:2377"
    assert worker.argvs("docker").count(["swarm", "leave", "--force"]) == 1  # the pending try stopped first
    assert "joined the swarm through 10.42.0.11:2377" in capsys.readouterr().out
    nowhere_but_the_body(worker, capsys)


def test_the_metadata_service_is_asked_a_bounded_number_of_times(worker, imds, posts, capsys):
    imds.down = 100
    assert cli.main(["group-join"]) == 1
    assert "did not answer after 10 tries" in capsys.readouterr().err
    assert len(imds.seen) == 10 and worker.calls("aws") == [] and posts["bodies"] == []


def test_a_metadata_service_that_lags_is_waited_for(worker, imds):
    imds.down = 2
    imds.life_cycle = "on-demand"
    assert cli.main(["group-join"]) == 0
    assert "swarm.capacity=on-demand" in json.loads(Path(paths.DAEMON_JSON).read_text())["labels"]


@pytest.mark.parametrize(
    ("key", "value", "complaint"),
    [("SWARM_GROUP", "", "SWARM_GROUP is missing"), ("SWARM_GROUP", "Batch;rm", "not a group name"),
     ("SWARM_MANAGER_ADDRS", "10.42.0.10,--force", "must be IPv4 addresses"),
     ("SWARM_JOIN_TOKEN_PARAMETER", "worker-join-token", "not an SSM parameter name")],
)  # fmt: skip
def test_a_bad_env_file_is_refused_before_anything_is_asked(worker, imds, capsys, key, value, complaint):
    values = {"SWARM_GROUP": "batch", "SWARM_MANAGER_ADDRS": "10.42.0.10", "SWARM_JOIN_TOKEN_PARAMETER": PARAM}
    write_env(**{**values, key: value})
    assert cli.main(["group-join"]) == 1
    assert complaint in capsys.readouterr().err
    assert worker.calls() == [] and imds.seen == []


def test_a_daemon_json_that_is_not_json_is_named(worker, capsys):
    Path(paths.DAEMON_JSON).write_text("{broken")
    assert cli.main(["group-join"]) == 1
    assert "daemon.json is not JSON" in capsys.readouterr().err
