"""
Tests for L{mailplat.config} and the server's option handling.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from mailplat.config import DEFAULT_LISTENERS, Config, loadFile
from mailplat.errors import ConfigError
from mailplat.service import ServerOptions


class LoadFileTests(SynchronousTestCase):
    """
    Reading the TOML file: values, and one clear error for each mistake.
    """

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def assertConfigError(self, text: str, *fragments: str) -> None:
        path = self.write(text)
        error = self.assertRaises(ConfigError, loadFile, path)
        message = str(error)
        self.assertIn(path, message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertNotIn("\n", message)

    def test_sample(self) -> None:
        """
        The shipped sample loads, and its values are the defaults.
        """
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        config = loadFile(os.path.join(here, "etc", "mailplat.toml"))
        defaults = Config()
        self.assertEqual(config.listeners, DEFAULT_LISTENERS)
        self.assertEqual(config.store, defaults.store)
        self.assertEqual(config.auth, defaults.auth)
        self.assertEqual(config.maxMessageSize, defaults.maxMessageSize)
        self.assertEqual(config.dataDir, os.path.join(here, "etc", "..", "data"))

    def test_values(self) -> None:
        path = self.write(
            '[server]\nhostname = "Mail.Example.TEST."\ndomains = ["Example.test", "b.test"]\n'
            'store = "memory"\nauth = ["memory:a@b.test:pw"]\ndata_dir = "/srv/mail"\n'
            '[listen]\nimap = "tcp:1430"\npop3 = "none"\n[limits]\nmax_message_size = 1000\nimap_timeout = 60\n'
        )
        config = loadFile(path)
        self.assertEqual(config.hostname, "mail.example.test")
        self.assertEqual(config.domains, ("example.test", "b.test"))
        self.assertEqual(config.store, "memory")
        self.assertEqual(config.auth, ("memory:a@b.test:pw",))
        self.assertEqual(config.dataDir, "/srv/mail")
        self.assertEqual(config.listeners["imap"], "tcp:1430")
        self.assertEqual(config.listeners["pop3"], "none")
        self.assertEqual(config.listeners["smtp"], DEFAULT_LISTENERS["smtp"])
        self.assertEqual(config.maxMessageSize, 1000)
        self.assertEqual(config.imapTimeout, 60.0)

    def test_missing(self) -> None:
        error = self.assertRaises(ConfigError, loadFile, "/nonexistent/mailplat.toml")
        self.assertIn("/nonexistent/mailplat.toml", str(error))
        self.assertIn("not found", str(error))

    def test_notToml(self) -> None:
        self.assertConfigError("[server\n", "not valid TOML")

    def test_unknownSection(self) -> None:
        self.assertConfigError("[serve]\nhostname='x'\n", "[serve]")

    def test_unknownKey(self) -> None:
        self.assertConfigError("[server]\nhostnam = 'x'\n", "server.hostnam")

    def test_badEndpoint(self) -> None:
        self.assertConfigError("[listen]\nsmtp = 'tcp:notaport'\n", "listen.smtp", "tcp:notaport")

    def test_badNumber(self) -> None:
        self.assertConfigError("[limits]\nmax_message_size = -5\n", "limits.max_message_size")
        self.assertConfigError("[limits]\nsmtp_timeout = 'soon'\n", "limits.smtp_timeout")
        self.assertConfigError("[limits]\nmax_message_size = 1.5\n", "limits.max_message_size")

    def test_badDomain(self) -> None:
        self.assertConfigError("[server]\ndomains = ['ex ample.test']\n", "server.domains")
        self.assertConfigError("[server]\ndomains = 'a..b'\n", "server.domains")

    def test_badType(self) -> None:
        self.assertConfigError("server = 3\n", "server")
        self.assertConfigError("[server]\nauth = [1]\n", "server.auth")


class ServerOptionsTests(SynchronousTestCase):
    """
    C{twistd mailplat} options win over the file.
    """

    def test_commandLineWins(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[server]\nhostname = "file.test"\nstore = "memory"\n[listen]\nimap = "tcp:1430"\n')
        options = ServerOptions()
        options.parseOptions(
            ["--config", path, "--hostname", "cli.test", "--imap", "tcp:1431", "--domain", "a.test",
             "--domain", "B.test", "--auth", "memory:x@a.test:p", "--data-dir", "/tmp/x"]
        )
        config = options.resolveConfig()
        self.assertEqual(config.hostname, "cli.test")
        self.assertEqual(config.listeners["imap"], "tcp:1431")
        self.assertEqual(config.store, "memory")
        self.assertEqual(config.domains, ("a.test", "b.test"))
        self.assertEqual(config.auth, ("memory:x@a.test:p",))
        self.assertEqual(config.dataDir, "/tmp/x")

    def test_badOptionIsOneLine(self) -> None:
        """
        An unknown option stops with one line, not a usage dump.
        """
        error = self.assertRaises(SystemExit, ServerOptions().parseOptions, ["--imapp", "x"])
        self.assertIn("imapp", str(error.code))
        self.assertNotIn("\n", str(error.code))

    def test_badEndpointOption(self) -> None:
        options = ServerOptions()
        options.parseOptions(["--smtp", "tcp:nope"])
        error = self.assertRaises(ConfigError, options.resolveConfig)
        self.assertIn("--smtp", str(error))
