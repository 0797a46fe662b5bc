"""
Tests for L{mailplat.auth.sasl} and L{mailplat.auth.scram}: each
mechanism's exchanges (RFC 7677's SCRAM-SHA-256 example included), wrong
proofs, cancellation and malformed input, and what is offered with which
checker.
"""

import base64
import hashlib
import hmac
import os
import tempfile
from typing import Any, Optional, Tuple

from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from mailplat.auth import sasl
from mailplat.auth.compat import bytesUsernames
from mailplat.auth.passwd import PasswordFile, PasswordFileChecker
from mailplat.auth.realm import MailRealm
from mailplat.auth.scram import (
    HashedSCRAMCredentials,
    ISCRAMSecretSource,
    ISCRAMSHA256Credentials,
    SCRAMCredentials,
    ScramSecrets,
    saslprep,
)
from mailplat.interfaces import ISMTPAvatar
from mailplat.metrics import CountingPortal, Metrics
from mailplat.store.memory import MemoryStore

ALICE = "alice@example.test"
SECRET = b"correct horse"
MailRealmInterfaces = (ISMTPAvatar,)


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


class ScramClient:
    """
    The client side of SCRAM-SHA-256 (RFC 5802), written independently of
    the server's code, for the tests of every protocol.

    @ivar serverSignature: what the server-final message must carry, once
        L{final} has run.
    """

    def __init__(self, user: str, password: bytes, nonce: bytes = b"fyko+d2lbbFgONRv9qkxdawL",
                 authzid: str = "", flag: bytes = b"n") -> None:
        self.user = user
        self.password = password
        self.nonce = nonce
        self.gs2 = flag + b"," + (b"a=" + self._escape(authzid) if authzid else b"") + b","
        self.bare = b"n=" + self._escape(user) + b",r=" + nonce
        self.serverSignature = b""

    @staticmethod
    def _escape(name: str) -> bytes:
        return name.encode("utf-8").replace(b"=", b"=3D").replace(b",", b"=2C")

    def first(self) -> bytes:
        """
        The client-first message.
        """
        return self.gs2 + self.bare

    def final(self, serverFirst: bytes, password: Optional[bytes] = None) -> bytes:
        """
        The client-final message answering C{serverFirst} (with another
        C{password} to make a wrong proof).
        """
        fields = dict(field.split(b"=", 1) for field in serverFirst.split(b","))
        assert fields[b"r"].startswith(self.nonce)
        salted = hashlib.pbkdf2_hmac(
            "sha256", self.password if password is None else password, base64.b64decode(fields[b"s"]), int(fields[b"i"])
        )
        clientKey = _hmac(salted, b"Client Key")
        storedKey = hashlib.sha256(clientKey).digest()
        withoutProof = b"c=" + base64.b64encode(self.gs2) + b",r=" + fields[b"r"]
        authMessage = self.bare + b"," + serverFirst + b"," + withoutProof
        proof = bytes(a ^ b for a, b in zip(clientKey, _hmac(storedKey, authMessage)))
        self.serverSignature = b"v=" + base64.b64encode(_hmac(_hmac(salted, b"Server Key"), authMessage))
        return withoutProof + b",p=" + base64.b64encode(proof)


@implementer(ICredentialsChecker)
class PlainOnlyChecker:
    """
    A checker that can verify only passwords sent in the clear.
    """

    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: Any) -> Any:
        return defer.fail(UnauthorizedLogin())


@implementer(ISCRAMSecretSource)
class FixedSource:
    """
    Gives RFC 7677's salt and iteration count.
    """

    def __init__(self, salt: bytes, iterations: int) -> None:
        self.salt = salt
        self.iterations = iterations
        self.asked: list = []

    def scramParameters(self, username: bytes) -> "defer.Deferred[Tuple[bytes, int]]":
        self.asked.append(username)
        return defer.succeed((self.salt, self.iterations))


def memoryPortal() -> Portal:
    checker = InMemoryUsernamePasswordDatabaseDontUse(**{ALICE: SECRET})
    return Portal(MailRealm(MemoryStore()), [checker])


class DecodeTests(SynchronousTestCase):
    """
    L{sasl.decodeResponse}.
    """

    def test_base64(self) -> None:
        self.assertEqual(sasl.decodeResponse(b"aGVsbG8=\r\n"), b"hello")
        self.assertEqual(sasl.decodeResponse(b""), b"")

    def test_cancel(self) -> None:
        """
        C{*} cancels a continuation response; as an initial response it is
        just bad base64.
        """
        self.assertRaises(sasl.SASLCancelled, sasl.decodeResponse, b"*")
        exc = self.assertRaises(sasl.SASLError, sasl.decodeResponse, b"*", initial=True)
        self.assertNotIsInstance(exc, sasl.SASLCancelled)

    def test_emptyInitial(self) -> None:
        """
        C{=} is an empty initial response.
        """
        self.assertEqual(sasl.decodeResponse(b"=", initial=True), b"")
        self.assertRaises(sasl.SASLError, sasl.decodeResponse, b"=")

    def test_notBase64(self) -> None:
        self.assertRaises(sasl.SASLError, sasl.decodeResponse, b"!!!!")
        self.assertRaises(sasl.SASLError, sasl.decodeResponse, b"abc")


class OfferTests(SynchronousTestCase):
    """
    L{sasl.mechanismsFor}: what each kind of checker can verify.
    """

    def test_noPortalOrCleartext(self) -> None:
        self.assertEqual(sasl.mechanismsFor(None, True), [])
        self.assertEqual(sasl.mechanismsFor(memoryPortal(), False), [])

    def test_memory(self) -> None:
        """
        A checker holding plain secrets verifies every mechanism.
        """
        self.assertEqual(sasl.mechanismsFor(memoryPortal(), True), ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"])

    def test_plainOnly(self) -> None:
        portal = Portal(MailRealm(MemoryStore()), [PlainOnlyChecker()])
        self.assertEqual(sasl.mechanismsFor(portal, True), ["PLAIN", "LOGIN"])

    def test_passwordFile(self) -> None:
        """
        mailplat's own checker verifies SCRAM-SHA-256 but not CRAM-MD5,
        also through the metrics wrapper.
        """
        checker = PasswordFileChecker(PasswordFile(self.mktemp()))
        portal = Portal(MailRealm(MemoryStore()), [checker])
        self.assertEqual(sasl.mechanismsFor(portal, True), ["PLAIN", "LOGIN", "SCRAM-SHA-256"])
        wrapped = CountingPortal(portal, "imap", Metrics())
        self.assertEqual(sasl.mechanismsFor(wrapped, True), ["PLAIN", "LOGIN", "SCRAM-SHA-256"])
        self.assertIs(sasl.findChecker(wrapped, ISCRAMSHA256Credentials), checker)

    def test_scramInterfaceWithoutSource(self) -> None:
        """
        A checker taking SCRAM credentials but unable to give the salt
        cannot run the exchange: not offered.
        """

        @implementer(ICredentialsChecker)
        class NoSource:
            credentialInterfaces = (IUsernamePassword, ISCRAMSHA256Credentials)

        portal = Portal(MailRealm(MemoryStore()), [NoSource()])
        self.assertEqual(sasl.mechanismsFor(portal, True), ["PLAIN", "LOGIN"])


class PlainTests(SynchronousTestCase):
    """
    PLAIN (RFC 4616).
    """

    def test_initialResponse(self) -> None:
        mechanism = sasl.makeMechanism("PLAIN", memoryPortal(), "mx")
        credentials = self.successResultOf(mechanism.respond(b"\0Alice@Example.TEST\0pw"))
        self.assertTrue(IUsernamePassword.providedBy(credentials))
        self.assertEqual((credentials.username, credentials.password), (ALICE.encode(), b"pw"))
        self.assertIsNone(mechanism.serverFinal())

    def test_emptyChallengeFirst(self) -> None:
        mechanism = sasl.PlainMechanism()
        challenge = self.successResultOf(mechanism.respond(None))
        self.assertEqual(challenge.data, b"")
        credentials = self.successResultOf(mechanism.respond(ALICE.encode() + b"\0" + ALICE.encode() + b"\0pw"))
        self.assertEqual(credentials.username, ALICE.encode())

    def test_otherAuthzid(self) -> None:
        mechanism = sasl.PlainMechanism()
        self.failureResultOf(mechanism.respond(b"bob@example.test\0" + ALICE.encode() + b"\0pw"), UnauthorizedLogin)

    def test_malformed(self) -> None:
        self.failureResultOf(sasl.PlainMechanism().respond(b"no nul"), sasl.SASLError)
        self.failureResultOf(sasl.PlainMechanism().respond(b"a\0b\0c\0d"), sasl.SASLError)
        self.failureResultOf(sasl.PlainMechanism().respond(b"\0\0pw"), UnauthorizedLogin)
        self.failureResultOf(sasl.PlainMechanism().respond(b"\0\xff\0pw"), UnauthorizedLogin)

    def test_overAfterCredentials(self) -> None:
        mechanism = sasl.PlainMechanism()
        self.successResultOf(mechanism.respond(b"\0a@b.test\0pw"))
        self.failureResultOf(mechanism.respond(b"\0a@b.test\0pw"), sasl.SASLError)


class LoginTests(SynchronousTestCase):
    """
    LOGIN: user name, then password.
    """

    def test_exchange(self) -> None:
        mechanism = sasl.LoginMechanism()
        self.assertEqual(self.successResultOf(mechanism.respond(None)).data, b"Username:")
        self.assertEqual(self.successResultOf(mechanism.respond(ALICE.encode())).data, b"Password:")
        credentials = self.successResultOf(mechanism.respond(SECRET))
        self.assertEqual((credentials.username, credentials.password), (ALICE.encode(), SECRET))

    def test_initialResponseIsUser(self) -> None:
        mechanism = sasl.LoginMechanism()
        self.assertEqual(self.successResultOf(mechanism.respond(ALICE.encode())).data, b"Password:")
        self.assertEqual(self.successResultOf(mechanism.respond(SECRET)).username, ALICE.encode())

    def test_badUser(self) -> None:
        """
        A bad user name is noticed only with the password.
        """
        mechanism = sasl.LoginMechanism()
        self.successResultOf(mechanism.respond(b"\xff\xfe"))
        self.failureResultOf(mechanism.respond(SECRET), UnauthorizedLogin)


class CramMD5Tests(SynchronousTestCase):
    """
    CRAM-MD5 (RFC 2195).
    """

    def test_exchange(self) -> None:
        mechanism = sasl.makeMechanism("CRAM-MD5", memoryPortal(), "mx.example.test")
        challenge = self.successResultOf(mechanism.respond(None)).data
        self.assertTrue(challenge.startswith(b"<") and challenge.endswith(b"@mx.example.test>"), challenge)
        digest = hmac.new(SECRET, challenge, hashlib.md5).hexdigest().encode()
        credentials = self.successResultOf(mechanism.respond(ALICE.encode() + b" " + digest))
        self.assertTrue(IUsernameHashedPassword.providedBy(credentials))
        self.assertTrue(credentials.checkPassword(SECRET))
        self.assertFalse(credentials.checkPassword(b"wrong"))

    def test_portal(self) -> None:
        portal = memoryPortal()
        mechanism = sasl.makeMechanism("CRAM-MD5", portal, "mx")
        challenge = self.successResultOf(mechanism.respond(None)).data
        bad = self.successResultOf(mechanism.respond(ALICE.encode() + b" " + b"0" * 32))
        self.failureResultOf(portal.login(bad, None, *MailRealmInterfaces), UnauthorizedLogin)
        mechanism = sasl.makeMechanism("CRAM-MD5", portal, "mx")
        challenge = self.successResultOf(mechanism.respond(None)).data
        digest = hmac.new(SECRET, challenge, hashlib.md5).hexdigest().encode()
        good = self.successResultOf(mechanism.respond(ALICE.encode() + b" " + digest))
        self.successResultOf(portal.login(good, None, *MailRealmInterfaces))

    def test_noInitialResponse(self) -> None:
        self.failureResultOf(sasl.CramMD5Mechanism("mx").respond(b"x"), sasl.SASLError)

    def test_malformed(self) -> None:
        mechanism = sasl.CramMD5Mechanism("mx")
        self.successResultOf(mechanism.respond(None))
        self.failureResultOf(mechanism.respond(b"nodigest "), sasl.SASLError)


# RFC 7677 3: user "user", password "pencil".
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SERVER_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
RFC_SALT = base64.b64decode(b"W22ZaJ0SNY7soEsUEjb6gQ==")


class ScramVectorTests(SynchronousTestCase):
    """
    The RFC 7677 example exchange, byte for byte.
    """

    def mechanism(self) -> sasl.ScramSHA256Mechanism:
        mechanism = sasl.ScramSHA256Mechanism(FixedSource(RFC_SALT, 4096))
        # The server's nonce half is RFC 7677's: patch how it is made.
        self.patch(sasl, "_serverNonce", lambda: RFC_SERVER_NONCE)
        return mechanism

    def test_vector(self) -> None:
        mechanism = self.mechanism()
        challenge = self.successResultOf(mechanism.respond(RFC_CLIENT_FIRST))
        self.assertEqual(challenge.data, RFC_SERVER_FIRST)
        self.assertEqual(mechanism.source.asked, [b"user"])
        credentials = self.successResultOf(mechanism.respond(RFC_CLIENT_FINAL))
        self.assertTrue(ISCRAMSHA256Credentials.providedBy(credentials))
        self.assertIsNone(mechanism.serverFinal())
        secrets = ScramSecrets.fromPassword("pencil", RFC_SALT, 4096)
        self.assertTrue(credentials.checkSecrets(secrets))
        self.assertEqual(mechanism.serverFinal(), RFC_SERVER_FINAL)

    def test_wrongPassword(self) -> None:
        mechanism = self.mechanism()
        self.successResultOf(mechanism.respond(RFC_CLIENT_FIRST))
        credentials = self.successResultOf(mechanism.respond(RFC_CLIENT_FINAL))
        self.assertFalse(credentials.checkSecrets(ScramSecrets.fromPassword("pencil2", RFC_SALT, 4096)))
        self.assertIsNone(mechanism.serverFinal())

    def test_wrongProof(self) -> None:
        mechanism = self.mechanism()
        self.successResultOf(mechanism.respond(RFC_CLIENT_FIRST))
        tampered = RFC_CLIENT_FINAL[:-6] + b"AAAAA="
        credentials = self.successResultOf(mechanism.respond(tampered))
        self.assertFalse(credentials.checkSecrets(ScramSecrets.fromPassword("pencil", RFC_SALT, 4096)))
        short = self.mechanism()
        self.successResultOf(short.respond(RFC_CLIENT_FIRST))
        truncated = RFC_CLIENT_FINAL.split(b",p=")[0] + b",p=" + base64.b64encode(b"short")
        credentials = self.successResultOf(short.respond(truncated))
        self.assertFalse(credentials.checkSecrets(ScramSecrets.fromPassword("pencil", RFC_SALT, 4096)))

    def test_otherSaltRefused(self) -> None:
        """
        Secrets with another salt or count than the ones sent never verify.
        """
        mechanism = self.mechanism()
        self.successResultOf(mechanism.respond(RFC_CLIENT_FIRST))
        credentials = self.successResultOf(mechanism.respond(RFC_CLIENT_FINAL))
        secrets = ScramSecrets.fromPassword("pencil", RFC_SALT, 4096)
        secrets.iterations = 4097
        self.assertFalse(credentials.checkSecrets(secrets))

    def test_nonceMismatch(self) -> None:
        mechanism = self.mechanism()
        self.successResultOf(mechanism.respond(RFC_CLIENT_FIRST))
        self.failureResultOf(mechanism.respond(RFC_CLIENT_FINAL.replace(b"$k0", b"$k1")), UnauthorizedLogin)

    def test_bindingMismatch(self) -> None:
        mechanism = self.mechanism()
        self.successResultOf(mechanism.respond(RFC_CLIENT_FIRST))
        self.failureResultOf(mechanism.respond(RFC_CLIENT_FINAL.replace(b"c=biws", b"c=eSws")), UnauthorizedLogin)


class ScramExchangeTests(SynchronousTestCase):
    """
    SCRAM-SHA-256's state machine: channel binding flags, names, malformed
    messages, and both kinds of checker through a portal.
    """

    def start(self, first: bytes, source: Any = None) -> "defer.Deferred[Any]":
        return sasl.ScramSHA256Mechanism(source).respond(first)

    def test_noInitialResponse(self) -> None:
        mechanism = sasl.ScramSHA256Mechanism()
        self.assertEqual(self.successResultOf(mechanism.respond(None)).data, b"")
        client = ScramClient(ALICE, SECRET)
        challenge = self.successResultOf(mechanism.respond(client.first()))
        self.assertTrue(challenge.data.startswith(b"r=" + client.nonce))

    def test_channelBindingRequested(self) -> None:
        """
        We offer no channel binding: C{p=} fails, C{y} is fine.
        """
        self.failureResultOf(self.start(b"p=tls-unique,,n=a@b.test,r=abc"), UnauthorizedLogin)
        self.successResultOf(self.start(b"y,,n=a@b.test,r=abc"))

    def test_malformedFirst(self) -> None:
        for message in (
            b"", b"n", b"n,", b"x,,n=a@b.test,r=abc", b"n,z=x,n=a@b.test,r=abc", b"n,,m=ext,n=a@b.test,r=abc",
            b"n,,r=abc,n=a@b.test", b"n,,n=a@b.test", b"n,,n=a@b.test,r=", b"n,,n=a@b.test,r=a\x7fb",
            b"n,,n=a=2Xb@b.test,r=abc",
        ):
            self.failureResultOf(self.start(message), sasl.SASLError)

    def test_badNames(self) -> None:
        self.failureResultOf(self.start(b"n,,n=,r=abc"), UnauthorizedLogin)
        self.failureResultOf(self.start(b"n,,n=\xff,r=abc"), UnauthorizedLogin)
        self.failureResultOf(self.start(b"n,a=bob@example.test,n=" + ALICE.encode() + b",r=abc"), UnauthorizedLogin)
        self.successResultOf(self.start(b"n,a=" + ALICE.upper().encode() + b",n=" + ALICE.encode() + b",r=abc"))

    def test_escapedName(self) -> None:
        source = FixedSource(b"salt", 4096)
        self.successResultOf(self.start(b"n,,n=we=2Cird=3Dname@b.test,r=abc", source))
        self.assertEqual(source.asked, [b"we,ird=name@b.test"])

    def test_malformedFinal(self) -> None:
        client = ScramClient(ALICE, SECRET)
        for message in (b"", b"c=biws", b"p=abc", b"r=x,c=biws,p=AAAA", b"c=!!,r=x,p=AAAA", b"c=biws,r=x,p=!!"):
            mechanism = sasl.ScramSHA256Mechanism()
            self.successResultOf(mechanism.respond(client.first()))
            self.failureResultOf(mechanism.respond(message), sasl.SASLError)

    def test_memoryChecker(self) -> None:
        """
        With a checker holding plain secrets the salt is made up and the
        credentials are checked as hashed passwords.
        """
        portal = memoryPortal()
        client = ScramClient(ALICE, SECRET)
        mechanism = sasl.makeMechanism("SCRAM-SHA-256", portal, "mx")
        serverFirst = self.successResultOf(mechanism.respond(client.first())).data
        credentials = self.successResultOf(mechanism.respond(client.final(serverFirst)))
        self.assertIsInstance(credentials, HashedSCRAMCredentials)
        self.assertFalse(ISCRAMSHA256Credentials.providedBy(credentials))
        self.successResultOf(portal.login(credentials, None, *MailRealmInterfaces))
        self.assertEqual(mechanism.serverFinal(), client.serverSignature)

    def test_memoryCheckerWrongPassword(self) -> None:
        portal = memoryPortal()
        client = ScramClient(ALICE, SECRET)
        mechanism = sasl.makeMechanism("SCRAM-SHA-256", portal, "mx")
        serverFirst = self.successResultOf(mechanism.respond(client.first())).data
        credentials = self.successResultOf(mechanism.respond(client.final(serverFirst, b"wrong")))
        self.failureResultOf(portal.login(credentials, None, *MailRealmInterfaces), UnauthorizedLogin)
        self.assertIsNone(mechanism.serverFinal())


class PasswordFileScramTests(TestCase):
    """
    SCRAM-SHA-256 against mailplat's own password file.
    """

    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp())
        self.passwords = PasswordFile(self.path)
        self.passwords.setPassword(ALICE, SECRET.decode())
        self.checker = PasswordFileChecker(self.passwords)
        self.portal = Portal(MailRealm(MemoryStore()), [self.checker])

    def exchange(self, client: ScramClient, password: Optional[bytes] = None) -> Tuple[Any, sasl.Mechanism, bytes]:
        mechanism = sasl.makeMechanism("SCRAM-SHA-256", self.portal, "mx")
        serverFirst = self.successResultOf(mechanism.respond(client.first())).data
        credentials = self.successResultOf(mechanism.respond(client.final(serverFirst, password)))
        return credentials, mechanism, serverFirst

    def test_login(self) -> None:
        client = ScramClient(ALICE, SECRET)
        credentials, mechanism, serverFirst = self.exchange(client)
        secrets = self.passwords.scramFor(ALICE)
        self.assertIn(b",s=" + base64.b64encode(secrets.salt) + b",i=4096", serverFirst)
        self.assertIsInstance(credentials, SCRAMCredentials)
        _, avatar, _ = self.successResultOf(self.portal.login(credentials, None, *MailRealmInterfaces))
        self.assertEqual(avatar.address, ALICE)
        self.assertEqual(mechanism.serverFinal(), client.serverSignature)

    def test_wrongPassword(self) -> None:
        credentials, mechanism, _ = self.exchange(ScramClient(ALICE, SECRET), b"wrong")
        self.failureResultOf(self.portal.login(credentials, None, *MailRealmInterfaces), UnauthorizedLogin)
        self.assertIsNone(mechanism.serverFinal())

    def test_unknownUser(self) -> None:
        """
        An unknown user gets a made-up salt, the same each time, and fails.
        """
        client = ScramClient("nobody@example.test", SECRET)
        credentials, _, first1 = self.exchange(client)
        _, _, first2 = self.exchange(ScramClient("nobody@example.test", SECRET))
        self.assertEqual(first1.split(b",", 1)[1], first2.split(b",", 1)[1])
        self.failureResultOf(self.portal.login(credentials, None, *MailRealmInterfaces), UnauthorizedLogin)

    def test_oldLineWithoutSecrets(self) -> None:
        """
        A line written before SCRAM secrets were kept still logs in with a
        password, but not with SCRAM, until the password is set again.
        """
        hashed = self.passwords.hashFor(ALICE)
        with open(self.path, "w") as f:
            f.write(f"{ALICE}:{hashed}\n")
        self.assertIsNone(self.passwords.scramFor(ALICE))
        credentials, _, _ = self.exchange(ScramClient(ALICE, SECRET))
        self.failureResultOf(self.portal.login(credentials, None, *MailRealmInterfaces), UnauthorizedLogin)
        self.passwords.setPassword(ALICE, SECRET.decode())
        credentials, _, _ = self.exchange(ScramClient(ALICE, SECRET))
        self.successResultOf(self.portal.login(credentials, None, *MailRealmInterfaces))


class SecretsTests(SynchronousTestCase):
    """
    L{ScramSecrets} and SASLprep.
    """

    def test_rfc7677Keys(self) -> None:
        """
        The stored form round-trips and is RFC 5803's.
        """
        secrets = ScramSecrets.fromPassword("pencil", RFC_SALT, 4096)
        text = secrets.format()
        self.assertTrue(text.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"), text)
        self.assertEqual(ScramSecrets.parse(text), secrets)

    def test_parseErrors(self) -> None:
        good = ScramSecrets.fromPassword("pw").format()
        for bad in (
            "", "SCRAM-SHA-1$4096:c2FsdA==$a:b", good.replace("$4096", "$x"), good.replace("$4096", "$0"),
            good.replace("$4096", "$99999999"), good.split("$")[0] + "$4096:!!$a:b", good.rsplit(":", 1)[0],
            "SCRAM-SHA-256$4096:c2FsdA==$c2hvcnQ=:c2hvcnQ=",
        ):
            self.assertRaises(ValueError, ScramSecrets.parse, bad)

    def test_saslprep(self) -> None:
        """
        RFC 4013 3's examples.
        """
        self.assertEqual(saslprep("I\u00adX"), "IX")
        self.assertEqual(saslprep("user"), "user")
        self.assertEqual(saslprep("USER"), "USER")
        self.assertEqual(saslprep("\u00aa"), "a")
        self.assertEqual(saslprep("\u2168"), "IX")
        self.assertEqual(saslprep("a\u00a0b"), "a b")
        self.assertRaises(ValueError, saslprep, "\u0007")
        self.assertRaises(ValueError, saslprep, "\u0627\u0031")

    def test_unpreparablePasswordUsedAsIs(self) -> None:
        """
        A password SASLprep refuses still makes secrets (from its raw
        UTF-8), as PostgreSQL does.
        """
        raw = ScramSecrets.fromPassword("bell\u0007", b"salt", 4096)
        again = ScramSecrets.fromPassword(b"bell\x07", b"salt", 4096)
        self.assertEqual(raw, again)


class TempDirTests(SynchronousTestCase):
    """
    The password file keeps SCRAM secrets next to the argon2 hash.
    """

    def test_lineFormat(self) -> None:
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "passwd")
            PasswordFile(path).setPassword(ALICE, "pw")
            with open(path) as f:
                line = f.read().strip()
            address, hashed, scram = line.split(":", 2)
            self.assertEqual(address, ALICE)
            self.assertTrue(hashed.startswith("$argon2id$"))
            self.assertTrue(scram.startswith("SCRAM-SHA-256$4096:"))
            self.assertEqual(ScramSecrets.parse(scram), PasswordFile(path).scramFor(ALICE))


class RealClientTests(TestCase):
    """
    End to end, with Python's own clients against a real server on
    loopback: smtplib's PLAIN, LOGIN and CRAM-MD5, and imaplib's
    AUTHENTICATE driven by a hand-written SCRAM-SHA-256 client.
    """

    PASSWORD = "correct horse battery"

    @defer.inlineCallbacks
    def serve(self, auth: Tuple[str, ...] = ("mailplat",)) -> Any:
        from tests.e2e.server import LoopbackServer

        server = LoopbackServer(os.path.abspath(self.mktemp()), store="maildir", auth=auth).start()
        self.addCleanup(server.stop)
        for checker in set(server.server.portal.checkers.values()):
            # What mailplat.plugins.makeCheckers should do for memory:.
            bytesUsernames(checker)
        if auth == ("mailplat",):
            yield server.addUser(ALICE, self.PASSWORD)
        return server

    def smtp(self, server: Any, mechanism: str) -> "defer.Deferred[Tuple[int, bytes]]":
        import smtplib

        def go() -> Tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
                s.ehlo()
                s.user, s.password = ALICE, self.PASSWORD
                method = {"PLAIN": s.auth_plain, "LOGIN": s.auth_login, "CRAM-MD5": s.auth_cram_md5}[mechanism]
                return s.auth(mechanism, method, initial_response_ok=(mechanism != "LOGIN"))

        return threads.deferToThread(go)

    def imapScram(self, server: Any, password: str) -> "defer.Deferred[Tuple[str, bytes]]":
        import imaplib

        client = ScramClient(ALICE, password.encode())
        steps: list = []

        def answer(challenge: bytes) -> bytes:
            steps.append(challenge)
            if len(steps) == 1:
                return client.first()
            if len(steps) == 2:
                return client.final(challenge)
            if challenge != client.serverSignature:
                raise AssertionError("wrong server signature")
            return b""

        def go() -> Tuple[str, bytes]:
            i = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
            try:
                typ, data = i.authenticate("SCRAM-SHA-256", answer)
                return typ, data[0]
            finally:
                i.shutdown()

        return threads.deferToThread(go)

    @defer.inlineCallbacks
    def test_smtplibPasswordFile(self) -> Any:
        server = yield self.serve()
        for mechanism in ("PLAIN", "LOGIN"):
            code, _ = yield self.smtp(server, mechanism)
            self.assertEqual(code, 235)

    @defer.inlineCallbacks
    def test_smtplibCramMD5Memory(self) -> Any:
        server = yield self.serve(auth=(f"memory:{ALICE}:{self.PASSWORD}",))
        code, _ = yield self.smtp(server, "CRAM-MD5")
        self.assertEqual(code, 235)

    @defer.inlineCallbacks
    def test_imaplibScramPasswordFile(self) -> Any:
        server = yield self.serve()
        typ, text = yield self.imapScram(server, self.PASSWORD)
        self.assertEqual(typ, "OK")
        self.assertIn(b"Logged in", text)

    @defer.inlineCallbacks
    def test_imaplibScramWrongPassword(self) -> Any:
        import imaplib

        server = yield self.serve()
        yield self.assertFailure(self.imapScram(server, "wrong"), imaplib.IMAP4.error)

    @defer.inlineCallbacks
    def test_imaplibScramMemory(self) -> Any:
        server = yield self.serve(auth=(f"memory:{ALICE}:{self.PASSWORD}",))
        typ, _ = yield self.imapScram(server, self.PASSWORD)
        self.assertEqual(typ, "OK")


class CompatTests(SynchronousTestCase):
    """
    L{bytesUsernames}: Twisted's strcred C{memory:} checker made to match
    the bytes names protocols send.
    """

    def test_memory(self) -> None:
        from mailplat.plugins import makeCheckers

        (checker,) = makeCheckers([f"memory:{ALICE}:pw"], self.mktemp())
        self.assertIs(bytesUsernames(checker), checker)
        self.assertEqual(checker.users, {ALICE.encode(): b"pw"})
        other = PlainOnlyChecker()
        self.assertIs(bytesUsernames(other), other)
