"""
SPF, the Sender Policy Framework (RFC 7208): does the domain of the MAIL
FROM (or of the HELO name, for a null reverse path) allow the client's IP
address to send its mail?

The evaluation is our own, on the C{twisted.names} resolver the relay uses,
so it never blocks the reactor and tests answer from a fake resolver.
(pyspf, the usual library, asks DNS synchronously through dnspython or
pydns with its own resolver: it would need a thread per check and could not
be pointed at our resolver.)

Supported: the mechanisms C{all}, C{include}, C{a}, C{mx}, C{ptr} (a
minimal one: validated names of the client ending in the target domain),
C{ip4}, C{ip6}, C{exists}; the modifiers C{redirect} and C{exp} (parsed,
the explanation is not fetched); the macros C{s l o d i h v p} with the
digit/C{r} transformers and delimiters, C{%%}, C{%_}, C{%-}; the limit of
10 DNS-querying terms and of 2 void lookups (both L{PERMERROR}), 10 names
for C{mx} and C{ptr}.
"""

import ipaddress
import re
from typing import Any, Generator, List, Optional, Tuple, Union
from urllib.parse import quote

from twisted.internet import defer
from twisted.names import dns

from mailplat.policy import DNSTempError, queryRecords, txtStrings

PASS = "pass"
FAIL = "fail"
SOFTFAIL = "softfail"
NEUTRAL = "neutral"
NONE = "none"
TEMPERROR = "temperror"
PERMERROR = "permerror"

_QUALIFIERS = {"+": PASS, "-": FAIL, "~": SOFTFAIL, "?": NEUTRAL}

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class SPFResult:
    """
    The outcome of one SPF check.

    @ivar result: one of L{PASS}, L{FAIL}, L{SOFTFAIL}, L{NEUTRAL},
        L{NONE}, L{TEMPERROR}, L{PERMERROR}.
    @ivar domain: the domain checked (of the MAIL FROM, or the HELO name).
    @ivar identity: C{"mailfrom"} or C{"helo"}.
    @ivar sender: the identity checked as an address
        (C{postmaster@helo} for a null reverse path).
    @ivar comment: a short explanation for logs and headers.
    """

    def __init__(self, result: str, domain: str, identity: str, sender: str, comment: str = "") -> None:
        self.result = result
        self.domain = domain
        self.identity = identity
        self.sender = sender
        self.comment = comment

    def __repr__(self) -> str:
        return f"<SPFResult {self.result} {self.identity}={self.sender!r} ({self.comment})>"


class _PermError(Exception):
    """
    The SPF record (or the evaluation) is broken: L{PERMERROR}.
    """


class _TempError(Exception):
    """
    DNS failed: L{TEMPERROR}.
    """


_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$")
_MACRO_RE = re.compile(r"%(?:\{([slodiphcrtvSLODIPHCRTV])(\d*)(r?)([.\-+,/_=]*)\}|(%)|(_)|(-))")
_MECHANISM_RE = re.compile(r"^([+\-~?]?)([A-Za-z][A-Za-z0-9_.\-]*)(.*)$")
_MODIFIER_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_.\-]*)=(.*)$")


def validDomain(domain: str) -> bool:
    """
    Whether C{domain} is a fully qualified domain name SPF may look up
    (several labels, each of valid length).
    """
    return bool(_DOMAIN_RE.match(domain)) and "." in domain.rstrip(".")


def _reverseName(ip: IPAddress) -> str:
    """
    The C{in-addr.arpa}/C{ip6.arpa} name of an address.
    """
    return ip.reverse_pointer


def _dotted(ip: IPAddress) -> str:
    """
    The C{%{i}} form: dotted quad, or dot-separated nibbles for IPv6.
    """
    if ip.version == 4:
        return str(ip)
    return ".".join(ip.exploded.replace(":", ""))


class _Context:
    """
    The state of one SPF evaluation, shared by its nested C{include} and
    C{redirect} lookups.

    @ivar lookups: the DNS-querying terms seen (at most 10).
    @ivar voids: the lookups that answered nothing (at most 2).
    """

    def __init__(self, ip: IPAddress, sender: str, helo: str, lookupLimit: int, voidLimit: int) -> None:
        self.ip = ip
        self.sender = sender
        local, _, domain = sender.rpartition("@")
        self.local = local or "postmaster"
        self.senderDomain = domain
        self.helo = helo
        self.lookupLimit = lookupLimit
        self.voidLimit = voidLimit
        self.lookups = 0
        self.voids = 0
        self.validatedName: Optional[str] = None

    def countLookup(self) -> None:
        """
        Count one DNS-querying term; L{_PermError} past the limit.
        """
        self.lookups += 1
        if self.lookups > self.lookupLimit:
            raise _PermError(f"more than {self.lookupLimit} DNS lookups")

    def countVoid(self, records: List[Any]) -> List[Any]:
        """
        Count a lookup that found nothing; L{_PermError} past the limit.
        """
        if not records:
            self.voids += 1
            if self.voids > self.voidLimit:
                raise _PermError(f"more than {self.voidLimit} void lookups")
        return records


def expandMacros(spec: str, ctx: _Context, domain: str) -> str:
    """
    Expand the macros of a domain-spec (RFC 7208 section 7).

    @param domain: the current domain (C{%{d}}).
    @raise _PermError: for a malformed macro.
    """
    values = {
        "s": f"{ctx.local}@{ctx.senderDomain}",
        "l": ctx.local,
        "o": ctx.senderDomain,
        "d": domain,
        "i": _dotted(ctx.ip),
        "p": ctx.validatedName or "unknown",
        "v": "in-addr" if ctx.ip.version == 4 else "ip6",
        "h": ctx.helo,
        "c": str(ctx.ip),
        "r": "unknown",
        "t": "0",
    }

    def replace(m: "re.Match[str]") -> str:
        letter, digits, reverse, delimiters, percent, underscore, dash = m.groups()
        if percent:
            return "%"
        if underscore:
            return " "
        if dash:
            return "%20"
        value = values[letter.lower()]
        parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
        if reverse:
            parts.reverse()
        if digits:
            count = int(digits)
            if count == 0:
                raise _PermError("macro keeps 0 labels")
            parts = parts[-count:]
        result = ".".join(parts)
        if letter.isupper():
            result = quote(result, safe="")
        return result

    out = []
    position = 0
    for m in _MACRO_RE.finditer(spec):
        if "%" in spec[position : m.start()]:
            raise _PermError(f"bad macro in {spec!r}")
        out.append(spec[position : m.start()])
        out.append(replace(m))
        position = m.end()
    if "%" in spec[position:]:
        raise _PermError(f"bad macro in {spec!r}")
    out.append(spec[position:])
    expanded = "".join(out)
    # A name longer than 253 octets loses labels on the left (4.8).
    while len(expanded) > 253 and "." in expanded:
        expanded = expanded.split(".", 1)[1]
    return expanded


def _splitCidr(value: str) -> Tuple[str, int, int]:
    """
    Split C{domain-spec[/cidr4][//cidr6]} into its parts (defaults 32 and
    128).
    """
    cidr4, cidr6 = 32, 128
    m = re.match(r"^(.*?)(?:/(\d+))?(?://(\d+))?$", value)
    assert m is not None
    spec, v4, v6 = m.groups()
    if v4 is not None:
        cidr4 = int(v4)
        if cidr4 > 32 or (len(v4) > 1 and v4.startswith("0")):
            raise _PermError(f"bad ip4 prefix length in {value!r}")
    if v6 is not None:
        cidr6 = int(v6)
        if cidr6 > 128 or (len(v6) > 1 and v6.startswith("0")):
            raise _PermError(f"bad ip6 prefix length in {value!r}")
    return spec, cidr4, cidr6


class SPFChecker:
    """
    Evaluates SPF policies through a C{twisted.names} resolver.

    @ivar resolver: answers C{lookupText}, C{lookupAddress},
        C{lookupIPV6Address}, C{lookupMailExchange}, C{lookupPointer}.
    @ivar lookupLimit: DNS-querying terms allowed (10, RFC 7208 4.6.4).
    @ivar voidLimit: lookups that answer nothing allowed (2).
    """

    def __init__(self, resolver: Any, lookupLimit: int = 10, voidLimit: int = 2) -> None:
        self.resolver = resolver
        self.lookupLimit = lookupLimit
        self.voidLimit = voidLimit

    @defer.inlineCallbacks
    def check(self, ip: str, sender: Optional[str], helo: Optional[str]) -> Generator["defer.Deferred[Any]", Any, SPFResult]:
        """
        Check a client's right to send mail from C{sender}.

        @param ip: the client's address as text.
        @param sender: the reverse path (C{None} or C{""} when null: the
            HELO name is checked instead, as C{postmaster@helo}).
        @param helo: the HELO/EHLO name.
        @return: a Deferred firing with an L{SPFResult}.
        """
        helo = (helo or "").strip().rstrip(".")
        if sender:
            identity = "mailfrom"
            local, _, domain = sender.rpartition("@")
            address = f"{local or 'postmaster'}@{domain}"
        else:
            identity = "helo"
            domain = helo
            address = f"postmaster@{helo}"
        domain = domain.rstrip(".")
        try:
            parsed = ipaddress.ip_address(ip)
        except ValueError:
            return SPFResult(NONE, domain, identity, address, f"no usable client address {ip!r}")
        if parsed.version == 6 and parsed.ipv4_mapped is not None:
            parsed = parsed.ipv4_mapped
        if not validDomain(domain):
            return SPFResult(NONE, domain, identity, address, f"{domain!r} is not a domain to check")
        ctx = _Context(parsed, address, helo, self.lookupLimit, self.voidLimit)
        try:
            result, comment = yield self._checkHost(ctx, domain.lower())
        except _PermError as e:
            result, comment = PERMERROR, str(e)
        except (_TempError, DNSTempError) as e:
            result, comment = TEMPERROR, str(e)
        return SPFResult(result, domain, identity, address, comment)

    @defer.inlineCallbacks
    def _records(self, domain: str) -> Generator["defer.Deferred[Any]", Any, Optional[str]]:
        """
        The SPF record of C{domain}: its text, or L{None} when it has none.
        """
        try:
            payloads = yield queryRecords(self.resolver, "lookupText", domain, dns.TXT)
        except DNSTempError as e:
            raise _TempError(str(e)) from None
        found = []
        for text in txtStrings(payloads):
            lowered = text.lower()
            if lowered == b"v=spf1" or lowered.startswith(b"v=spf1 "):
                found.append(text)
        if len(found) > 1:
            raise _PermError(f"{domain} has {len(found)} SPF records")
        if not found:
            return None
        try:
            return found[0].decode("ascii")
        except UnicodeDecodeError:
            raise _PermError(f"{domain}: SPF record is not ASCII") from None

    @defer.inlineCallbacks
    def _checkHost(self, ctx: _Context, domain: str) -> Generator["defer.Deferred[Any]", Any, Tuple[str, str]]:
        """
        The C{check_host()} function of RFC 7208 section 4.

        @return: a Deferred firing with C{(result, comment)}.
        """
        if not validDomain(domain):
            return NONE, f"{domain!r} is not a domain to check"
        record = yield self._records(domain)
        if record is None:
            return NONE, f"{domain} has no SPF record"
        terms = record.split()[1:]
        directives: List[Tuple[str, str, str]] = []
        redirect: Optional[str] = None
        explanation: Optional[str] = None
        for term in terms:
            modifier = _MODIFIER_RE.match(term)
            if modifier:
                name, value = modifier.group(1).lower(), modifier.group(2)
                if name == "redirect":
                    if redirect is not None:
                        raise _PermError(f"{domain}: two redirect modifiers")
                    redirect = value
                elif name == "exp":
                    if explanation is not None:
                        raise _PermError(f"{domain}: two exp modifiers")
                    explanation = value
                continue
            mechanism = _MECHANISM_RE.match(term)
            if mechanism is None:
                raise _PermError(f"{domain}: bad term {term!r}")
            qualifier, name, rest = mechanism.groups()
            directives.append((_QUALIFIERS[qualifier or "+"], name.lower(), rest))
        for result, name, rest in directives:
            matched = yield self._mechanism(ctx, domain, name, rest)
            if matched:
                return result, f"{domain}: matched {name}{rest}"
        if redirect is not None:
            ctx.countLookup()
            target = expandMacros(redirect, ctx, domain)
            result, comment = yield self._checkHost(ctx, target.lower())
            if result == NONE:
                raise _PermError(f"{domain}: redirect to {target}, which has no SPF record")
            return result, comment
        return NEUTRAL, f"{domain}: no mechanism matched"

    def _target(self, ctx: _Context, domain: str, argument: str) -> str:
        """
        The domain a mechanism names (C{:domain-spec}, expanded), or the
        current domain.
        """
        if not argument:
            return domain
        if not argument.startswith(":"):
            raise _PermError(f"bad mechanism argument {argument!r}")
        target = expandMacros(argument[1:], ctx, domain).rstrip(".")
        if not target:
            raise _PermError("empty domain-spec")
        return target.lower()

    @defer.inlineCallbacks
    def _addresses(self, ctx: _Context, name: str, void: bool = True) -> Generator["defer.Deferred[Any]", Any, List[IPAddress]]:
        """
        The addresses of C{name} of the client's address family.
        """
        if ctx.ip.version == 4:
            method, rtype = "lookupAddress", dns.A
        else:
            method, rtype = "lookupIPV6Address", dns.AAAA
        try:
            payloads = yield queryRecords(self.resolver, method, name, rtype)
        except DNSTempError as e:
            raise _TempError(str(e)) from None
        if void:
            ctx.countVoid(payloads)
        return [ipaddress.ip_address(p.address) for p in payloads]

    def _inNetwork(self, ctx: _Context, address: IPAddress, cidr4: int, cidr6: int) -> bool:
        """
        Whether the client is in C{address}'s network of the given prefix.
        """
        if address.version != ctx.ip.version:
            return False
        prefix = cidr4 if address.version == 4 else cidr6
        return ctx.ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False)

    @defer.inlineCallbacks
    def _mechanism(self, ctx: _Context, domain: str, name: str, rest: str) -> Generator["defer.Deferred[Any]", Any, bool]:
        """
        Whether one mechanism matches the client.
        """
        if name == "all":
            if rest:
                raise _PermError(f"bad all{rest}")
            return True
        if name in ("ip4", "ip6"):
            if not rest.startswith(":"):
                raise _PermError(f"{name} needs an address")
            try:
                network = ipaddress.ip_network(rest[1:], strict=False)
            except ValueError:
                raise _PermError(f"bad {name}{rest}") from None
            if network.version != (4 if name == "ip4" else 6):
                raise _PermError(f"bad {name}{rest}")
            return network.version == ctx.ip.version and ctx.ip in network
        if name == "include":
            ctx.countLookup()
            target = self._target(ctx, domain, rest)
            result, _ = yield self._checkHost(ctx, target)
            if result == PASS:
                return True
            if result == TEMPERROR:
                raise _TempError(f"include:{target}: temperror")
            if result in (PERMERROR, NONE):
                raise _PermError(f"include:{target}: {result}")
            return False
        if name == "exists":
            ctx.countLookup()
            target = self._target(ctx, domain, rest)
            try:
                payloads = yield queryRecords(self.resolver, "lookupAddress", target, dns.A)
            except DNSTempError as e:
                raise _TempError(str(e)) from None
            return bool(ctx.countVoid(payloads))
        if name in ("a", "mx"):
            ctx.countLookup()
            spec, cidr4, cidr6 = _splitCidr(rest)
            target = self._target(ctx, domain, spec)
            if name == "a":
                hosts = [target]
            else:
                try:
                    exchanges = yield queryRecords(self.resolver, "lookupMailExchange", target, dns.MX)
                except DNSTempError as e:
                    raise _TempError(str(e)) from None
                ctx.countVoid(exchanges)
                if len(exchanges) > 10:
                    raise _PermError(f"{target} has more than 10 MX records")
                hosts = [p.name.name.decode("ascii", "replace").rstrip(".") for p in exchanges]
            for host in hosts:
                if not host:
                    continue
                addresses = yield self._addresses(ctx, host, void=(name == "a"))
                if any(self._inNetwork(ctx, a, cidr4, cidr6) for a in addresses):
                    return True
            return False
        if name == "ptr":
            ctx.countLookup()
            target = self._target(ctx, domain, rest)
            validated = yield self._validatedNames(ctx)
            for host in validated:
                if host == target or host.endswith("." + target):
                    ctx.validatedName = host
                    return True
            return False
        raise _PermError(f"unknown mechanism {name}")

    @defer.inlineCallbacks
    def _validatedNames(self, ctx: _Context) -> Generator["defer.Deferred[Any]", Any, List[str]]:
        """
        The client's PTR names whose forward lookup gives its address back
        (at most 10 names tried); DNS errors count as no name.
        """
        try:
            pointers = yield queryRecords(self.resolver, "lookupPointer", _reverseName(ctx.ip), dns.PTR)
        except DNSTempError:
            return []
        names = []
        for payload in pointers[:10]:
            host = payload.name.name.decode("ascii", "replace").rstrip(".").lower()
            try:
                addresses = yield self._addresses(ctx, host, void=False)
            except _TempError:
                continue
            if ctx.ip in addresses:
                names.append(host)
        return names
