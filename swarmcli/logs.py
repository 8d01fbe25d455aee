"""`scripts/swarm logs`: a stack's logs in CloudWatch Logs, read back also after the night
has destroyed every machine (the log group is kept through the teardown).

    scripts/swarm logs dev --verb bootstrap --since 6h    # this morning's bootstrap, every node
    scripts/swarm logs dev --service web --json           # one JSON object per line
    scripts/swarm logs --group /swarm/swarm/dev --region eu-west-1 --endpoint http://10.0.0.5:5000

The group is `/swarm/<project>/<stack>`, one per stack; its streams are
`<node>/containers/<container>` (Docker's awslogs driver; a task's container is
`<service>.<slot or node id>.<task id>`), `<node>/journal` and `<node>/agent/<verb>`. The
streams are listed and picked here (--node, --service, --verb, --journal), then searched
with FilterLogEvents, at most 100 streams a call, and the events merged oldest first.

Where to read: the stack's config (`aws:region`, `swarm:logsEndpoint`, which `pulumi
config` still answers after the teardown), or --group, --region and --endpoint, which
need no Pulumi CLI at all (the test bed has none).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError, NoRegionError

from swarmcli import ROOT, outputs, pulumicli
from swarmcli.errors import SwarmCliError, UsageError
from swarmcli.progress import Progress

DEFAULT_SINCE = "24h"
DEFAULT_LIMIT = 1000
STREAMS_PER_CALL = 100  # FilterLogEvents takes at most 100 logStreamNames
PAGE_EVENTS = 10_000  # and returns at most 10,000 events a page
# DescribeLogStreams' lastEventTimestamp is eventually consistent (AWS: "typically within
# an hour"): a stream is skipped as quiet only when that is over two hours before --since.
LAST_EVENT_LAG_MS = 2 * 3600 * 1000
RIGHTS = "logs:DescribeLogStreams and logs:FilterLogEvents"
CREDENTIALS = (
    "give AWS credentials the usual way: AWS_PROFILE (after `aws sso login` or `aws configure`), "
    "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
)
REFUSED = {"UnrecognizedClientException", "InvalidClientTokenId", "ExpiredTokenException", "ExpiredToken"}


class LogsError(SwarmCliError):
    pass


# --- the streams and which of them are asked for -------------------------------------------


@dataclass(frozen=True)
class Stream:
    name: str
    node: str
    kind: str  # container, journal, agent; other for a stream of another shape
    item: str | None  # the container (a service's task) or the agent's verb


def parse_stream(name: str) -> Stream:
    node, _, rest = name.partition("/")
    kind, _, item = rest.partition("/")
    if kind in ("containers", "agent") and item:
        return Stream(name, node, "container" if kind == "containers" else "agent", item)
    if rest == "journal":
        return Stream(name, node, "journal", None)
    return Stream(name, node, "other", rest or None)


@dataclass(frozen=True)
class Selection:
    node: str | None = None
    service: str | None = None
    verb: str | None = None
    journal: bool = False

    def matches(self, stream: Stream) -> bool:
        if self.node and stream.node != self.node:
            return False
        if self.service:
            # A task's container is `<service>.<slot>.<task id>`; a plain container its own name.
            item = stream.item or ""
            return stream.kind == "container" and (item == self.service or item.startswith(f"{self.service}."))
        if self.verb:
            return stream.kind == "agent" and stream.item == self.verb
        return stream.kind == "journal" if self.journal else True

    def said(self) -> str:
        flags = [f"--node {self.node}" if self.node else "", f"--service {self.service}" if self.service else ""]
        flags += [f"--verb {self.verb}" if self.verb else "", "--journal" if self.journal else ""]
        return " ".join(f for f in flags if f) or "no filter"


def selection_of(args: argparse.Namespace) -> Selection:
    given = (("--service", args.service), ("--verb", args.agent_verb), ("--journal", args.journal))
    kinds = [flag for flag, value in given if value]
    if len(kinds) > 1:
        # Each picks a kind of stream: together they could never match anything.
        raise UsageError(f"{' and '.join(kinds)} pick different streams; give one of them (with --node, if you like)")
    return Selection(args.node, args.service, args.agent_verb, args.journal)


# --- the time range -----------------------------------------------------------------------

RELATIVE = re.compile(r"(\d+)([mhd])")
UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_when(value: str, flag: str, now: dt.datetime) -> dt.datetime:
    """`30m`, `6h`, `2d` ago, or an ISO 8601 time (UTC when it has no offset)."""
    relative = RELATIVE.fullmatch(value.strip())
    try:
        if relative:
            return now - dt.timedelta(**{UNITS[relative.group(2)]: int(relative.group(1))})
        when = dt.datetime.fromisoformat(value.strip())
    except (ValueError, OverflowError):
        raise UsageError(
            f"{flag} {value!r} is not a time: give an age (30m, 6h, 2d: minutes, hours, days ago) or an "
            "ISO 8601 time (2026-12-07T06:00, UTC unless it carries an offset such as +01:00)"
        ) from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def time_range(since: str | None, until: str | None, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    start = parse_when(since or DEFAULT_SINCE, "--since", now)
    end = parse_when(until, "--until", now) if until else now
    if start > end:
        raise UsageError(f"--since {iso(start)} is after --until {iso(end)}")
    return start, end


def millis(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


def iso(when: dt.datetime | int, precise: bool = False) -> str:
    """UTC as `2026-12-07T06:01:02Z` (precise: with milliseconds); an int is epoch ms."""
    if isinstance(when, int):
        when = dt.datetime.fromtimestamp(when / 1000, dt.UTC)
    text = when.astimezone(dt.UTC).isoformat(timespec="milliseconds" if precise else "seconds")
    return text.replace("+00:00", "Z")


# --- where the logs are -------------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    group: str
    region: str | None  # None: boto3's own default (AWS_REGION, the profile)
    endpoint: str | None  # None: AWS's own

    def said(self) -> str:
        endpoint = self.endpoint or "AWS's own endpoint"
        return f"{self.group} in {self.region or 'the default region'} at {endpoint}"


def project_name() -> str:
    """The project's name, from Pulumi.yaml: the group's middle part, as the program names it."""
    found = re.search(r"^name:\s*(\S+)\s*$", (ROOT / "Pulumi.yaml").read_text(), re.MULTILINE)
    if not found:
        raise LogsError(f"{ROOT / 'Pulumi.yaml'} has no `name:`; pass --group /swarm/<project>/<stack>")
    return found.group(1).strip("'\"")


def group_of_stack(stack: str) -> str:
    # `organization/swarm/dev` names the stack `dev`, as the program sees it (pulumi.get_stack()).
    return f"/swarm/{project_name()}/{stack.rsplit('/', 1)[-1]}"


def stack_config(stack: str) -> dict[str, str]:
    """The stack's config (it outlives the teardown, unlike its outputs)."""
    try:
        pulumicli.require()
    except SwarmCliError as error:
        raise SwarmCliError(f"{error}; or pass --group G --region R (and --endpoint URL)") from error
    return outputs.config_values(stack)


def where_of(args: argparse.Namespace) -> Where:
    """The flags, and for what they leave out the stack's config: read only when needed."""
    if not args.group and not args.stack:
        raise UsageError("give --stack STACK (or set $PULUMI_STACK), or --group G (with --region R)")
    config = stack_config(args.stack) if args.stack and not (args.group and args.region) else {}
    group = args.group or group_of_stack(args.stack)
    region = args.region or config.get("aws:region") or None
    endpoint = args.endpoint or config.get("swarm:logsEndpoint") or None
    if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
        said = "--endpoint" if args.endpoint else f"the stack's swarm:logsEndpoint ({args.stack})"
        raise UsageError(f"{said} {endpoint!r} is not a URL: give http(s)://host:port")
    return Where(group, region, endpoint)


def client_for(where: Where):
    try:
        return boto3.client(
            "logs",
            region_name=where.region,
            endpoint_url=where.endpoint,
            # Bounded like every other call the CLI makes; throttling is retried.
            config=Config(connect_timeout=10, read_timeout=60, retries={"mode": "standard", "max_attempts": 6}),
        )
    except NoRegionError:
        raise UsageError(
            "no region: pass --region R, or set the stack's aws:region (pulumi config set aws:region R)"
        ) from None


@contextmanager
def aws_errors(where: Where) -> Iterator[None]:
    """CloudWatch Logs' failures as what to do about them (never a credential's value)."""
    try:
        yield
    except NoCredentialsError:
        raise LogsError(f"no AWS credentials to read {where.group}: {CREDENTIALS}") from None
    except EndpointConnectionError as error:
        raise LogsError(
            f"cannot reach CloudWatch Logs at {error.kwargs.get('endpoint_url')}: "
            "check --endpoint (or the stack's swarm:logsEndpoint) and --region"
        ) from None
    except ClientError as error:
        raise LogsError(client_error(error, where)) from None
    except BotoCoreError as error:
        raise LogsError(f"CloudWatch Logs: {error}") from None


def client_error(error: ClientError, where: Where) -> str:
    code = error.response.get("Error", {}).get("Code", "")
    if code == "ResourceNotFoundException":
        return (
            f"no log group {where.said()}: the stack's swarm:logs may be none, or it never ran a morning "
            "with logs on; or --group, --region or --endpoint is not where the stack's logs are"
        )
    if code in REFUSED:
        return f"CloudWatch Logs refused the AWS credentials ({code}): renew them; {CREDENTIALS}"
    if code == "AccessDeniedException":
        return f"these AWS credentials may not read {where.group} ({code}): they need {RIGHTS} on it"
    return f"CloudWatch Logs: {error}"


# --- reading ------------------------------------------------------------------------------


def list_streams(client, group: str) -> list[dict]:
    streams = []
    for page in client.get_paginator("describe_log_streams").paginate(logGroupName=group):
        streams.extend(page.get("logStreams", []))
    return streams


def in_range(described: dict, start: int, end: int) -> bool:
    """Whether a stream may hold events in [start, end]; one that has none yet is kept."""
    first, last = described.get("firstEventTimestamp"), described.get("lastEventTimestamp")
    if first is not None and first > end:
        return False
    return last is None or last + LAST_EVENT_LAG_MS >= start


def search(client, group: str, names: list[str], start: int, end: int, pattern: str | None, want: int) -> list[dict]:
    """The first `want` events of these streams (FilterLogEvents answers oldest first)."""
    found: list[dict] = []
    asked = {"logGroupName": group, "logStreamNames": names, "startTime": start, "endTime": end}
    if pattern:
        asked["filterPattern"] = pattern
    # `interleaved` is ignored by AWS (always interleaved since 2019); moto sorts by it.
    asked["interleaved"] = True
    while len(found) < want:
        page = client.filter_log_events(**asked, limit=min(PAGE_EVENTS, want - len(found)))
        found.extend(page.get("events", []))
        if not page.get("nextToken"):
            break
        asked["nextToken"] = page["nextToken"]
    return found


def read_events(client, group: str, names: list[str], start: int, end: int, pattern: str | None, limit: int):
    """(the first `limit` events of all the streams, oldest first; whether more followed).
    Each call's first limit+1 events hold the first limit+1 of all: one more tells a cut."""
    events: list[dict] = []
    for at in range(0, len(names), STREAMS_PER_CALL):
        events += search(client, group, names[at : at + STREAMS_PER_CALL], start, end, pattern, limit + 1)
    events.sort(key=lambda e: (e["timestamp"], e.get("ingestionTime", 0), e["logStreamName"]))
    return events[:limit], events[limit : limit + 1]


def literal(text: str) -> str:
    """--grep as one quoted term of CloudWatch's filter syntax: matched as it is written."""
    if '"' in text:
        # A quoted term has no documented escape for a quote inside it.
        raise UsageError(f"--grep {text!r}: CloudWatch's filter cannot search for a double quote; leave it out")
    return f'"{text}"'


# --- printing -----------------------------------------------------------------------------


def as_record(event: dict) -> dict:
    stream = parse_stream(event["logStreamName"])
    return {
        "timestamp": iso(event["timestamp"], precise=True),
        "stream": stream.name,
        "node": stream.node,
        "kind": stream.kind,
        "name": stream.item,
        "message": text_of(event),
    }


def text_of(event: dict) -> str:
    return event.get("message", "").rstrip("\r\n")  # Docker's lines and some journal messages end in one


def as_line(event: dict) -> str:
    return f"{iso(event['timestamp'])} {event['logStreamName']} {text_of(event)}"


def what_there_is(streams: list[Stream], selection: Selection) -> str:
    """For a filter that matched no stream: the names that would have."""
    of_node = [s for s in streams if not selection.node or s.node == selection.node]
    if selection.node and not of_node:
        names, what = {s.node for s in streams}, "nodes"
    elif selection.service:
        names = {(s.item or "").split(".")[0] for s in of_node if s.kind == "container"}
        what = "services"
    elif selection.verb:
        names, what = {s.item for s in of_node if s.kind == "agent"}, "agent verbs"
    else:
        return ""
    shown = sorted(n for n in names if n)
    more = f", and {len(shown) - 12} more" if len(shown) > 12 else ""
    return f" (its {what}: {', '.join(shown[:12]) or 'none'}{more})"


# --- the verb -----------------------------------------------------------------------------


def pick(described: list[dict], selection: Selection, start: int, end: int) -> tuple[list[str], list[str]]:
    """(the streams the filters pick, those of them that may hold events in the range)."""
    chosen = [(d["logStreamName"], d) for d in described if selection.matches(parse_stream(d["logStreamName"]))]
    return [name for name, _ in chosen], [name for name, d in chosen if in_range(d, start, end)]


def command(args: argparse.Namespace, now: dt.datetime | None = None) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit {args.limit}: give 1 or more events")
    selection = selection_of(args)
    start, end = time_range(args.since, args.until, now or dt.datetime.now(dt.UTC))
    span = f"from {iso(start)} to {iso(end)}" + (f" matching --grep {args.grep!r}" if args.grep else "")
    pattern = literal(args.grep) if args.grep else None
    where = where_of(args)
    client, progress = client_for(where), Progress("logs")
    with aws_errors(where):
        described = list_streams(client, where.group)
        chosen, names = pick(described, selection, millis(start), millis(end))
        progress.note(f"{where.group}: {len(names)} of {len(described)} streams ({selection.said()}), {span}")
        events, more = read_events(client, where.group, names, millis(start), millis(end), pattern, args.limit)
    for event in events:
        print(json.dumps(as_record(event)) if args.json else as_line(event))
    sys.stdout.flush()  # the results before the notes below, on a terminal showing both
    if not chosen:
        there = what_there_is([parse_stream(d["logStreamName"]) for d in described], selection)
        progress.note(f"nothing matched: no stream of {where.group} matches {selection.said()}{there}")
    elif not events:
        progress.note(f"nothing matched: {len(chosen)} stream(s) match {selection.said()}, none has an event {span}")
    elif more:
        progress.note(
            f"cut off at --limit {args.limit}, oldest first: more events follow. Narrow the filters or the range, "
            f"raise --limit, or go on with --since {iso(more[0]['timestamp'], precise=True)}"
        )
    return 0
