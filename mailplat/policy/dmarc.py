"""
DMARC (RFC 7489): the policy the domain of the RFC 5322 From publishes at
C{_dmarc.<domain>}, and whether SPF or DKIM passed for a domain aligned
with it.

The organisational domain (where the policy is looked up when the From
domain has none, and what "relaxed" alignment compares) is found by a
simple heuristic instead of the full Public Suffix List: the last two
labels, or the last three when the second-to-last label is a common
second-level registry label under a two-letter country code (C{co.uk},
C{com.au}, C{ac.jp}, ...; see L{SECOND_LEVEL}).  This is right for the
usual cases; a domain under a private suffix (C{github.io}) is treated as
if the suffix owner were the organisation.
"""

import random
from typing import Any, Callable, Dict, Generator, List, Optional, Sequence

from twisted.internet import defer
from twisted.names import dns

from mailplat.policy import DNSTempError, queryRecords, txtStrings

PASS = "pass"
FAIL = "fail"
NONE = "none"
TEMPERROR = "temperror"
PERMERROR = "permerror"

#: Labels that, under a two-letter top-level domain, make a public suffix
#: of two labels (C{example.co.uk}'s organisational domain is itself).
SECOND_LEVEL = frozenset(
    ["ac", "co", "com", "edu", "gov", "gv", "mil", "net", "ne", "nom", "or", "org", "sch", "ltd", "plc", "go", "gob", "gouv", "lg", "ad", "ed", "gr"]
)


def organizationalDomain(domain: str) -> str:
    """
    The organisational domain of C{domain} by the heuristic described in
    the module docstring.
    """
    labels = domain.lower().rstrip(".").split(".")
    if len(labels) <= 2:
        return ".".join(labels)
    if len(labels[-1]) == 2 and labels[-2] in SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def aligned(domain: Optional[str], fromDomain: str, strict: bool) -> bool:
    """
    Whether an authenticated C{domain} is aligned with the From domain.
    """
    if not domain:
        return False
    a, b = domain.lower().rstrip("."), fromDomain.lower().rstrip(".")
    if strict:
        return a == b
    return organizationalDomain(a) == organizationalDomain(b)


class DMARCRecord:
    """
    A parsed DMARC record.

    @ivar policy: C{p} (C{none}, C{quarantine}, C{reject}).
    @ivar subdomainPolicy: C{sp}, defaulting to C{policy}.
    @ivar adkim: C{r} or C{s}.
    @ivar aspf: C{r} or C{s}.
    @ivar pct: C{0}-C{100}.
    """

    def __init__(self, tags: Dict[str, str]) -> None:
        policy = tags.get("p", "").lower()
        self.policy = policy if policy in ("none", "quarantine", "reject") else "none"
        sp = tags.get("sp", "").lower()
        self.subdomainPolicy = sp if sp in ("none", "quarantine", "reject") else self.policy
        self.adkim = "s" if tags.get("adkim", "r").lower() == "s" else "r"
        self.aspf = "s" if tags.get("aspf", "r").lower() == "s" else "r"
        try:
            self.pct = min(100, max(0, int(tags.get("pct", "100"))))
        except ValueError:
            self.pct = 100


def parseRecord(text: str) -> Optional[DMARCRecord]:
    """
    Parse C{v=DMARC1; p=...}; L{None} when it is not a DMARC record.
    """
    parts = [p.strip() for p in text.split(";")]
    if not parts or parts[0].replace(" ", "") != "v=DMARC1":
        return None
    tags: Dict[str, str] = {}
    for part in parts[1:]:
        if "=" in part:
            name, value = part.split("=", 1)
            tags.setdefault(name.strip().lower(), value.strip())
    return DMARCRecord(tags)


class DMARCResult:
    """
    The DMARC outcome for one message.

    @ivar result: L{PASS}, L{FAIL}, L{NONE} (no policy published),
        L{TEMPERROR}, L{PERMERROR}.
    @ivar fromDomain: the RFC 5322 From domain (or L{None}).
    @ivar policy: the policy that applies (C{none}/C{quarantine}/
        C{reject}; C{sp} for a subdomain), L{None} without a record.
    @ivar disposition: what to do: C{none}, C{quarantine} or C{reject}
        (C{none} unless the result is a fail; lowered one step when the
        message falls outside C{pct}).
    @ivar pct: the record's C{pct}.
    @ivar comment: a short explanation.
    """

    def __init__(self, result: str, fromDomain: Optional[str], policy: Optional[str] = None, disposition: str = "none", pct: int = 100, comment: str = "") -> None:
        self.result = result
        self.fromDomain = fromDomain
        self.policy = policy
        self.disposition = disposition
        self.pct = pct
        self.comment = comment

    def __repr__(self) -> str:
        return f"<DMARCResult {self.result} from={self.fromDomain} p={self.policy} disposition={self.disposition}>"


class DMARCChecker:
    """
    Looks up DMARC policies and evaluates them.

    @ivar resolver: a C{twisted.names} resolver (C{lookupText}).
    @ivar random: returns a float in [0, 1), for C{pct} sampling.
    """

    def __init__(self, resolver: Any, random: Callable[[], float] = random.random) -> None:
        self.resolver = resolver
        self.random = random

    @defer.inlineCallbacks
    def _lookup(self, domain: str) -> Generator["defer.Deferred[Any]", Any, Optional[DMARCRecord]]:
        """
        The DMARC record at C{_dmarc.<domain>}, or L{None}.
        """
        payloads = yield queryRecords(self.resolver, "lookupText", f"_dmarc.{domain}", dns.TXT)
        records = []
        for text in txtStrings(payloads):
            parsed = parseRecord(text.decode("ascii", "replace"))
            if parsed is not None:
                records.append(parsed)
        # Several records count as none (RFC 7489 6.6.3).
        return records[0] if len(records) == 1 else None

    @defer.inlineCallbacks
    def check(
        self, fromDomain: Optional[str], spfResult: Optional[str], spfDomain: Optional[str], dkimResults: Sequence[Any]
    ) -> Generator["defer.Deferred[Any]", Any, DMARCResult]:
        """
        Evaluate DMARC for a message.

        @param fromDomain: the domain of the RFC 5322 From address.
        @param spfResult: the SPF result for the MAIL FROM (C{"pass"} ...).
        @param spfDomain: the domain SPF checked.
        @param dkimResults: objects with C{result} and C{domain} (the
            L{DKIMResult <mailplat.policy.dkim.DKIMResult>}s).
        @return: a Deferred firing with a L{DMARCResult}.
        """
        if not fromDomain:
            return DMARCResult(NONE, None, comment="no From domain")
        fromDomain = fromDomain.lower().rstrip(".")
        organizational = organizationalDomain(fromDomain)
        try:
            record = yield self._lookup(fromDomain)
            policy = record.policy if record is not None else None
            if record is None and organizational != fromDomain:
                record = yield self._lookup(organizational)
                if record is not None:
                    policy = record.subdomainPolicy
        except DNSTempError as e:
            return DMARCResult(TEMPERROR, fromDomain, comment=str(e))
        if record is None:
            return DMARCResult(NONE, fromDomain, comment="no DMARC record")
        assert policy is not None
        passes: List[str] = []
        if spfResult == "pass" and aligned(spfDomain, fromDomain, record.aspf == "s"):
            passes.append("spf")
        if any(r.result == "pass" and aligned(r.domain, fromDomain, record.adkim == "s") for r in dkimResults):
            passes.append("dkim")
        if passes:
            return DMARCResult(PASS, fromDomain, policy, "none", record.pct, "aligned " + " and ".join(passes))
        disposition = policy
        if record.pct < 100 and self.random() * 100 >= record.pct:
            disposition = {"reject": "quarantine", "quarantine": "none"}.get(policy, "none")
        return DMARCResult(FAIL, fromDomain, policy, disposition, record.pct, "no aligned SPF or DKIM pass")
