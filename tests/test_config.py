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

    def test_sampleDocumentsEveryKey(self) -> None:
        """
        Every key the config file takes appears in etc/mailplat.toml, in its
        section (set to its default or commented out with an example).
        """
        import re

        from mailplat.config import _SCHEMA

        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(here, "etc", "mailplat.toml")) as f:
            text = f.read()
        sections = dict(re.findall(r"^\[(\w+)\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S))
        missing = [
            f"{table}.{key}"
            for table, keys in _SCHEMA.items()
            for key in keys
            if not re.search(rf"^#? ?{key} =", sections.get(table, ""), re.M)
        ]
        self.assertEqual(missing, [])

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

    def test_keyOutsideSection(self) -> None:
        """
        A key written before any section header is named as such, with the
        section it belongs in when there is one.
        """
        self.assertConfigError("hostname = 'x'\n[server]\n", "key 'hostname' is outside any section", "[server]")
        self.assertConfigError("colour = 'x'\n", "key 'colour' is outside any section", "[listen]")

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


class WorkersAndMetricsConfigTests(SynchronousTestCase):
    """
    C{[server] workers} / C{--workers} and C{[listen] metrics} / C{--metrics}.
    """

    def test_defaults(self) -> None:
        config = Config()
        self.assertIsNone(config.workers)
        self.assertEqual(config.metricsListener, "none")
        self.assertNotIn("metrics", config.listeners)

    def test_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[server]\nworkers = 3\n[listen]\nmetrics = "tcp:9100:interface=127.0.0.1"\n')
        config = loadFile(path)
        self.assertEqual(config.workers, 3)
        self.assertEqual(config.metricsListener, "tcp:9100:interface=127.0.0.1")
        self.assertNotIn("metrics", config.listeners)

    def test_fileErrors(self) -> None:
        for text, key in [("[server]\nworkers = 0\n", "server.workers"), ("[server]\nworkers = 'x'\n", "server.workers"),
                          ("[listen]\nmetrics = 'tcp:nope'\n", "listen.metrics")]:
            path = self.mktemp()
            with open(path, "w") as f:
                f.write(text)
            error = self.assertRaises(ConfigError, loadFile, path)
            self.assertIn(key, str(error))

    def test_options(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[server]\nworkers = 3\n")
        options = ServerOptions()
        options.parseOptions(["--config", path, "--workers", "1", "--metrics", "tcp:9101:interface=127.0.0.1"])
        config = options.resolveConfig()
        self.assertEqual(config.workers, 1)
        self.assertEqual(config.metricsListener, "tcp:9101:interface=127.0.0.1")

    def test_badOptions(self) -> None:
        for args, name in [(["--workers", "two"], "--workers"), (["--workers", "0"], "--workers"),
                           (["--metrics", "tcp:nope"], "--metrics")]:
            options = ServerOptions()
            options.parseOptions(args)
            error = self.assertRaises(ConfigError, options.resolveConfig)
            self.assertIn(name, str(error))


class TLSConfigTests(SynchronousTestCase):
    """
    C{[tls]}, C{[auth]}, the TLS listeners and their options.
    """

    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self) -> None:
        config = Config()
        self.assertIsNone(config.tlsCert)
        self.assertEqual(config.tlsSNI, {})
        self.assertFalse(config.allowPlaintext)
        self.assertEqual(config.listeners["submission"], "tcp:2587:interface=127.0.0.1")
        self.assertEqual(config.listeners["smtps"], "tcp:2465:interface=127.0.0.1")
        self.assertEqual(config.listeners["pop3s"], "tcp:1995:interface=127.0.0.1")
        self.assertEqual(config.listeners["imaps"], "tcp:1993:interface=127.0.0.1")

    def test_values(self) -> None:
        """
        Paths are relative to the file; SNI names are normalised.
        """
        path = self.write(
            '[tls]\ncert = "c.pem"\nkey = "/etc/k.pem"\n'
            'sni = {"Other.Example.TEST" = {cert = "o.pem", key = "o.key"}, "*.example.org" = {cert = "w.pem", key = "w.key"}}\n'
            '[auth]\nallow_plaintext = true\n[listen]\nsubmission = "tcp:587"\nimaps = "none"\n'
        )
        here = os.path.dirname(path)
        config = loadFile(path)
        self.assertEqual(config.tlsCert, os.path.join(here, "c.pem"))
        self.assertEqual(config.tlsKey, "/etc/k.pem")
        self.assertEqual(config.tlsSNI, {
            "other.example.test": (os.path.join(here, "o.pem"), os.path.join(here, "o.key")),
            "*.example.org": (os.path.join(here, "w.pem"), os.path.join(here, "w.key")),
        })
        self.assertTrue(config.allowPlaintext)
        self.assertEqual(config.listeners["submission"], "tcp:587")
        self.assertEqual(config.listeners["imaps"], "none")

    def test_errors(self) -> None:
        for text, fragments in [
            ('[tls]\ncert = "c.pem"\n', ("tls.cert is set but tls.key is not",)),
            ('[tls]\nkey = "k.pem"\n', ("tls.key is set but tls.cert is not",)),
            ('[tls]\ncert = 3\nkey = "k"\n', ("tls.cert", "non-empty string")),
            ('[tls]\nsni = "x"\n', ("tls.sni", "table of host names")),
            ('[tls]\nsni = {"a.test" = {cert = "x"}}\n', ("tls.sni", "a.test")),
            ('[tls]\nsni = {"bad name" = {cert = "x", key = "y"}}\n', ("not a valid domain name",)),
            ('[auth]\nallow_plaintext = "yes"\n', ("auth.allow_plaintext", "true or false")),
            ('[listen]\nsmtps = "tcp:nonsense"\n', ("listen.smtps",)),
        ]:
            path = self.write(text)
            error = self.assertRaises(ConfigError, loadFile, path)
            self.assertIn(path, str(error))
            for fragment in fragments:
                self.assertIn(fragment, str(error), text)

    def test_options(self) -> None:
        """
        --tls-cert, --tls-key and the new listener options win over the file.
        """
        path = self.write('[tls]\ncert = "c.pem"\nkey = "k.pem"\n')
        options = ServerOptions()
        options.parseOptions(["--config", path, "--tls-cert", "/x/cert.pem", "--tls-key", "/x/key.pem",
                              "--submission", "tcp:10587", "--smtps", "none", "--pop3s", "tcp:10995",
                              "--imaps", "tcp:10993"])
        config = options.resolveConfig()
        self.assertEqual((config.tlsCert, config.tlsKey), ("/x/cert.pem", "/x/key.pem"))
        self.assertEqual(config.listeners["submission"], "tcp:10587")
        self.assertEqual(config.listeners["smtps"], "none")
        self.assertEqual(config.listeners["pop3s"], "tcp:10995")
        self.assertEqual(config.listeners["imaps"], "tcp:10993")

    def test_certWithoutKeyOption(self) -> None:
        options = ServerOptions()
        options.parseOptions(["--tls-cert", "/x/cert.pem"])
        error = self.assertRaises(ConfigError, options.resolveConfig)
        self.assertIn("--tls-key", str(error))

    def test_serverBadCert(self) -> None:
        """
        Building the server with a missing certificate stops with one line
        naming the file.
        """
        from dataclasses import replace

        from mailplat.service import Server

        config = replace(Config(), dataDir=self.mktemp(), store="memory", tlsCert="/nonexistent/c.pem",
                         tlsKey="/nonexistent/k.pem")
        error = self.assertRaises(ConfigError, Server, config)
        self.assertIn("/nonexistent/c.pem", str(error))
        self.assertIn("not found", str(error))


def _imapFactory(server):
    """
    The IMAP factory under the wrappers (metrics, connection limits) of
    C{server}'s C{imap} listener.
    """
    factory = server.factories["imap"]
    while not hasattr(factory, "cache"):
        factory = factory.wrappedFactory
    return factory


class IMAPIndexConfigTests(SynchronousTestCase):
    """
    C{[imap] index} and C{index_dir}: whether the server keeps the message
    index on disk, and where.
    """

    def write(self, text: str) -> str:
        path = self.mktemp()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_default(self) -> None:
        """
        By default the index is on, in the data directory.
        """
        from mailplat.service import Server

        config = Config(dataDir=os.path.abspath(self.mktemp()), store="memory")
        server = Server(config)
        self.assertEqual(server.index.directory, os.path.join(config.dataDir, "index"))
        self.assertIs(server.delivery.index, server.index)
        self.assertIs(_imapFactory(server).cache.index, server.index)

    def test_values(self) -> None:
        """
        A relative C{index_dir} is relative to the file, as C{data_dir} is.
        """
        path = self.write('[imap]\nindex = false\nindex_dir = "cache/index"\n')
        config = loadFile(path)
        self.assertFalse(config.imapIndex)
        self.assertEqual(config.imapIndexDir, os.path.join(os.path.dirname(os.path.abspath(path)), "cache/index"))

    def test_badValue(self) -> None:
        """
        A value that is not a boolean is a config error naming the key.
        """
        path = self.write('[imap]\nindex = "yes"\n')
        error = self.assertRaises(ConfigError, loadFile, path)
        self.assertIn("imap.index", str(error))
        self.assertIn(path, str(error))

    def test_off(self) -> None:
        """
        With C{index = false} neither delivery nor IMAP keeps an index, and
        nothing is written under the data directory's C{index}.
        """
        from mailplat.service import Server

        config = Config(dataDir=os.path.abspath(self.mktemp()), store="memory", imapIndex=False)
        server = Server(config)
        self.assertIsNone(server.index)
        self.assertIsNone(server.delivery.index)
        self.assertIsNone(_imapFactory(server).cache.index)
        self.assertFalse(os.path.exists(os.path.join(config.dataDir, "index")))

    def test_elsewhere(self) -> None:
        """
        C{index_dir} moves the index.
        """
        from mailplat.service import Server

        elsewhere = os.path.abspath(self.mktemp())
        config = Config(dataDir=os.path.abspath(self.mktemp()), store="memory", imapIndexDir=elsewhere)
        server = Server(config)
        self.assertEqual(server.index.directory, elsewhere)
        self.assertTrue(server.index.pathFor("alice@example.test").startswith(elsewhere + os.sep))
