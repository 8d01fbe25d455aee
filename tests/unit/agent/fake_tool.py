#!/usr/bin/env python3
"""A stand-in for docker, aws or systemctl in the agent's unit tests (copied as each).

Rules come from $FAKE_DIR/rules.json, in order: the first whose tool matches and whose
args are a prefix of this call's arguments answers (stdout, stderr, exit code), writes
files named by argument positions, and is used up after `times` calls. Every call is
logged to $FAKE_DIR/calls.jsonl with its stdin (and the docker config.json that
DOCKER_CONFIG points at). A call no rule answers exits 99.
"""

import base64
import json
import os
import sys
import time

tool = os.path.basename(sys.argv[0])
args = sys.argv[1:]
fake_dir = os.environ["FAKE_DIR"]
stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read().decode(errors="replace")
entry = {"tool": tool, "args": args, "stdin": stdin}
if os.environ.get("DOCKER_CONFIG"):  # what the docker CLI would read its credentials from
    config = os.path.join(os.environ["DOCKER_CONFIG"], "config.json")
    entry["docker_config"] = {"dir": os.environ["DOCKER_CONFIG"], "mode": oct(os.stat(config).st_mode & 0o777),
                              "json": json.load(open(config))} if os.path.exists(config) else {}  # fmt: skip
with open(os.path.join(fake_dir, "calls.jsonl"), "a") as log:
    log.write(json.dumps(entry) + "\n")
rules_path = os.path.join(fake_dir, "rules.json")
with open(rules_path) as f:
    rules = json.load(f)
for rule in rules:
    if rule["tool"] != tool or args[: len(rule["args"])] != rule["args"] or rule.get("times") == 0:
        continue
    if rule.get("times") is not None:
        rule["times"] -= 1
        with open(rules_path, "w") as f:
            json.dump(rules, f)
    for index, content in rule.get("writes", []):
        with open(args[index], "wb") as out:
            out.write(base64.b64decode(content))
    time.sleep(rule.get("sleep", 0))
    sys.stdout.write(rule.get("stdout", ""))
    sys.stderr.write(rule.get("stderr", ""))
    sys.exit(rule.get("rc", 0))
sys.stderr.write(f"fake {tool}: no rule for {args}\n")
sys.exit(99)
