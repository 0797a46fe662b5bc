"""
STARTTLS over a real loopback socket: Python's imaplib upgrades the
connection with a certificate made for the test, verifies it, and logs in.
"""

import datetime
import imaplib
import ipaddress
import ssl
from typing import Any, List, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, reactor, ssl as tssl, threads
from twisted.trial.unittest import TestCase

from mailplat.auth.realm import MailRealm
from mailplat.imap.server import IMAPFactory
from mailplat.store.memory import MemoryStore


def selfSigned() -> Tuple[bytes, bytes]:
    """
    A self-signed certificate for 127.0.0.1 and its key, both PEM.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    keyPem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), keyPem


class RealSocketStartTLSTests(TestCase):
    """
    The server's STARTTLS with a real TLS stack on both ends.
    """

    @defer.inlineCallbacks
    def test_imaplibStarttls(self) -> Any:
        certPem, keyPem = selfSigned()
        store = MemoryStore()
        yield store.getAccount("alice@example.test", create=True)
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(b"alice@example.test", b"secret")
        portal = Portal(MailRealm(store), [checker])
        options = tssl.PrivateCertificate.loadPEM(certPem + keyPem).options()
        factory = IMAPFactory(portal, "mail.example.test", contextFactory=options)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        def client() -> List[Any]:
            context = ssl.create_default_context(cadata=certPem.decode("ascii"))
            conn = imaplib.IMAP4("127.0.0.1", number, timeout=20)
            try:
                before = set(conn.capabilities)
                typ, _ = conn.starttls(context)
                after = set(conn.capabilities)
                encrypted = conn.sock.version()
                login = conn.login("alice@example.test", "secret")[0]
                select = conn.select("INBOX")[0]
            finally:
                conn.logout()
            return [before, typ, after, encrypted, login, select]

        before, typ, after, encrypted, login, select = yield threads.deferToThread(client)
        self.assertIn("STARTTLS", before)
        self.assertEqual(typ, "OK")
        self.assertNotIn("STARTTLS", after)
        self.assertIn("AUTH=PLAIN", after)
        self.assertTrue(encrypted.startswith("TLS"), encrypted)
        self.assertEqual((login, select), ("OK", "OK"))
