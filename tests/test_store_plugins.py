"""
Stores are pluggable without touching mailplat: a third-party package that
ships a module in C{twisted/plugins/} (C{tests/plugin_example}) is found by
name, in a child Python process whose path has it, and only there.
"""

import json
import os
import shutil
import sys
from typing import Dict, List, Optional

from twisted.internet import defer, protocol, reactor
from twisted.python.failure import Failure
from twisted.trial import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
EXAMPLE = os.path.join(HERE, "plugin_example")

# Run in the child: which stores are installed, and whether "example" makes one.
CHILD = """
import json, sys
from mailplat import plugins
from mailplat.errors import ConfigError
from mailplat.interfaces import IStore
names = sorted(plugins.storeFactories())
made = None
try:
    store = plugins.makeStore("example:" + sys.argv[1], sys.argv[2])
except ConfigError as e:
    made = "ConfigError: " + str(e)
else:
    made = [type(store).__module__ + "." + type(store).__name__, IStore.providedBy(store), store.directory]
print(json.dumps({"names": names, "made": made}))
"""


class _Collect(protocol.ProcessProtocol):
    """
    Collects a child's output and fires with it when the child ends.
    """

    def __init__(self, done: defer.Deferred) -> None:
        self.done = done
        self.out: List[bytes] = []
        self.err: List[bytes] = []

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        self.done.callback((reason.value.exitCode, b"".join(self.out), b"".join(self.err)))


class StorePluginTests(unittest.TestCase):
    """
    L{mailplat.plugins.storeFactories} and L{mailplat.plugins.makeStore}
    find a store shipped by another package.
    """

    def setUp(self) -> None:
        # A copy, so that Twisted's dropin.cache is not written into tests/.
        self.plugins = os.path.abspath(self.mktemp())
        shutil.copytree(EXAMPLE, self.plugins, ignore=shutil.ignore_patterns("__pycache__", "dropin.cache"))
        self.dataDir = os.path.abspath(self.mktemp())

    def child(self, extraPath: Optional[str]) -> defer.Deferred:
        """
        Run L{CHILD} with C{extraPath} first on C{PYTHONPATH}; fire with its
        parsed output.
        """
        env: Dict[str, str] = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([p for p in (extraPath, REPO) if p])
        env.pop("PYTHONSTARTUP", None)
        done: defer.Deferred = defer.Deferred()
        reactor.spawnProcess(  # type: ignore[attr-defined]
            _Collect(done), sys.executable, [sys.executable, "-c", CHILD, "/some/dir", self.dataDir],
            env=env, path=REPO,
        )

        def parse(result: tuple) -> dict:
            code, out, err = result
            self.assertEqual(code, 0, err.decode("utf-8", "replace"))
            return json.loads(out.decode("utf-8"))

        return done.addCallback(parse)

    @defer.inlineCallbacks
    def test_found(self):
        """
        With the package on the path, C{example} is listed with mailplat's
        own stores and makes its store; without it, it is unknown.
        """
        withPlugin, without = yield defer.gatherResults([self.child(self.plugins), self.child(None)])
        self.assertIn("example", withPlugin["names"])
        self.assertIn("memory", withPlugin["names"])
        self.assertIn("maildir", withPlugin["names"])
        self.assertEqual(withPlugin["made"], ["examplestore.ExampleStore", True, "/some/dir"])
        self.assertNotIn("example", without["names"])
        self.assertIn("memory", without["names"])
        self.assertTrue(without["made"].startswith("ConfigError: --store: unknown store 'example'"), without["made"])

    def test_layout(self) -> None:
        """
        The example ships its plugin the Twisted way: no C{__init__.py} in
        its C{twisted/} or C{twisted/plugins/}.
        """
        self.assertTrue(os.path.isfile(os.path.join(EXAMPLE, "twisted", "plugins", "examplestore_plugin.py")))
        self.assertFalse(os.path.exists(os.path.join(EXAMPLE, "twisted", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(EXAMPLE, "twisted", "plugins", "__init__.py")))
