"""
The combined inbound authentication policy (SPF, DKIM, DMARC, DNSBL) that
writes one C{Authentication-Results} header (RFC 8601), and the DKIM
signing policy for submitted mail.

Actions, per configuration:

  - C{reject}: C{550 5.7.1} when the client is on a block list (DNSBL
    action C{reject}) or DMARC fails for a domain publishing C{p=reject}
    (DMARC action C{reject}); C{550 5.7.23} when SPF fails (SPF action
    C{reject}).
  - C{junk}: the message is accepted with C{X-Mailplat-Junk: yes}, which
    the delivery uses to file it into the account's Junk mailbox.  A
    DMARC C{quarantine} disposition always means junk unless DMARC is
    only C{tag}ged.
  - C{tag}: only the C{Authentication-Results} header.

The DNSBL and SPF rejections are made at C{RCPT} already (as Postfix's
C{reject_rbl_client} and an SPF policy service do), so a refused client
sends no message; each lookup is made once per session and its answer
used again at the end of C{DATA}.

Mail from authenticated (submission) sessions and from the server itself
is not checked; an C{Authentication-Results} field claiming our host name
is taken out of every message but those injected from loopback without a
login (a content filter's reinjection keeps ours).
"""

import email.parser
import email.policy
import email.utils
import re
import weakref
from typing import Any, BinaryIO, Dict, Generator, List, Optional, Sequence

import dkim as dkimpy
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailplat import netutil
from mailplat.delivery.policy import IPolicy, IRecipientPolicy, Verdict, clientAddress, isAuthenticated, readMessage
from mailplat.policy.dkim import DKIMResult, DKIMSigner, DKIMVerifier
from mailplat.policy.dmarc import DMARCChecker, DMARCResult
from mailplat.policy.dnsbl import DNSBLChecker
from mailplat.policy.spf import SPFChecker, SPFResult

_log = Logger()

JUNK_HEADER = b"X-Mailplat-Junk: yes\r\n"

_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+\-./=?^_`{|}~@]+$")

# An Authentication-Results field of a header block (CRLF lines), whole,
# and its authserv-id: the first token after the colon, past comments.
_RESULTS_FIELD = re.compile(rb"^authentication-results[ \t]*:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n",
                            re.IGNORECASE | re.MULTILINE)
_AUTHSERV_ID = re.compile(rb":[\s]*(?:\([^()]*\)[\s]*)*([^\s;()]+)")


def _clean(text: str) -> str:
    """
    Printable ASCII only, for text that ends up in a header.
    """
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


def pvalue(value: str) -> str:
    """
    A property value (RFC 8601 C{pvalue}): as is when it is a token or an
    address, else a quoted string.
    """
    value = _clean(value)
    if value and _TOKEN.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def comment(text: str) -> str:
    """
    A header comment, with parentheses and backslashes escaped.
    """
    text = _clean(text)
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def fromDomain(message: bytes) -> Optional[str]:
    """
    The domain of the (first) RFC 5322 From address, or L{None}.
    """
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(message, headersonly=True)
    values = headers.get_all("From") or []
    for _, address in email.utils.getaddresses([str(v) for v in values]):
        if "@" in address:
            domain = address.rpartition("@")[2].strip().rstrip(".").lower()
            if domain:
                return domain
    return None


def forgedResults(message: bytes, hostname: str) -> List[bytes]:
    """
    The C{Authentication-Results} fields of the header of C{message}
    (wire form) that claim to come from C{hostname}, our authserv-id,
    exactly as they are in it: a border MTA deletes them (RFC 8601 section
    5), or anyone could tell our users that we checked what we never did.
    """
    end = message.find(b"\r\n\r\n")
    header = message if end < 0 else message[: end + 2]
    ours = hostname.lower().rstrip(".").encode("ascii", "replace")
    found = []
    for match in _RESULTS_FIELD.finditer(header):
        field = match.group(0)
        ident = _AUTHSERV_ID.search(field)
        if ident is not None and ident.group(1).lower().rstrip(b".") == ours:
            found.append(field)
    return found


def formatHeader(
    hostname: str,
    spf: Optional[SPFResult],
    dkim: Sequence[DKIMResult],
    dmarc: Optional[DMARCResult],
) -> bytes:
    """
    The C{Authentication-Results} header line (folded, ending in CRLF).

    @param spf: the SPF result, or L{None} when SPF was not checked.
    @param dkim: the DKIM results (empty when DKIM was not checked).
    @param dmarc: the DMARC result, or L{None} when it was not checked.
    """
    parts: List[str] = []
    if spf is not None:
        prop = "smtp.mailfrom" if spf.identity == "mailfrom" else "smtp.helo"
        value = spf.sender if spf.identity == "mailfrom" else spf.domain
        parts.append(f"spf={spf.result} {comment(spf.comment)} {prop}={pvalue(value)}" if spf.comment else f"spf={spf.result} {prop}={pvalue(value)}")
    for result in dkim:
        text = f"dkim={result.result}"
        if result.comment:
            text += " " + comment(result.comment)
        if result.domain:
            text += f" header.d={pvalue(result.domain)}"
        if result.selector:
            text += f" header.s={pvalue(result.selector)}"
        parts.append(text)
    if dmarc is not None:
        text = f"dmarc={dmarc.result}"
        if dmarc.policy is not None:
            text += " " + comment(f"p={dmarc.policy} dis={dmarc.disposition}")
        if dmarc.fromDomain:
            text += f" header.from={pvalue(dmarc.fromDomain)}"
        parts.append(text)
    if not parts:
        parts.append("none")
    line = "Authentication-Results: " + _clean(hostname) + ";\r\n\t" + ";\r\n\t".join(parts) + "\r\n"
    return line.encode("ascii")


@implementer(IPolicy, IRecipientPolicy)
class AuthenticationPolicy:
    """
    SPF, DKIM, DMARC and DNSBL checks of incoming mail, with one
    C{Authentication-Results} header.

    @ivar hostname: our host name, the header's authserv-id.
    @ivar spf: C{"off"}, C{"tag"} or C{"reject"} (C{550 5.7.23} on fail).
    @ivar dkimVerify: whether DKIM signatures are verified.
    @ivar dmarc: C{"off"}, C{"tag"}, C{"junk"} (fail with a quarantine or
        reject policy -> junk) or C{"reject"} (p=reject -> C{550 5.7.1},
        p=quarantine -> junk).
    @ivar dnsbl: the action for a listed client: C{"reject"}, C{"junk"}
        or C{"tag"} (an C{X-Mailplat-DNSBL} header).
    """

    def __init__(
        self,
        hostname: str,
        resolver: Any,
        spf: str = "tag",
        dkimVerify: bool = True,
        dmarc: str = "reject",
        dnsblZones: Sequence[str] = (),
        dnsbl: str = "reject",
        spfChecker: Optional[SPFChecker] = None,
        dkimVerifier: Optional[DKIMVerifier] = None,
        dmarcChecker: Optional[DMARCChecker] = None,
        trustLoopback: bool = True,
    ) -> None:
        self.trustLoopback = trustLoopback
        for name, value, allowed in (
            ("spf", spf, ("off", "tag", "reject")),
            ("dmarc", dmarc, ("off", "tag", "junk", "reject")),
            ("dnsbl", dnsbl, ("tag", "junk", "reject")),
        ):
            if value not in allowed:
                raise ValueError(f"policy.{name} must be one of {', '.join(allowed)}, not {value!r}")
        self.hostname = hostname
        self.spf = spf
        self.dkimVerify = dkimVerify
        self.dmarc = dmarc
        self.dnsbl = dnsbl
        self.spfChecker = spfChecker or SPFChecker(resolver)
        self.dkimVerifier = dkimVerifier or DKIMVerifier(resolver)
        self.dmarcChecker = dmarcChecker or DMARCChecker(resolver)
        self.dnsblChecker = DNSBLChecker(resolver, dnsblZones) if dnsblZones else None
        # Per session, the answers of its lookups (a DNSBL listing by
        # client address, an SPF result by address, sender and HELO).
        self._answers: "weakref.WeakKeyDictionary[Any, Dict[Any, Any]]" = weakref.WeakKeyDictionary()

    def _unchecked(self, session: object) -> bool:
        """
        Whether mail of C{session} goes unchecked: an authenticated
        client's, or one injected from loopback when that is trusted.
        """
        return isAuthenticated(session) or (
            self.trustLoopback and netutil.isLoopback(getattr(session, "peer", None)))

    @defer.inlineCallbacks
    def _once(self, session: object, key: Any, lookUp: Any) -> Generator["defer.Deferred[Any]", Any, Any]:
        """
        The answer of C{lookUp()} (a Deferred), asked once per session and
        C{key}.
        """
        try:
            answers = self._answers.setdefault(session, {})
        except TypeError:
            # (No session, or one that cannot be remembered.)
            answers = {}
        if key not in answers:
            answers[key] = yield lookUp()
        return answers[key]

    @defer.inlineCallbacks
    def _listed(self, session: object, ip: str) -> Generator["defer.Deferred[Any]", Any, List[Any]]:
        """
        The block lists C{ip} is on, asked once per session (and logged).
        """
        assert self.dnsblChecker is not None

        @defer.inlineCallbacks
        def lookUp() -> Generator["defer.Deferred[Any]", Any, List[Any]]:
            listed = yield self.dnsblChecker.check(ip)  # type: ignore[union-attr]
            if listed:
                zones = ", ".join(f"{zone}={answer}" for zone, answer in listed)
                _log.info("client {ip} listed: {zones}", ip=ip, zones=zones)
            return listed

        return (yield self._once(session, ("dnsbl", ip), lookUp))

    def _spfResult(self, session: object, ip: str, sender: Optional[str], helo: Optional[str]) -> "defer.Deferred[SPFResult]":
        return self._once(session, ("spf", ip, sender, helo), lambda: self.spfChecker.check(ip, sender, helo))

    def checkRecipient(self, session: object, sender: Optional[str], recipient: str) -> "defer.Deferred[Verdict]":
        """
        See L{IRecipientPolicy.checkRecipient}: the DNSBL refusal (action
        C{reject}) and the SPF one (action C{reject}, result C{fail}).
        """
        ip = clientAddress(session)
        if (self.dnsblChecker is None or self.dnsbl != "reject") and self.spf != "reject":
            return defer.succeed(Verdict.accept())
        if self._unchecked(session) or not ip:
            return defer.succeed(Verdict.accept())
        return self._refusedAtRcpt(session, sender, ip)

    @defer.inlineCallbacks
    def _refusedAtRcpt(self, session: object, sender: Optional[str], ip: str) -> Generator["defer.Deferred[Any]", Any, Verdict]:
        if self.dnsblChecker is not None and self.dnsbl == "reject":
            listed = yield self._listed(session, ip)
            if listed:
                return self._blocked(ip, listed)
        if self.spf == "reject":
            spfResult = yield self._spfResult(session, ip, sender, getattr(session, "helo", None))
            if spfResult.result == "fail":
                return self._spfFailed(ip, spfResult)
        return Verdict.accept()

    @staticmethod
    def _blocked(ip: str, listed: List[Any]) -> Verdict:
        return Verdict.reject(550, "5.7.1", f"Client host [{ip}] blocked using {listed[0][0]}")

    @staticmethod
    def _spfFailed(ip: str, spfResult: SPFResult) -> Verdict:
        return Verdict.reject(550, "5.7.23", f"SPF check failed: {spfResult.domain} does not allow [{ip}] to send its mail")

    @defer.inlineCallbacks
    def checkMessage(
        self, session: object, sender: Optional[str], recipients: List[str], message: BinaryIO
    ) -> Generator["defer.Deferred[Any]", Any, Verdict]:
        """
        See L{IPolicy.checkMessage}.
        """
        if isAuthenticated(session):
            # Not checked, but a user's mail must not carry a claim of
            # ours either (a forgery, or a message received here and sent
            # on as it was).
            forged = forgedResults(readMessage(message), self.hostname)
            return Verdict.tag(strip=forged) if forged else Verdict.accept()
        if self._unchecked(session):
            # Mail injected on this machine (local programs, a content
            # filter's reinjection): trusted, as Postfix's mynetworks is.
            return Verdict.accept()
        ip = clientAddress(session)
        helo = getattr(session, "helo", None)
        extra: List[bytes] = []
        junk = False
        if self.dnsblChecker is not None and ip:
            listed = yield self._listed(session, ip)
            if listed:
                if self.dnsbl == "reject":
                    return self._blocked(ip, listed)
                zones = ", ".join(f"{zone}={answer}" for zone, answer in listed)
                extra.append(f"X-Mailplat-DNSBL: {_clean(zones)}\r\n".encode("ascii"))
                junk = junk or self.dnsbl == "junk"
        data = readMessage(message)
        spfResult: Optional[SPFResult] = None
        if (self.spf != "off" or self.dmarc != "off") and ip:
            spfResult = yield self._spfResult(session, ip, sender, helo)
            if self.spf == "reject" and spfResult.result == "fail":
                return self._spfFailed(ip, spfResult)
        dkimResults: List[DKIMResult] = []
        if self.dkimVerify or self.dmarc != "off":
            dkimResults = yield self.dkimVerifier.verify(data)
        dmarcResult: Optional[DMARCResult] = None
        if self.dmarc != "off":
            # A null reverse path makes the HELO identity SPF's (RFC 7489 3.1.2).
            dmarcResult = yield self.dmarcChecker.check(
                fromDomain(data),
                spfResult.result if spfResult is not None else None,
                spfResult.domain if spfResult is not None else None,
                dkimResults,
            )
            if dmarcResult.result == "fail":
                if dmarcResult.disposition == "reject" and self.dmarc == "reject":
                    return Verdict.reject(550, "5.7.1", f"Unauthenticated mail from {dmarcResult.fromDomain} is refused by its DMARC policy")
                if dmarcResult.disposition in ("reject", "quarantine") and self.dmarc in ("junk", "reject"):
                    junk = True
        header = formatHeader(
            self.hostname,
            spfResult if self.spf != "off" or self.dmarc != "off" else None,
            dkimResults if self.dkimVerify or self.dmarc != "off" else [],
            dmarcResult,
        )
        headers = [header] + extra
        if junk:
            headers.append(JUNK_HEADER)
        return Verdict.tag(*headers, strip=forgedResults(data, self.hostname))


@implementer(IPolicy)
class DkimSigningPolicy:
    """
    DKIM-signs mail from authenticated sessions with the key of its From
    domain (or, when that domain has none, of the login's domain); mail
    with no key for either goes unsigned.

    @ivar signer: the L{DKIMSigner}.
    """

    def __init__(self, signer: DKIMSigner) -> None:
        self.signer = signer

    @defer.inlineCallbacks
    def checkMessage(
        self, session: object, sender: Optional[str], recipients: List[str], message: BinaryIO
    ) -> Generator["defer.Deferred[Any]", Any, Verdict]:
        """
        See L{IPolicy.checkMessage}.
        """
        login = getattr(session, "authenticated", None)
        if session is None or not login:
            return Verdict.accept()
        data = readMessage(message)
        candidates = []
        domain = fromDomain(data)
        if domain:
            candidates.append(domain)
        loginDomain = str(login).rpartition("@")[2].lower()
        if loginDomain and loginDomain not in candidates:
            candidates.append(loginDomain)
        for domain in candidates:
            if self.signer.key(domain) is None:
                continue
            try:
                signature = yield self.signer.sign(data, domain)
            except dkimpy.DKIMException as e:
                _log.warn("DKIM signing for {domain} failed: {error}", domain=domain, error=str(e))
                return Verdict.accept()
            if signature:
                return Verdict.tag(signature)
        return Verdict.accept()
