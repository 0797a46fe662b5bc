"""
Tests for L{mailplat.auth.passwd}: mailplat's own argon2 checker.
"""

import os
import stat

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject
from twisted.cred.checkers import ICredentialsChecker

from mailplat.auth.passwd import PasswordFile, PasswordFileChecker, PasswordFileCheckerFactory
from mailplat.errors import ConfigError
from mailplat.plugins import checkerFactories


class PasswordFileTests(TestCase):
    """
    The file of hashes.
    """

    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp(), "passwd")
        self.passwords = PasswordFile(self.path)

    def test_setAndRead(self) -> None:
        self.passwords.setPassword("Alice@Example.TEST", "secret")
        self.assertEqual(list(self.passwords.users()), ["alice@example.test"])
        hashed = self.passwords.hashFor("alice@example.test")
        self.assertTrue(hashed.startswith("$argon2id$"))
        self.assertNotIn("secret", open(self.path).read())
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_otherWriterSeen(self) -> None:
        """
        A change made through another instance (the admin command) is seen
        without a restart.
        """
        self.assertIsNone(self.passwords.hashFor("bob@example.test"))
        PasswordFile(self.path).setPassword("bob@example.test", "pw")
        self.assertIsNotNone(self.passwords.hashFor("bob@example.test"))

    def test_remove(self) -> None:
        self.passwords.setPassword("a@b.test", "x")
        self.assertTrue(self.passwords.remove("A@B.test"))
        self.assertFalse(self.passwords.remove("a@b.test"))
        self.assertEqual(self.passwords.users(), {})

    def test_corruptLine(self) -> None:
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "w") as f:
            f.write("alice@example.test:plaintext\n")
        error = self.assertRaises(ConfigError, self.passwords.users)
        self.assertIn(self.path, str(error))
        self.assertIn("line 1", str(error))


class CheckerTests(TestCase):
    """
    The checker, through real argon2 verification in a thread.
    """

    def setUp(self) -> None:
        path = os.path.join(self.mktemp(), "passwd")
        PasswordFile(path).setPassword("alice@example.test", "correct horse")
        self.checker = PasswordFileCheckerFactory().generateChecker(path)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(ICredentialsChecker, self.checker))
        self.assertIsInstance(self.checker, PasswordFileChecker)

    def test_plugin(self) -> None:
        """
        The checker is found by name among the installed plugins, beside
        Twisted's own.
        """
        factories = checkerFactories()
        self.assertIsInstance(factories["mailplat"], PasswordFileCheckerFactory)
        self.assertIn("memory", factories)

    async def test_right(self) -> None:
        avatarId = await self.checker.requestAvatarId(UsernamePassword(b"Alice@example.test", b"correct horse"))
        self.assertEqual(avatarId, b"alice@example.test")

    async def test_wrongPassword(self) -> None:
        with self.assertRaises(UnauthorizedLogin):
            await self.checker.requestAvatarId(UsernamePassword(b"alice@example.test", b"wrong"))

    async def test_unknownUser(self) -> None:
        with self.assertRaises(UnauthorizedLogin):
            await self.checker.requestAvatarId(UsernamePassword(b"mallory@example.test", b"correct horse"))
