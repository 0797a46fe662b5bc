"""
Tests for the cred wiring: L{mailplat.auth.realm}, APOP credentials, and
finding stores and checkers by plugin name.
"""

import hashlib

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailplat.auth.credentials import APOPCredentials
from mailplat.auth.realm import MailRealm
from mailplat.errors import ConfigError
from mailplat.interfaces import IAccount
from mailplat.plugins import makeCheckers, makeStore, storeFactories
from mailplat.store.memory import MemoryStore


class RealmTests(SynchronousTestCase):
    """
    The realm through a real portal.
    """

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.portal = Portal(MailRealm(self.store), [InMemoryUsernamePasswordDatabaseDontUse(**{"alice@example.test": b"pw"})])

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IRealm, MailRealm(self.store)))

    def test_accountMadeAtFirstLogin(self) -> None:
        iface, account, logout = self.successResultOf(
            self.portal.login(UsernamePassword(b"alice@example.test", b"pw"), None, IAccount)
        )
        self.assertIs(iface, IAccount)
        self.assertEqual(account.address, "alice@example.test")
        self.assertTrue(self.successResultOf(self.store.hasAccount("alice@example.test")))
        logout()

    def test_wrongPassword(self) -> None:
        self.failureResultOf(self.portal.login(UsernamePassword(b"alice@example.test", b"no"), None, IAccount), UnauthorizedLogin)
        self.assertFalse(self.successResultOf(self.store.hasAccount("alice@example.test")))

    def test_otherInterface(self) -> None:
        from zope.interface import Interface

        class IOther(Interface):
            pass

        self.assertRaises(NotImplementedError, MailRealm(self.store).requestAvatar, b"x", None, IOther)

    def test_apop(self) -> None:
        """
        A checker holding the secret verifies an APOP digest; a wrong digest
        fails.
        """
        challenge = b"<1896.697170952@dbc.mtview.ca.us>"
        good = hashlib.md5(challenge + b"pw").hexdigest().encode()
        self.successResultOf(self.portal.login(APOPCredentials(b"alice@example.test", challenge, good), None, IAccount))
        self.failureResultOf(
            self.portal.login(APOPCredentials(b"alice@example.test", challenge, b"0" * 32), None, IAccount), UnauthorizedLogin
        )


class PluginLookupTests(SynchronousTestCase):
    """
    Stores and checkers by name, and clear errors for wrong names.
    """

    def test_shippedStores(self) -> None:
        self.assertTrue({"maildir", "memory"} <= set(storeFactories()))

    def test_makeStore(self) -> None:
        self.assertIsInstance(makeStore("memory", self.mktemp()), MemoryStore)

    def test_unknownStore(self) -> None:
        error = self.assertRaises(ConfigError, makeStore, "nosuch:x", self.mktemp(), "etc/m.toml: server.store")
        self.assertIn("etc/m.toml: server.store", str(error))
        self.assertIn("nosuch", str(error))
        self.assertIn("maildir", str(error))

    def test_badStoreArgs(self) -> None:
        error = self.assertRaises(ConfigError, makeStore, "memory:extra", self.mktemp())
        self.assertIn("memory", str(error))

    def test_checkers(self) -> None:
        checkers = makeCheckers(["mailplat", "memory:a@b.test:pw"], self.mktemp())
        self.assertEqual(len(checkers), 2)

    def test_unknownChecker(self) -> None:
        error = self.assertRaises(ConfigError, makeCheckers, ["ldapp:x"], self.mktemp())
        self.assertIn("ldapp", str(error))


class SMTPAvatarTests(SynchronousTestCase):
    """
    The realm gives SMTP an L{ISMTPAvatar} with the normalised address.
    """

    def test_smtpAvatar(self) -> None:
        from mailplat.interfaces import ISMTPAvatar

        store = MemoryStore()
        portal = Portal(MailRealm(store), [InMemoryUsernamePasswordDatabaseDontUse(**{"Alice@Example.TEST": b"pw"})])
        iface, avatar, logout = self.successResultOf(
            portal.login(UsernamePassword(b"Alice@Example.TEST", b"pw"), None, ISMTPAvatar)
        )
        self.assertIs(iface, ISMTPAvatar)
        verifyObject(ISMTPAvatar, avatar)
        self.assertEqual(avatar.address, "alice@example.test")
        logout()
        # An SMTP login makes no mail storage.
        self.assertFalse(self.successResultOf(store.hasAccount("alice@example.test")))

    def test_unknownInterface(self) -> None:
        from zope.interface import Interface

        class IOther(Interface):
            pass

        self.assertRaises(NotImplementedError, MailRealm(MemoryStore()).requestAvatar, b"a@b.test", None, IOther)


class CramMD5Tests(SynchronousTestCase):
    """
    L{CramMD5Credentials} (RFC 2195).
    """

    def test_check(self) -> None:
        import hmac

        from mailplat.auth.credentials import CramMD5Credentials

        challenge = b"<1896.697170952@postoffice.reston.mci.net>"
        # RFC 2195's example: user tim, secret tanstaaftanstaaf.
        creds = CramMD5Credentials(b"tim", challenge, b"b913a602c7eda7a495b4e6e7334d3890")
        self.assertTrue(creds.checkPassword(b"tanstaaftanstaaf"))
        self.assertTrue(creds.checkPassword("tanstaaftanstaaf"))
        self.assertFalse(creds.checkPassword(b"wrong"))
        digest = hmac.new(b"pw", b"x", hashlib.md5).hexdigest().upper().encode()
        self.assertTrue(CramMD5Credentials(b"u", b"x", digest).checkPassword(b"pw"))

    def test_throughPortal(self) -> None:
        import hmac

        from mailplat.auth.credentials import CramMD5Credentials
        from mailplat.interfaces import ISMTPAvatar

        portal = Portal(MailRealm(MemoryStore()), [InMemoryUsernamePasswordDatabaseDontUse(**{"a@b.test": b"pw"})])
        good = hmac.new(b"pw", b"<c>", hashlib.md5).hexdigest().encode()
        _, avatar, _ = self.successResultOf(portal.login(CramMD5Credentials(b"a@b.test", b"<c>", good), None, ISMTPAvatar))
        self.assertEqual(avatar.address, "a@b.test")
        self.failureResultOf(portal.login(CramMD5Credentials(b"a@b.test", b"<c>", b"00"), None, ISMTPAvatar), UnauthorizedLogin)


class StartupCheckTests(SynchronousTestCase):
    """
    L{mailplat.auth.startup}: a broken DKIM key, a bad TLS file and a data
    directory the run-as user cannot write stop the start with one line.
    """

    def setUp(self) -> None:
        import os

        self.dataDir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.dataDir, "dkim"))

    def test_goodDKIMKey(self) -> None:
        from mailplat.auth.startup import checkDKIMKeys
        from mailplat.policy.dkim import keygen

        keygen("example.test", "mail", self.dataDir, bits=1024)
        self.assertEqual(checkDKIMKeys(self.dataDir), 1)

    def test_badDKIMKey(self) -> None:
        import os

        from mailplat.auth.startup import checkDKIMKeys
        from mailplat.errors import ConfigError

        path = os.path.join(self.dataDir, "dkim", "example.test.mail.key")
        with open(path, "wb") as f:
            f.write(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
        error = self.assertRaises(ConfigError, checkDKIMKeys, self.dataDir)
        self.assertIn(repr(path), str(error))
        self.assertNotIn("\n", str(error))

    def test_noDKIMDirectory(self) -> None:
        from mailplat.auth.startup import checkDKIMKeys

        self.assertEqual(checkDKIMKeys(self.mktemp()), 0)

    def test_badTLSFile(self) -> None:
        import os
        from dataclasses import replace

        from mailplat.auth.startup import startupChecks
        from mailplat.config import Config
        from mailplat.errors import ConfigError

        cert = os.path.join(self.dataDir, "cert.pem")
        with open(cert, "w") as f:
            f.write("not a certificate\n")
        config = replace(Config(dataDir=self.dataDir), tlsCert=cert, tlsKey=cert)
        error = self.assertRaises(ConfigError, startupChecks, config)
        self.assertIn(repr(cert), str(error))
        self.assertNotIn("\n", str(error))

    def test_dataDirNotWritable(self) -> None:
        """
        A data directory (or an entry in it) owned by another user and not
        group- or world-writable is refused, naming it and the user.
        """
        import os

        from mailplat.auth.startup import checkDataDirFor
        from mailplat.errors import ConfigError

        uid = 65534 if os.getuid() != 65534 else 65533
        os.chmod(self.dataDir, 0o755)
        error = self.assertRaises(ConfigError, checkDataDirFor, self.dataDir, uid, uid)
        self.assertIn(repr(self.dataDir), str(error))
        self.assertIn(f"uid {uid}", str(error))
        os.chmod(self.dataDir, 0o777)
        os.chmod(os.path.join(self.dataDir, "dkim"), 0o700)
        error = self.assertRaises(ConfigError, checkDataDirFor, self.dataDir, uid, uid)
        self.assertIn("'dkim'", str(error))
        os.chmod(os.path.join(self.dataDir, "dkim"), 0o777)
        checkDataDirFor(self.dataDir, uid, uid)
        checkDataDirFor(self.dataDir, None)
        checkDataDirFor(self.dataDir, os.getuid())

    def test_runAs(self) -> None:
        """
        Inside L{runAs} files are made as the user; root again after.
        """
        import os

        from twisted.trial.unittest import SkipTest

        from mailplat.auth.startup import runAs

        if os.geteuid() != 0:
            raise SkipTest("needs root")
        import shutil
        import tempfile

        # Under /tmp: every directory above must be searchable by the user.
        top = tempfile.mkdtemp(prefix="mailplat-runas-")
        self.addCleanup(shutil.rmtree, top, True)
        os.chmod(top, 0o777)
        with runAs(65534, 65534):
            self.assertEqual((os.geteuid(), os.getegid()), (65534, 65534))
            with open(os.path.join(top, "made"), "w"):
                pass
        self.assertEqual(os.geteuid(), 0)
        self.assertEqual(os.stat(os.path.join(top, "made")).st_uid, 65534)
        with runAs(None):
            self.assertEqual(os.geteuid(), 0)
