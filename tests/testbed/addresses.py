"""Public addresses on the bed, as EC2 hands them out: distinct from the private ones.

An instance launched with a public address gets one from a pool that is not the bed's
network (a /22 of 198.18.0.0/15, the range set aside for benchmarks), new at every launch
and at every stop and start, kept across a reboot. An Elastic IP is allocated from the same
pool (at most `quota` of them, as EC2's per-region quota, `AddressLimitExceeded` beyond)
and, once associated, replaces the instance's own public address, which is released, as
EC2 does. Releasing an associated Elastic IP fails, as EC2's does.

An address leads to its machine only while it is held: a DNAT rule in this machine's
`nat OUTPUT` chain maps it to the private address, so only connections made here (Pulumi's
SSH, the docker CLI, the tests) reach it; any other address of the pool is refused at once.
The hosts cannot reach public addresses (on EC2 they can, through the internet gateway):
nothing in the product needs that, and the README lists it among what the bed does not model.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from testbed.host import BedError, sh, taken_networks

POOL_RANGE = ipaddress.ip_network("198.18.0.0/15")
DEFAULT_QUOTA = 5  # EC2's default per region
# A test session or a benchmark keeps several stacks' addresses in one "region" at once, as
# a CI account with a raised quota would; the quota's own tests set it back to the default.
RAISED_QUOTA = 64


class AddressError(BedError):
    """What EC2 answers to a call it refuses (the code first, as the AWS provider prints it)."""


@dataclass
class ElasticIp:
    allocation_id: str
    public_ip: str
    tags: dict[str, str] = field(default_factory=dict)
    association_id: str | None = None
    instance_id: str | None = None


class PublicAddresses:
    """The bed's public address pool, its Elastic IPs, and the rules that make them lead somewhere."""

    def __init__(self, bridge: str, log: Callable[[str], None], quota: int = DEFAULT_QUOTA):
        self.bridge, self.log, self.quota = bridge, log, quota
        self.pool: ipaddress.IPv4Network | None = None
        # Every rule names the bridge, so the next run removes what a killed one left.
        self._mark = ["-m", "comment", "--comment", f"{bridge}-public"]
        self.eips: dict[str, ElasticIp] = {}
        self._own: dict[str, str] = {}  # instance id -> its own (non-elastic) public address
        self._private: dict[str, str] = {}  # instance id -> private address
        self._routes: dict[str, str] = {}  # public address -> private address it leads to
        self._handed_out: set[str] = set()  # every address given so far: the next is another
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []

    # -- setup -------------------------------------------------------------------------
    def start(self) -> None:
        self.pool = _free_pool()
        sh("ip", "route", "add", str(self.pool), "dev", self.bridge)
        self._undo.append(lambda: sh("ip", "route", "del", str(self.pool), "dev", self.bridge, check=False))
        # An address nobody holds answers nothing on EC2; here it is refused at once, so a
        # test that dials one fails in a moment instead of at a timeout.
        rule = ["OUTPUT", "-d", str(self.pool), *self._mark, "-j", "REJECT", "--reject-with", "icmp-host-unreachable"]
        sh("iptables", "-w", "10", "-I", *rule)
        self._undo.append(lambda: sh("iptables", "-w", "10", "-D", *rule, check=False))
        self.log(f"public addresses from {self.pool}")

    def close(self) -> None:
        with self._lock:
            for public in list(self._routes):
                self._unroute(public)
        while self._undo:
            self._undo.pop()()

    # -- instances ---------------------------------------------------------------------
    def launched(self, instance_id: str, private_ip: str, public: bool) -> str:
        """A new instance: its own public address (new), or none."""
        with self._lock:
            self._private[instance_id] = private_ip
            return self._give_own(instance_id) if public else ""

    def restarted(self, instance_id: str) -> str:
        """Stopped and started: a new public address of its own, unless an Elastic IP holds it."""
        with self._lock:
            elastic = self._elastic_of(instance_id)
            if elastic:
                return elastic.public_ip
            if instance_id not in self._own:
                return ""
            self._unroute(self._own.pop(instance_id))
            return self._give_own(instance_id)

    def terminated(self, instance_id: str) -> None:
        with self._lock:
            own = self._own.pop(instance_id, None)
            if own:
                self._unroute(own)
            elastic = self._elastic_of(instance_id)
            if elastic:  # EC2 disassociates an Elastic IP from a terminated instance
                self._unroute(elastic.public_ip)
                elastic.association_id = elastic.instance_id = None
            self._private.pop(instance_id, None)

    # -- Elastic IPs -------------------------------------------------------------------
    def allocate(self, tags: dict[str, str]) -> ElasticIp:
        with self._lock:
            if len(self.eips) >= self.quota:
                raise AddressError("AddressLimitExceeded: The maximum number of addresses has been reached.")
            eip = ElasticIp(f"eipalloc-{secrets.token_hex(8)}", self._free_address(), dict(tags))
            self.eips[eip.allocation_id] = eip
            return eip

    def release(self, allocation_id: str) -> None:
        with self._lock:
            eip = self.eips.get(allocation_id)
            if eip is None:
                raise AddressError(f"InvalidAllocationID.NotFound: The allocation ID '{allocation_id}' does not exist")
            if eip.association_id:
                raise AddressError(f"InvalidIPAddress.InUse: Address {eip.public_ip} is in use.")
            del self.eips[allocation_id]

    def associate(self, allocation_id: str, instance_id: str) -> ElasticIp:
        """EC2's AssociateAddress: moves an associated address (reassociation is automatic
        in a VPC), and takes the instance's own public address away."""
        with self._lock:
            eip = self.eips.get(allocation_id)
            if eip is None:
                raise AddressError(f"InvalidAllocationID.NotFound: The allocation ID '{allocation_id}' does not exist")
            if instance_id not in self._private:
                raise AddressError(f"InvalidInstanceID.NotFound: The instance ID '{instance_id}' does not exist")
            if eip.association_id:
                self._unroute(eip.public_ip)
            own = self._own.pop(instance_id, None)
            if own:
                self._unroute(own)
            eip.association_id, eip.instance_id = f"eipassoc-{secrets.token_hex(8)}", instance_id
            self._route(eip.public_ip, self._private[instance_id])
            return eip

    def disassociate(self, association_id: str) -> None:
        """EC2's DisassociateAddress; an association already gone (moved, or its instance
        terminated) is not an error (the AWS provider ignores InvalidAssociationID.NotFound)."""
        with self._lock:
            eip = next((e for e in self.eips.values() if e.association_id == association_id), None)
            if eip is None:
                return
            self._unroute(eip.public_ip)
            instance_id = eip.instance_id
            eip.association_id = eip.instance_id = None
            if instance_id in self._private:  # the instance gets an address of its own again
                self._give_own(instance_id)

    def describe(self, tags: dict[str, str], filters: list[dict]) -> list[ElasticIp]:
        """DescribeAddresses with `tag:` filters (any of the values) and exact tags."""
        with self._lock:
            return [eip for eip in self.eips.values() if tags_match(eip.tags, tags, filters)]

    def private_of(self, instance_id: str | None) -> str:
        """The private address of an instance the bed launched ("" for any other)."""
        with self._lock:
            return self._private.get(instance_id or "", "")

    def leads_to(self, public_ip: str) -> str | None:
        """The private address a public one reaches now (None: it leads nowhere)."""
        with self._lock:
            return self._routes.get(public_ip)

    # -- inside the lock -----------------------------------------------------------------
    def _elastic_of(self, instance_id: str) -> ElasticIp | None:
        return next((e for e in self.eips.values() if e.instance_id == instance_id), None)

    def _give_own(self, instance_id: str) -> str:
        public = self._free_address()
        self._own[instance_id] = public
        self._route(public, self._private[instance_id])
        return public

    def _free_address(self) -> str:
        # EC2 may hand an address out again; never doing so here makes "new at every
        # launch" certain, so a product that counts on a machine's address keeping fails.
        free = [str(a) for a in self.pool.hosts() if str(a) not in self._handed_out]
        if not free:
            raise BedError(f"the bed's public pool {self.pool} is used up")
        public = secrets.choice(free)  # as EC2's: nothing to predict, nothing to count on
        self._handed_out.add(public)
        return public

    def _route(self, public: str, private: str) -> None:
        sh("iptables", "-w", "10", "-t", "nat", "-I", *self._dnat(public, private))
        self._routes[public] = private
        self.log(f"public address {public} leads to {private}")

    def _unroute(self, public: str) -> None:
        private = self._routes.pop(public, None)
        if private is None:
            return
        sh("iptables", "-w", "10", "-t", "nat", "-D", *self._dnat(public, private), check=False)

    def _dnat(self, public: str, private: str) -> list[str]:
        return ["OUTPUT", "-d", public, *self._mark, "-j", "DNAT", "--to-destination", private]


def tags_match(tags: dict[str, str], wanted: dict[str, str], filters: list[dict]) -> bool:
    """Whether an address with `tags` is one DescribeAddresses (the provider's `getEips`)
    returns for exact `wanted` tags and `tag:KEY` filters (any of their values)."""
    if any(tags.get(k) != v for k, v in wanted.items()):
        return False
    return not any(f["name"].startswith("tag:") and tags.get(f["name"][4:]) not in f["values"] for f in filters)


def _free_pool() -> ipaddress.IPv4Network:
    """A /22 of POOL_RANGE that no route or address on this machine overlaps."""
    taken = taken_networks()
    candidates = list(POOL_RANGE.subnets(new_prefix=22))
    for net in sorted(candidates, key=lambda _: secrets.randbelow(1 << 30)):  # beds side by side: not the same one
        if not any(net.overlaps(other) for other in taken):
            return net
    raise BedError(f"no free /22 in {POOL_RANGE} for the bed's public addresses")
