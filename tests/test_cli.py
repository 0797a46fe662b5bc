"""
Tests for the C{mailplat} admin command's wiring to stores and checkers.
"""

import io
import os
import sys

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.trial.unittest import TestCase

from mailplat.admin.cli import AdminOptions, run
from mailplat.plugins import makeCheckers


class SQLUserTests(TestCase):
    """
    With a SQL store, C{user add/passwd/del} also keep the user in the
    store's users table, which C{--auth sql} checks.
    """

    def runCommand(self, argv, stdin=""):
        options = AdminOptions()
        options.parseOptions(["--data-dir", self.dataDir, "--store", "sql"] + argv)
        config = options.resolveConfig()
        self.assertEqual(config.store, "sql")
        out = io.StringIO()
        # The command reads the password once the store has answered, so
        # standard input stays replaced until it is done.
        saved, sys.stdin = sys.stdin, io.StringIO(stdin)

        def restore(result):
            sys.stdin = saved
            return result

        d = run(options, config, out).addBoth(restore)
        return d.addCallback(lambda _: out.getvalue())

    def setUp(self):
        self.dataDir = os.path.abspath(self.mktemp())
        os.makedirs(self.dataDir)

    async def login(self, password: bytes):
        checker = makeCheckers(["sql"], self.dataDir)[0]
        return await checker.requestAvatarId(UsernamePassword(b"alice@example.test", password))

    async def test_addPasswdDel(self):
        self.assertIn("added", await self.runCommand(["user", "add", "alice@example.test", "--password-stdin"], "first\n"))
        self.assertEqual(await self.login(b"first"), b"alice@example.test")
        await self.runCommand(["user", "passwd", "alice@example.test", "--password-stdin"], "second\n")
        self.assertEqual(await self.login(b"second"), b"alice@example.test")
        with self.assertRaises(UnauthorizedLogin):
            await self.login(b"first")
        await self.runCommand(["user", "del", "alice@example.test"])
        with self.assertRaises(UnauthorizedLogin):
            await self.login(b"second")
