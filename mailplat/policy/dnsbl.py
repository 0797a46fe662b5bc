"""
DNS block lists: is the client's address listed in a zone such as
C{zen.spamhaus.org}?  The question is the address reversed (octets for
IPv4, nibbles for IPv6) under the zone, type A; an answer in
C{127.0.0.0/8} means listed, NXDOMAIN means not.  A zone that does not
answer counts as not listed (a block list going down must not stop mail).
"""

import ipaddress
from typing import Any, Generator, List, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns

from mailplat.policy import DNSTempError, queryRecords

_log = Logger()

_LISTED = ipaddress.ip_network("127.0.0.0/8")


def queryName(ip: str, zone: str) -> Optional[str]:
    """
    The name to ask for C{ip} in C{zone} (C{2.0.0.127.zen.example} for
    C{127.0.0.2}), or L{None} for text that is no address.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.version == 4:
        labels = str(address).split(".")
    else:
        labels = list(address.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + zone.strip(".")


class DNSBLChecker:
    """
    Checks addresses against block-list zones.

    @ivar resolver: a C{twisted.names} resolver (C{lookupAddress}).
    @ivar zones: the zones to ask.
    """

    def __init__(self, resolver: Any, zones: Sequence[str]) -> None:
        self.resolver = resolver
        self.zones = list(zones)

    @defer.inlineCallbacks
    def _one(self, ip: str, zone: str) -> Generator["defer.Deferred[Any]", Any, Optional[Tuple[str, str]]]:
        name = queryName(ip, zone)
        if name is None:
            return None
        try:
            payloads = yield queryRecords(self.resolver, "lookupAddress", name, dns.A)
        except DNSTempError as e:
            _log.warn("DNSBL {zone} did not answer for {ip}: {error}", zone=zone, ip=ip, error=str(e))
            return None
        codes = [str(ipaddress.ip_address(p.address)) for p in payloads if ipaddress.ip_address(p.address) in _LISTED]
        return (zone, codes[0]) if codes else None

    @defer.inlineCallbacks
    def check(self, ip: str) -> Generator["defer.Deferred[Any]", Any, List[Tuple[str, str]]]:
        """
        Ask every zone at once.

        @return: a Deferred firing with a list of C{(zone, answer)} for
            the zones listing C{ip} (empty when none does).
        """
        answers = yield defer.gatherResults([self._one(ip, zone) for zone in self.zones])
        listed: List[Tuple[str, str]] = [a for a in answers if a is not None]
        return listed
