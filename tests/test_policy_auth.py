"""
Tests for L{mailplat.policy}: SPF, DKIM, DMARC, DNSBL and the combined
L{AuthenticationPolicy}.  Every DNS answer comes from L{FakeResolver}.
"""

import io
import os
import stat
from typing import Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.names import common, dns
from twisted.names import error as dnserror
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailplat.admin import dkim_cmd
from mailplat.delivery.policy import ACCEPT, REJECT, TAG
from mailplat.policy import spf as spfmod
from mailplat.policy.authresults import AuthenticationPolicy, DkimSigningPolicy, formatHeader, pvalue
from mailplat.policy.dkim import DKIMResult, DKIMSigner, DKIMVerifier, keygen
from mailplat.policy.dmarc import DMARCChecker, aligned, organizationalDomain
from mailplat.policy.dnsbl import DNSBLChecker, queryName
from mailplat.policy.spf import SPFChecker, SPFResult


class FakeResolver(common.ResolverBase):
    """
    A resolver answering from a dictionary: C{(name, type)} to a list of
    payloads.  Unknown names are NXDOMAIN; names in C{broken} fail like a
    timeout.

    @ivar queries: every C{(name, type)} asked.
    """

    def __init__(self) -> None:
        common.ResolverBase.__init__(self)
        self.records: Dict[Tuple[str, int], List[object]] = {}
        self.broken: set = set()
        self.queries: List[Tuple[str, int]] = []

    def add(self, name: str, rtype: int, payload: object) -> None:
        self.records.setdefault((name.lower(), rtype), []).append(payload)

    def txt(self, name: str, *texts: str) -> None:
        for text in texts:
            chunks = [text[i : i + 255].encode("ascii") for i in range(0, len(text), 255)] or [b""]
            self.add(name, dns.TXT, dns.Record_TXT(*chunks))

    def a(self, name: str, *addresses: str) -> None:
        for address in addresses:
            if ":" in address:
                self.add(name, dns.AAAA, dns.Record_AAAA(address))
            else:
                self.add(name, dns.A, dns.Record_A(address))

    def _lookup(self, name, cls, type, timeout):  # type: ignore[no-untyped-def]
        text = name.decode("ascii").lower().rstrip(".")
        self.queries.append((text, type))
        if text in self.broken:
            return defer.fail(dnserror.DNSQueryTimeoutError(text))
        payloads = self.records.get((text, type))
        if payloads is None:
            if any(n == text for n, _ in self.records):
                return defer.succeed(([], [], []))
            return defer.fail(Failure(dnserror.DNSNameError(text)))
        answers = [dns.RRHeader(name=text, type=type, payload=p) for p in payloads]
        return defer.succeed((answers, [], []))


class Session:
    """
    The attributes of an L{SMTPSession} a policy reads.
    """

    def __init__(self, peerHost: str = "192.0.2.10", helo: str = "mail.example.com", authenticated: Optional[str] = None) -> None:
        self.peerHost = peerHost
        self.peer = None
        self.helo = helo
        self.hostname = "mx.test"
        self.authenticated = authenticated


class SPFTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dns = FakeResolver()
        self.checker = SPFChecker(self.dns)

    def check(self, ip: str, sender: Optional[str] = "alice@example.com", helo: str = "mail.example.com") -> SPFResult:
        return self.successResultOf(self.checker.check(ip, sender, helo))

    def test_ip4Pass(self) -> None:
        self.dns.txt("example.com", "v=spf1 ip4:192.0.2.0/24 -all")
        result = self.check("192.0.2.10")
        self.assertEqual((result.result, result.domain, result.identity), ("pass", "example.com", "mailfrom"))
        self.assertEqual(self.check("198.51.100.1").result, "fail")

    def test_qualifiers(self) -> None:
        for record, expected in [("v=spf1 ~all", "softfail"), ("v=spf1 ?all", "neutral"), ("v=spf1 +all", "pass"), ("v=spf1", "neutral")]:
            self.dns.records.clear()
            self.dns.txt("example.com", record)
            self.assertEqual(self.check("192.0.2.1").result, expected, record)

    def test_none(self) -> None:
        self.dns.txt("example.com", "some other text")
        self.assertEqual(self.check("192.0.2.1").result, "none")
        self.assertEqual(self.check("192.0.2.1", "bob@nowhere.example").result, "none")

    def test_twoRecords(self) -> None:
        self.dns.txt("example.com", "v=spf1 -all", "v=spf1 +all")
        self.assertEqual(self.check("192.0.2.1").result, "permerror")

    def test_ip6(self) -> None:
        self.dns.txt("example.com", "v=spf1 ip6:2001:db8::/32 -all")
        self.assertEqual(self.check("2001:db8::25").result, "pass")
        self.assertEqual(self.check("2001:db9::25").result, "fail")
        self.assertEqual(self.check("192.0.2.1").result, "fail")

    def test_aAndMx(self) -> None:
        self.dns.txt("example.com", "v=spf1 a mx/28 a:other.example.com -all")
        self.dns.a("example.com", "192.0.2.1")
        self.dns.add("example.com", dns.MX, dns.Record_MX(10, b"mx.example.com"))
        self.dns.a("mx.example.com", "198.51.100.16")
        self.dns.a("other.example.com", "203.0.113.5", "2001:db8::5")
        self.assertEqual(self.check("192.0.2.1").result, "pass")
        self.assertEqual(self.check("198.51.100.20").result, "pass")
        self.assertEqual(self.check("198.51.100.40").result, "fail")
        self.assertEqual(self.check("203.0.113.5").result, "pass")
        self.assertEqual(self.check("2001:db8::5").result, "pass")

    def test_include(self) -> None:
        self.dns.txt("example.com", "v=spf1 include:_spf.provider.test -all")
        self.dns.txt("_spf.provider.test", "v=spf1 ip4:203.0.113.0/24 ~all")
        self.assertEqual(self.check("203.0.113.9").result, "pass")
        # The include's softfail is "no match": the outer -all decides.
        self.assertEqual(self.check("192.0.2.9").result, "fail")

    def test_includeWithoutRecord(self) -> None:
        self.dns.txt("example.com", "v=spf1 include:missing.test -all")
        self.assertEqual(self.check("192.0.2.9").result, "permerror")

    def test_redirect(self) -> None:
        self.dns.txt("example.com", "v=spf1 redirect=_spf.example.net")
        self.dns.txt("_spf.example.net", "v=spf1 ip4:192.0.2.0/24 -all")
        self.assertEqual(self.check("192.0.2.7").result, "pass")
        self.assertEqual(self.check("198.51.100.7").result, "fail")

    def test_redirectIgnoredAfterMatch(self) -> None:
        self.dns.txt("example.com", "v=spf1 ip4:192.0.2.7 redirect=none.test")
        self.assertEqual(self.check("192.0.2.7").result, "pass")
        self.assertEqual(self.check("192.0.2.8").result, "permerror")

    def test_lookupLimit(self) -> None:
        # a chain of 11 includes is more than 10 DNS-querying terms
        for n in range(11):
            self.dns.txt(f"l{n}.example.com", f"v=spf1 include:l{n + 1}.example.com -all")
        self.dns.txt("l11.example.com", "v=spf1 +all")
        self.dns.txt("example.com", "v=spf1 include:l1.example.com -all")
        result = self.check("192.0.2.1")
        self.assertEqual(result.result, "permerror")
        self.assertIn("DNS lookups", result.comment)

    def test_withinLookupLimit(self) -> None:
        for n in range(1, 9):
            self.dns.txt(f"l{n}.example.com", f"v=spf1 include:l{n + 1}.example.com -all")
        self.dns.txt("l9.example.com", "v=spf1 +all")
        self.dns.txt("example.com", "v=spf1 include:l1.example.com -all")
        self.assertEqual(self.check("192.0.2.1").result, "pass")

    def test_voidLimit(self) -> None:
        self.dns.txt("example.com", "v=spf1 a:v1.test a:v2.test a:v3.test -all")
        result = self.check("192.0.2.1")
        self.assertEqual(result.result, "permerror")
        self.assertIn("void", result.comment)

    def test_temperror(self) -> None:
        self.dns.broken.add("example.com")
        self.assertEqual(self.check("192.0.2.1").result, "temperror")
        self.dns.broken.clear()
        self.dns.txt("example.com", "v=spf1 include:slow.test -all")
        self.dns.broken.add("slow.test")
        self.assertEqual(self.check("192.0.2.1").result, "temperror")

    def test_existsWithMacros(self) -> None:
        self.dns.txt("example.com", "v=spf1 exists:%{ir}.%{l1r-}.%{d}.list.test -all")
        self.dns.a("10.2.0.192.alice.example.com.list.test", "127.0.0.2")
        self.assertEqual(self.check("192.0.2.10").result, "pass")
        self.assertEqual(self.check("192.0.2.11").result, "fail")

    def test_macroExpansion(self) -> None:
        ctx = spfmod._Context(spfmod.ipaddress.ip_address("192.0.2.3"), "strong-bad@email.example.com", "mx.example.org", 10, 2)
        expand = lambda spec: spfmod.expandMacros(spec, ctx, "email.example.com")  # noqa: E731
        self.assertEqual(expand("%{s}"), "strong-bad@email.example.com")
        self.assertEqual(expand("%{o}"), "email.example.com")
        self.assertEqual(expand("%{d4}"), "email.example.com")
        self.assertEqual(expand("%{d2}"), "example.com")
        self.assertEqual(expand("%{dr}"), "com.example.email")
        self.assertEqual(expand("%{d2r}"), "example.email")
        self.assertEqual(expand("%{l}"), "strong-bad")
        self.assertEqual(expand("%{l-}"), "strong.bad")
        self.assertEqual(expand("%{lr-}"), "bad.strong")
        self.assertEqual(expand("%{l1r-}"), "strong")
        self.assertEqual(expand("%{ir}.%{v}._spf.%{d2}"), "3.2.0.192.in-addr._spf.example.com")
        self.assertEqual(expand("%{h}"), "mx.example.org")
        self.assertEqual(expand("%%%_%-"), "% %20")
        self.assertEqual(expand("%{L}"), "strong-bad")
        ctx6 = spfmod._Context(spfmod.ipaddress.ip_address("2001:db8::cb01"), "a@b.example", "h", 10, 2)
        self.assertEqual(
            spfmod.expandMacros("%{i}", ctx6, "b.example"),
            "2.0.0.1.0.d.b.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.c.b.0.1",
        )
        self.assertRaises(spfmod._PermError, spfmod.expandMacros, "%{x}", ctx, "d")
        self.assertRaises(spfmod._PermError, spfmod.expandMacros, "50%", ctx, "d")

    def test_nullSenderChecksHelo(self) -> None:
        self.dns.txt("mail.example.com", "v=spf1 a -all")
        self.dns.a("mail.example.com", "192.0.2.10")
        result = self.check("192.0.2.10", None, "mail.example.com")
        self.assertEqual((result.result, result.identity, result.sender), ("pass", "helo", "postmaster@mail.example.com"))

    def test_ptr(self) -> None:
        self.dns.txt("example.com", "v=spf1 ptr -all")
        self.dns.add("10.2.0.192.in-addr.arpa", dns.PTR, dns.Record_PTR(b"host.example.com"))
        self.dns.a("host.example.com", "192.0.2.10")
        self.dns.add("11.2.0.192.in-addr.arpa", dns.PTR, dns.Record_PTR(b"liar.example.com"))
        self.dns.a("liar.example.com", "192.0.2.99")
        self.assertEqual(self.check("192.0.2.10").result, "pass")
        self.assertEqual(self.check("192.0.2.11").result, "fail")

    def test_unknownMechanism(self) -> None:
        self.dns.txt("example.com", "v=spf1 foo:bar -all")
        self.assertEqual(self.check("192.0.2.1").result, "permerror")

    def test_unknownModifierIgnored(self) -> None:
        self.dns.txt("example.com", "v=spf1 moo=cow exp=explain.%{d} -all")
        self.assertEqual(self.check("192.0.2.1").result, "fail")


MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: hello\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)


class DKIMTests(unittest.TestCase):
    """
    Sign with a generated key, verify against its published record.
    """

    #: One key for the whole class (RSA-2048 generation takes a while):
    #: C{(dataDir, record)}, made by the first test.
    shared: Optional[Tuple[str, str]] = None

    def setUp(self) -> None:
        if DKIMTests.shared is None:
            dataDir = os.path.abspath(self.mktemp())
            DKIMTests.shared = (dataDir, keygen("example.com", "sel", dataDir))
        self.dataDir, self.record = DKIMTests.shared
        self.adminDir = os.path.abspath(self.mktemp())
        self.dns = FakeResolver()
        name, _, _, value = self.record.split(" ", 3)
        self.txtValue = "".join(part.strip('"') for part in value.split('" "'))
        self.dns.txt(name, self.txtValue)
        self.signer = DKIMSigner(self.dataDir, "sel")

    def test_keygen(self) -> None:
        path = os.path.join(self.dataDir, "dkim", "example.com.sel.key")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertTrue(self.record.startswith('sel._domainkey.example.com IN TXT "v=DKIM1; k=rsa; p='))
        self.assertRaises(FileExistsError, keygen, "example.com", "sel", self.dataDir)
        self.assertRaises(ValueError, keygen, "../etc", "sel", self.dataDir)

    @defer.inlineCallbacks
    def test_roundTrip(self) -> None:
        signature = yield self.signer.sign(MESSAGE, "example.com")
        self.assertTrue(signature.startswith(b"DKIM-Signature: "))
        self.assertTrue(signature.endswith(b"\r\n"))
        results = yield DKIMVerifier(self.dns).verify(signature + MESSAGE)
        self.assertEqual([(r.result, r.domain, r.selector) for r in results], [("pass", "example.com", "sel")])
        self.assertIn(("sel._domainkey.example.com", dns.TXT), self.dns.queries)

    @defer.inlineCallbacks
    def test_tamperedBody(self) -> None:
        signature = yield self.signer.sign(MESSAGE, "example.com")
        results = yield DKIMVerifier(self.dns).verify(signature + MESSAGE.replace(b"Hello Bob", b"Hello Eve"))
        self.assertEqual([r.result for r in results], ["fail"])

    @defer.inlineCallbacks
    def test_tamperedHeader(self) -> None:
        signature = yield self.signer.sign(MESSAGE, "example.com")
        results = yield DKIMVerifier(self.dns).verify(signature + MESSAGE.replace(b"Subject: hello", b"Subject: buy"))
        self.assertEqual([r.result for r in results], ["fail"])

    @defer.inlineCallbacks
    def test_noSignature(self) -> None:
        results = yield DKIMVerifier(self.dns).verify(MESSAGE)
        self.assertEqual([r.result for r in results], ["none"])

    @defer.inlineCallbacks
    def test_missingKey(self) -> None:
        signature = yield self.signer.sign(MESSAGE, "example.com")
        self.dns.records.clear()
        results = yield DKIMVerifier(self.dns).verify(signature + MESSAGE)
        self.assertEqual([r.result for r in results], ["permerror"])

    @defer.inlineCallbacks
    def test_dnsFailure(self) -> None:
        signature = yield self.signer.sign(MESSAGE, "example.com")
        self.dns.broken.add("sel._domainkey.example.com")
        results = yield DKIMVerifier(self.dns).verify(signature + MESSAGE)
        self.assertEqual([r.result for r in results], ["temperror"])

    @defer.inlineCallbacks
    def test_noKeyNoSignature(self) -> None:
        self.assertIsNone((yield self.signer.sign(MESSAGE, "example.net")))

    @defer.inlineCallbacks
    def test_signingPolicy(self) -> None:
        policy = DkimSigningPolicy(self.signer)
        verdict = yield policy.checkMessage(Session(authenticated="alice@example.com"), "alice@example.com", ["bob@example.org"], io.BytesIO(MESSAGE))
        self.assertEqual(verdict.action, TAG)
        self.assertEqual(len(verdict.headers), 1)
        self.assertTrue(verdict.headers[0].startswith(b"DKIM-Signature: "))
        results = yield DKIMVerifier(self.dns).verify(verdict.headers[0] + MESSAGE)
        self.assertEqual(results[0].result, "pass")
        # Inbound mail is not signed.
        verdict = yield policy.checkMessage(Session(), "alice@example.com", ["bob@example.org"], io.BytesIO(MESSAGE))
        self.assertEqual(verdict.action, ACCEPT)

    @defer.inlineCallbacks
    def test_signThenAuthenticationPolicy(self) -> None:
        """
        A signed message from a client SPF does not allow still passes
        DMARC through its aligned DKIM signature.
        """
        signature = yield self.signer.sign(MESSAGE, "example.com")
        self.dns.txt("example.com", "v=spf1 -all")
        self.dns.txt("_dmarc.example.com", "v=DMARC1; p=reject")
        policy = AuthenticationPolicy("mx.test", self.dns)
        verdict = yield policy.checkMessage(Session(), "alice@example.com", ["bob@example.org"], io.BytesIO(signature + MESSAGE))
        self.assertEqual(verdict.action, TAG)
        header = verdict.headers[0].decode("ascii")
        self.assertIn("spf=fail", header)
        self.assertIn("dkim=pass", header)
        self.assertIn("header.d=example.com header.s=sel", header)
        self.assertIn("dmarc=pass", header)

    def test_adminCommand(self) -> None:
        options = dkim_cmd.DkimOptions()
        options.parseOptions(["keygen", "Example.ORG", "--selector", "s2024"])
        out = io.StringIO()

        adminDir = self.adminDir

        class Config:
            dataDir = adminDir

        self.successResultOf(dkim_cmd.run(options, Config(), out))
        self.assertIn('s2024._domainkey.example.org IN TXT "v=DKIM1; k=rsa; p=', out.getvalue())
        self.assertTrue(os.path.exists(os.path.join(self.adminDir, "dkim", "example.org.s2024.key")))
        failure = self.failureResultOf(dkim_cmd.run(options, Config(), io.StringIO()))
        self.assertIn("exists already", str(failure.value))


def passing(domain: str) -> DKIMResult:
    return DKIMResult("pass", domain, "s")


class DMARCTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dns = FakeResolver()
        self.checker = DMARCChecker(self.dns, random=lambda: 0.5)

    def test_organizationalDomain(self) -> None:
        self.assertEqual(organizationalDomain("mail.example.com"), "example.com")
        self.assertEqual(organizationalDomain("example.com"), "example.com")
        self.assertEqual(organizationalDomain("a.b.example.co.uk"), "example.co.uk")
        self.assertEqual(organizationalDomain("news.example.de"), "example.de")

    def test_alignment(self) -> None:
        self.assertTrue(aligned("mail.example.com", "example.com", False))
        self.assertFalse(aligned("mail.example.com", "example.com", True))
        self.assertTrue(aligned("Example.com", "example.com", True))
        self.assertFalse(aligned("example.net", "example.com", False))

    def test_none(self) -> None:
        result = self.successResultOf(self.checker.check("example.com", "pass", "example.com", []))
        self.assertEqual(result.result, "none")

    def test_passBySPF(self) -> None:
        self.dns.txt("_dmarc.example.com", "v=DMARC1; p=reject")
        result = self.successResultOf(self.checker.check("example.com", "pass", "bounce.example.com", []))
        self.assertEqual((result.result, result.policy, result.disposition), ("pass", "reject", "none"))

    def test_passByDKIM(self) -> None:
        self.dns.txt("_dmarc.example.com", "v=DMARC1; p=reject")
        result = self.successResultOf(self.checker.check("example.com", "fail", "example.com", [passing("example.com")]))
        self.assertEqual(result.result, "pass")

    def test_failUnaligned(self) -> None:
        self.dns.txt("_dmarc.example.com", "v=DMARC1; p=quarantine")
        result = self.successResultOf(self.checker.check("example.com", "pass", "example.net", [passing("other.example")]))
        self.assertEqual((result.result, result.policy, result.disposition), ("fail", "quarantine", "quarantine"))

    def test_strictAlignment(self) -> None:
        self.dns.txt("_dmarc.example.com", "v=DMARC1; p=reject; adkim=s; aspf=s")
        result = self.successResultOf(self.checker.check("example.com", "pass", "mail.example.com", [passing("mail.example.com")]))
        self.assertEqual(result.result, "fail")
        result = self.successResultOf(self.checker.check("example.com", "pass", "example.com", []))
        self.assertEqual(result.result, "pass")

    def test_organizationalFallbackAndSubdomainPolicy(self) -> None:
        self.dns.txt("_dmarc.example.com", "v=DMARC1; p=reject; sp=quarantine")
        result = self.successResultOf(self.checker.check("news.example.com", "fail", "news.example.com", []))
        self.assertEqual((result.result, result.policy), ("fail", "quarantine"))
        self.assertIn(("_dmarc.news.example.com", dns.TXT), self.dns.queries)

    def test_pct(self) -> None:
        self.dns.txt("_dmarc.example.com", "v=DMARC1; p=reject; pct=40")
        result = self.successResultOf(self.checker.check("example.com", "fail", "example.com", []))
        self.assertEqual((result.result, result.policy, result.disposition), ("fail", "reject", "quarantine"))
        self.checker.random = lambda: 0.1
        result = self.successResultOf(self.checker.check("example.com", "fail", "example.com", []))
        self.assertEqual(result.disposition, "reject")

    def test_temperror(self) -> None:
        self.dns.broken.add("_dmarc.example.com")
        result = self.successResultOf(self.checker.check("example.com", "pass", "example.com", []))
        self.assertEqual(result.result, "temperror")


class DNSBLTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dns = FakeResolver()
        self.dns.a("2.0.0.127.bl.test", "127.0.0.2")
        self.dns.a("10.2.0.192.bl.test", "192.0.2.1")  # not a listing answer
        self.checker = DNSBLChecker(self.dns, ["bl.test", "other.test"])

    def test_queryName(self) -> None:
        self.assertEqual(queryName("192.0.2.99", "bl.test"), "99.2.0.192.bl.test")
        self.assertEqual(
            queryName("2001:db8::1", "bl.test."),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test",
        )
        self.assertIsNone(queryName("not an address", "bl.test"))

    def test_listed(self) -> None:
        self.assertEqual(self.successResultOf(self.checker.check("127.0.0.2")), [("bl.test", "127.0.0.2")])

    def test_notListed(self) -> None:
        self.assertEqual(self.successResultOf(self.checker.check("192.0.2.99")), [])
        self.assertEqual(self.successResultOf(self.checker.check("192.0.2.10")), [])

    def test_brokenZone(self) -> None:
        self.dns.broken.add("2.0.0.127.other.test")
        self.assertEqual(self.successResultOf(self.checker.check("127.0.0.2")), [("bl.test", "127.0.0.2")])


class AuthenticationPolicyTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dns = FakeResolver()
        self.dns.txt("example.com", "v=spf1 ip4:192.0.2.0/24 -all")

    def judge(self, policy: AuthenticationPolicy, session: Optional[Session] = None, sender: Optional[str] = "alice@example.com", message: bytes = MESSAGE):
        return self.successResultOf(policy.checkMessage(session or Session(), sender, ["bob@example.org"], io.BytesIO(message)))

    def test_header(self) -> None:
        self.dns.txt("_dmarc.example.com", "v=DMARC1; p=none")
        verdict = self.judge(AuthenticationPolicy("mx.test", self.dns))
        self.assertEqual(verdict.action, TAG)
        self.assertEqual(
            verdict.headers,
            [
                b"Authentication-Results: mx.test;\r\n"
                b"\tspf=pass (example.com: matched ip4:192.0.2.0/24) smtp.mailfrom=alice@example.com;\r\n"
                b"\tdkim=none (no signature);\r\n"
                b"\tdmarc=pass (p=none dis=none) header.from=example.com\r\n"
            ],
        )

    def test_forgedResults(self) -> None:
        """
        The verdict strips the message's C{Authentication-Results} fields
        that name our authserv-id (in any case, after a comment, with a
        version), whole with their continuation lines, and no other.
        """
        forged = [b"Authentication-Results: MX.test;\r\n\tdkim=pass header.d=bank.test\r\n",
                  b"authentication-results:(fake) mx.test. 1; spf=pass\r\n"]
        other = b"Authentication-Results: mx.test.example; spf=pass\r\n"
        message = forged[0] + other + forged[1] + MESSAGE
        verdict = self.judge(AuthenticationPolicy("mx.test", self.dns, dmarc="off"), message=message)
        self.assertEqual(verdict.action, TAG)
        self.assertEqual(verdict.strip, forged)
        self.assertEqual(self.judge(AuthenticationPolicy("mx.test", self.dns, dmarc="off")).strip, [])

    def test_formatHeader(self) -> None:
        header = formatHeader(
            "mx.test",
            SPFResult("softfail", "example.net", "helo", "postmaster@example.net", ""),
            [DKIMResult("fail", "example.net", "s1", "bad (really)")],
            None,
        )
        self.assertEqual(
            header,
            b"Authentication-Results: mx.test;\r\n\tspf=softfail smtp.helo=example.net;\r\n"
            b"\tdkim=fail (bad \\(really\\)) header.d=example.net header.s=s1\r\n",
        )
        self.assertEqual(pvalue('we"ird value'), '"we\\"ird value"')
        self.assertEqual(formatHeader("mx.test", None, [], None), b"Authentication-Results: mx.test;\r\n\tnone\r\n")

    def test_dmarcReject(self) -> None:
        self.dns.txt("_dmarc.example.com", "v=DMARC1; p=reject")
        verdict = self.judge(AuthenticationPolicy("mx.test", self.dns), Session(peerHost="198.51.100.1"))
        self.assertEqual(verdict.action, REJECT)
        self.assertEqual((verdict.reply.code, verdict.reply.enhanced), (550, "5.7.1"))

    def test_loopbackTrusted(self) -> None:
        """
        Mail injected from loopback is accepted unchecked (as Postfix's
        mynetworks), unless trustLoopback is off.
        """
        from twisted.internet.address import IPv4Address

        self.dns.txt("_dmarc.example.com", "v=DMARC1; p=reject")
        local = Session(peerHost="127.0.0.1")
        local.peer = IPv4Address("TCP", "127.0.0.1", 2525)
        self.assertEqual(self.judge(AuthenticationPolicy("mx.test", self.dns), local).action, ACCEPT)
        verdict = self.judge(AuthenticationPolicy("mx.test", self.dns, trustLoopback=False), local)
        self.assertEqual(verdict.action, REJECT)

    def test_dmarcJunk(self) -> None:
        self.dns.txt("_dmarc.example.com", "v=DMARC1; p=reject")
        verdict = self.judge(AuthenticationPolicy("mx.test", self.dns, dmarc="junk"), Session(peerHost="198.51.100.1"))
        self.assertEqual(verdict.action, TAG)
        self.assertIn(b"X-Mailplat-Junk: yes\r\n", verdict.headers)
        self.assertIn(b"dmarc=fail", verdict.headers[0])

    def test_dmarcQuarantineIsJunk(self) -> None:
        self.dns.txt("_dmarc.example.com", "v=DMARC1; p=quarantine")
        verdict = self.judge(AuthenticationPolicy("mx.test", self.dns), Session(peerHost="198.51.100.1"))
        self.assertIn(b"X-Mailplat-Junk: yes\r\n", verdict.headers)

    def test_dmarcTagOnly(self) -> None:
        self.dns.txt("_dmarc.example.com", "v=DMARC1; p=reject")
        verdict = self.judge(AuthenticationPolicy("mx.test", self.dns, dmarc="tag"), Session(peerHost="198.51.100.1"))
        self.assertEqual(verdict.action, TAG)
        self.assertNotIn(b"X-Mailplat-Junk: yes\r\n", verdict.headers)

    def test_spfReject(self) -> None:
        verdict = self.judge(AuthenticationPolicy("mx.test", self.dns, spf="reject", dmarc="off"), Session(peerHost="198.51.100.1"))
        self.assertEqual(verdict.action, REJECT)
        self.assertEqual((verdict.reply.code, verdict.reply.enhanced), (550, "5.7.23"))

    def test_dnsblReject(self) -> None:
        self.dns.a("10.2.0.192.bl.test", "127.0.0.2")
        verdict = self.judge(AuthenticationPolicy("mx.test", self.dns, dnsblZones=["bl.test"]))
        self.assertEqual(verdict.action, REJECT)
        self.assertEqual((verdict.reply.code, verdict.reply.enhanced), (550, "5.7.1"))
        self.assertIn("bl.test", verdict.reply.lines[0] if hasattr(verdict.reply, "lines") else str(verdict.reply))

    def test_dnsblJunk(self) -> None:
        self.dns.a("10.2.0.192.bl.test", "127.0.0.2")
        verdict = self.judge(AuthenticationPolicy("mx.test", self.dns, dnsblZones=["bl.test"], dnsbl="junk"))
        self.assertEqual(verdict.action, TAG)
        self.assertIn(b"X-Mailplat-DNSBL: bl.test=127.0.0.2\r\n", verdict.headers)
        self.assertIn(b"X-Mailplat-Junk: yes\r\n", verdict.headers)

    def test_authenticatedSkipped(self) -> None:
        verdict = self.judge(AuthenticationPolicy("mx.test", self.dns), Session(authenticated="alice@example.com"))
        self.assertEqual(verdict.action, ACCEPT)

    def recipient(self, policy: AuthenticationPolicy, session: Session, sender: Optional[str] = "alice@example.com"):
        return self.successResultOf(policy.checkRecipient(session, sender, "bob@example.org"))

    def test_dnsblRejectAtRcpt(self) -> None:
        """
        A listed client is refused at RCPT (action C{reject}); the lists
        are asked once for the session, whatever the recipients and the
        end of DATA; with C{junk} or C{tag} RCPT accepts.
        """
        self.dns.a("10.2.0.192.bl.test", "127.0.0.2")
        policy = AuthenticationPolicy("mx.test", self.dns, dnsblZones=["bl.test"])
        session = Session()
        for _ in range(3):
            verdict = self.recipient(policy, session)
            self.assertEqual(verdict.action, REJECT)
            self.assertEqual((verdict.reply.code, verdict.reply.enhanced), (550, "5.7.1"))
        self.assertEqual(self.judge(policy, session).action, REJECT)
        self.assertEqual([q for q in self.dns.queries if q[0].endswith("bl.test")], [("10.2.0.192.bl.test", dns.A)])
        junk = AuthenticationPolicy("mx.test", self.dns, dnsblZones=["bl.test"], dnsbl="junk")
        self.assertEqual(self.recipient(junk, Session()).action, ACCEPT)

    def test_spfRejectAtRcpt(self) -> None:
        """
        SPF C{fail} is refused at RCPT with action C{reject}; the record is
        read once for the session and sender, and the end of DATA uses
        that answer; another sender is looked up afresh.
        """
        policy = AuthenticationPolicy("mx.test", self.dns, spf="reject", dmarc="off")
        session = Session(peerHost="198.51.100.1")
        verdict = self.recipient(policy, session)
        self.assertEqual(verdict.action, REJECT)
        self.assertEqual((verdict.reply.code, verdict.reply.enhanced), (550, "5.7.23"))
        self.assertEqual(self.judge(policy, session).action, REJECT)
        self.assertEqual(self.dns.queries.count(("example.com", dns.TXT)), 1)
        self.recipient(policy, session, sender="carol@example.com")
        self.assertEqual(self.dns.queries.count(("example.com", dns.TXT)), 2)
        self.assertEqual(self.recipient(AuthenticationPolicy("mx.test", self.dns, dmarc="off"), session).action, ACCEPT)

    def test_uncheckedAtRcpt(self) -> None:
        """
        Authenticated and (trusted) loopback clients are not looked up at
        RCPT either.
        """
        from twisted.internet.address import IPv4Address

        self.dns.a("10.2.0.192.bl.test", "127.0.0.2")
        policy = AuthenticationPolicy("mx.test", self.dns, spf="reject", dnsblZones=["bl.test"])
        local = Session(peerHost="127.0.0.1")
        local.peer = IPv4Address("TCP", "127.0.0.1", 2525)
        self.assertEqual(self.recipient(policy, Session(authenticated="alice@example.com")).action, ACCEPT)
        self.assertEqual(self.recipient(policy, local).action, ACCEPT)
        self.assertEqual(self.dns.queries, [])
        self.assertEqual(self.dns.queries, [])

    def test_authenticatedForgedResults(self) -> None:
        """
        Mail from an authenticated user is not checked, but loses the
        C{Authentication-Results} fields that claim our host name.
        """
        forged = b"Authentication-Results: mx.test; dmarc=pass header.from=bank.test\r\n"
        verdict = self.judge(AuthenticationPolicy("mx.test", self.dns), Session(authenticated="alice@example.com"),
                             message=forged + MESSAGE)
        self.assertEqual((verdict.action, verdict.headers, verdict.strip), (TAG, [], [forged]))
        self.assertEqual(self.dns.queries, [])

    def test_badConfiguration(self) -> None:
        self.assertRaises(ValueError, AuthenticationPolicy, "mx.test", self.dns, spf="maybe")
