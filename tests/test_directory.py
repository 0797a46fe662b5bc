"""
Tests for L{mailplat.delivery.directory}: virtual domains, aliases,
catch-alls, plus-addressing, loops, and the C{mailplat domain|alias}
admin commands.
"""

import io
import json
import os
from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from mailplat.admin import directory_cmd
from mailplat.delivery.directory import AliasLoop, DirectoryFile, StoreDirectory
from mailplat.errors import ConfigError
from mailplat.store.memory import MemoryStore


class DirectoryFileTests(SynchronousTestCase):
    """
    L{DirectoryFile}: the admin API and its file.
    """

    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp(), "directory.json")
        self.file = DirectoryFile(self.path)

    def test_missingFile(self) -> None:
        self.assertEqual(self.file.listDomains(), [])
        self.assertEqual(self.file.listAliases(), [])

    def test_domains(self) -> None:
        self.assertEqual(self.file.addDomain("Example.TEST."), "example.test")
        self.file.addDomain("other.test")
        self.assertRaises(ConfigError, self.file.addDomain, "example.test")
        self.assertRaises(ConfigError, self.file.addDomain, "bad/domain")
        self.assertEqual(self.file.listDomains(), ["example.test", "other.test"])
        self.file.addAlias("a@other.test", ["b@other.test"])
        self.file.removeDomain("other.test")
        self.assertEqual(self.file.listDomains(), ["example.test"])
        self.assertEqual(self.file.listAliases(), [])
        self.assertRaises(ConfigError, self.file.removeDomain, "other.test")

    def test_aliases(self) -> None:
        self.assertEqual(self.file.addAlias("Team@example.test", ["a@example.test", "b@far.test"]), ["a@example.test", "b@far.test"])
        self.file.addAlias("team@example.test", ["c@example.test", "a@example.test"])
        self.file.addAlias("@example.test", ["a@example.test"])
        self.assertEqual(
            self.file.listAliases(),
            [("@example.test", ["a@example.test"]), ("team@example.test", ["a@example.test", "b@far.test", "c@example.test"])],
        )
        self.file.removeAlias("team@example.test", "b@far.test")
        self.assertEqual(self.file.lookup("team@example.test"), ["a@example.test", "c@example.test"])
        self.file.removeAlias("team@example.test")
        self.assertIsNone(self.file.lookup("team@example.test"))
        self.assertRaises(ConfigError, self.file.removeAlias, "team@example.test")
        self.assertRaises(ConfigError, self.file.addAlias, "x@example.test", [])
        self.assertRaises(ConfigError, self.file.addAlias, "x@example.test", ["not an address"])

    def test_persistentAndReloaded(self) -> None:
        """
        Another instance (a running server) sees changes; the file is JSON.
        """
        other = DirectoryFile(self.path)
        self.assertEqual(other.listDomains(), [])
        self.file.addDomain("example.test")
        self.file.addAlias("a@example.test", ["b@example.test"])
        self.assertEqual(other.listDomains(), ["example.test"])
        self.assertEqual(other.lookup("a@example.test"), ["b@example.test"])
        with open(self.path) as f:
            data = json.load(f)
        self.assertEqual(data["aliases"], {"a@example.test": ["b@example.test"]})
        self.assertFalse(os.path.exists(self.path + ".tmp"))

    def test_badFile(self) -> None:
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "w") as f:
            f.write("{not json")
        e = self.assertRaises(ConfigError, self.file.listDomains)
        self.assertIn(self.path, str(e))


class ResolutionTests(SynchronousTestCase):
    """
    L{StoreDirectory.expand} and C{resolve} with a directory file.
    """

    def setUp(self) -> None:
        self.store = MemoryStore()
        for a in ["alice@example.test", "bob@example.test", "carol@virtual.test"]:
            self.successResultOf(self.store.getAccount(a, create=True))
        self.file = DirectoryFile(os.path.join(self.mktemp(), "directory.json"))
        self.file.addDomain("virtual.test")
        self.directory = StoreDirectory(self.store, path=self.file.path)

    def expand(self, address: str):
        r = self.successResultOf(self.directory.expand(address))
        return r.local, r.remote

    def test_virtualDomain(self) -> None:
        self.assertTrue(self.successResultOf(self.directory.isLocalDomain("virtual.test")))
        self.assertTrue(self.successResultOf(self.directory.isLocalDomain("example.test")))
        self.assertFalse(self.successResultOf(self.directory.isLocalDomain("far.test")))
        self.file.addDomain("empty.test")
        self.assertTrue(self.successResultOf(self.directory.isLocalDomain("empty.test")))

    def test_configuredDomainsAndVirtual(self) -> None:
        directory = StoreDirectory(self.store, ["example.test"], path=self.file.path)
        self.assertTrue(self.successResultOf(directory.isLocalDomain("virtual.test")))
        self.assertTrue(self.successResultOf(directory.isLocalDomain("example.test")))

    def test_account(self) -> None:
        self.assertEqual(self.expand("Alice@Example.test"), (["alice@example.test"], []))
        self.assertEqual(self.expand("nobody@example.test"), ([], []))
        self.assertEqual(self.expand("someone@far.test"), ([], []))

    def test_aliasOneToMany(self) -> None:
        self.file.addAlias("team@example.test", ["alice@example.test", "bob@example.test", "carol@virtual.test", "x@far.test"])
        self.assertEqual(self.expand("team@example.test"), (["alice@example.test", "bob@example.test", "carol@virtual.test"], ["x@far.test"]))
        self.assertEqual(self.successResultOf(self.directory.resolve("team@example.test")), ["alice@example.test", "bob@example.test", "carol@virtual.test"])

    def test_nested(self) -> None:
        self.file.addAlias("all@example.test", ["team@example.test", "carol@virtual.test"])
        self.file.addAlias("team@example.test", ["alice@example.test", "carol@virtual.test"])
        self.assertEqual(self.expand("all@example.test"), (["alice@example.test", "carol@virtual.test"], []))

    def test_aliasOverridesAccount(self) -> None:
        """
        An alias on an account's address wins; naming itself keeps a copy.
        """
        self.file.addAlias("alice@example.test", ["bob@example.test"])
        self.assertEqual(self.expand("alice@example.test"), (["bob@example.test"], []))
        self.file.addAlias("alice@example.test", ["alice@example.test", "x@far.test"])
        self.assertEqual(self.expand("alice@example.test"), (["bob@example.test", "alice@example.test"], ["x@far.test"]))

    def test_plus(self) -> None:
        self.assertEqual(self.expand("alice+lists@example.test"), (["alice@example.test"], []))
        self.file.addAlias("team@example.test", ["bob@example.test"])
        self.assertEqual(self.expand("team+x@example.test"), (["bob@example.test"], []))
        self.file.addAlias("alice+spam@example.test", ["bob@example.test"])
        self.assertEqual(self.expand("alice+spam@example.test"), (["bob@example.test"], []))
        self.assertEqual(self.expand("nobody+x@example.test"), ([], []))
        self.assertEqual(self.expand("+x@example.test"), ([], []))

    def test_plusOff(self) -> None:
        directory = StoreDirectory(self.store, path=self.file.path, plusDelimiter="")
        self.assertEqual(self.successResultOf(directory.resolve("alice+x@example.test")), [])

    def test_catchAll(self) -> None:
        self.file.addAlias("@virtual.test", ["carol@virtual.test"])
        self.assertEqual(self.expand("anything@virtual.test"), (["carol@virtual.test"], []))
        self.assertEqual(self.expand("carol@virtual.test"), (["carol@virtual.test"], []))
        self.assertEqual(self.expand("nobody@example.test"), ([], []))

    def test_catchAllForward(self) -> None:
        self.file.addAlias("@virtual.test", ["x@far.test"])
        self.assertEqual(self.expand("anything@virtual.test"), ([], ["x@far.test"]))

    def test_loops(self) -> None:
        self.file.addAlias("a@example.test", ["b@example.test"])
        self.file.addAlias("b@example.test", ["a@example.test"])
        self.failureResultOf(self.directory.expand("a@example.test"), AliasLoop)
        self.assertEqual(self.successResultOf(self.directory.resolve("a@example.test")), [])
        self.file.addAlias("b@example.test", ["alice@example.test"])
        self.assertEqual(self.expand("a@example.test"), (["alice@example.test"], []))

    def test_selfLoop(self) -> None:
        self.file.addAlias("x@example.test", ["x@example.test"])
        self.failureResultOf(self.directory.expand("x@example.test"), AliasLoop)

    def test_catchAllLoop(self) -> None:
        self.file.addAlias("@virtual.test", ["missing@virtual.test"])
        self.failureResultOf(self.directory.expand("y@virtual.test"), AliasLoop)

    def test_deepChain(self) -> None:
        for i in range(30):
            self.file.addAlias(f"l{i}@example.test", [f"l{i + 1}@example.test"])
        self.file.addAlias("l30@example.test", ["alice@example.test"])
        self.failureResultOf(self.directory.expand("l0@example.test"), AliasLoop)
        self.assertEqual(self.expand("l15@example.test"), (["alice@example.test"], []))


class CommandTests(SynchronousTestCase):
    """
    C{mailplat domain ...} and C{mailplat alias ...}.
    """

    def setUp(self) -> None:
        self.config = SimpleNamespace(dataDir=self.mktemp())

    def command(self, options: object, *argv: str) -> str:
        options.parseOptions(list(argv))
        out = io.StringIO()
        self.successResultOf(directory_cmd.run(options, self.config, out))
        return out.getvalue()

    def test_domains(self) -> None:
        self.assertEqual(self.command(directory_cmd.DomainOptions(), "add", "Example.test"), "added domain example.test\n")
        self.assertEqual(self.command(directory_cmd.DomainOptions(), "list"), "example.test\n")
        self.command(directory_cmd.DomainOptions(), "remove", "example.test")
        self.assertEqual(self.command(directory_cmd.DomainOptions(), "list"), "")

    def test_aliases(self) -> None:
        self.command(directory_cmd.AliasOptions(), "add", "team@example.test", "a@example.test", "b@far.test")
        self.assertEqual(self.command(directory_cmd.AliasOptions(), "list"), "team@example.test -> a@example.test, b@far.test\n")
        self.command(directory_cmd.AliasOptions(), "remove", "team@example.test", "b@far.test")
        self.assertEqual(self.command(directory_cmd.AliasOptions(), "list"), "team@example.test -> a@example.test\n")
        self.assertEqual(DirectoryFile(directory_cmd.directoryPath(self.config)).lookup("team@example.test"), ["a@example.test"])

    def test_errors(self) -> None:
        options = directory_cmd.DomainOptions()
        options.parseOptions(["remove", "nothere.test"])
        self.failureResultOf(directory_cmd.run(options, self.config, io.StringIO()), ConfigError)
        from twisted.python import usage

        self.assertRaises(usage.UsageError, directory_cmd.AliasOptions().parseOptions, ["add", "a@example.test"])


class MovedTests(SynchronousTestCase):
    """
    Addresses marked as moved in the directory file (RFC 5321 3.4, 551).
    """

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.successResultOf(self.store.getAccount("alice@example.test", create=True))
        self.file = DirectoryFile(os.path.join(self.mktemp(), "directory.json"))
        self.file.addDomain("example.test")
        self.directory = StoreDirectory(self.store, path=self.file.path)

    def test_setAndRead(self) -> None:
        self.assertEqual(self.file.setMoved("Carol@Example.test", "carol@new.example"), "carol@new.example")
        self.assertEqual(self.successResultOf(self.directory.movedTo("CAROL@example.test")), "carol@new.example")
        self.assertIsNone(self.successResultOf(self.directory.movedTo("alice@example.test")))
        # Persisted in the file, and read back by another instance.
        with open(self.file.path, encoding="utf-8") as f:
            self.assertEqual(json.load(f)["moved"], {"carol@example.test": "carol@new.example"})
        self.assertEqual(DirectoryFile(self.file.path).listMoved(), [("carol@example.test", "carol@new.example")])

    def test_remove(self) -> None:
        self.file.setMoved("carol@example.test", "carol@new.example")
        self.file.removeMoved("carol@example.test")
        self.assertIsNone(self.file.movedTo("carol@example.test"))
        self.assertRaises(ConfigError, self.file.removeMoved, "carol@example.test")

    def test_errors(self) -> None:
        self.assertRaises(ConfigError, self.file.setMoved, "carol@example.test", "not an address")
        self.assertRaises(ConfigError, self.file.setMoved, "carol@example.test", "Carol@example.test")
        self.assertEqual(self.file.listMoved(), [])

    def test_badFile(self) -> None:
        with open(self.file.path, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "moved": {"carol@example.test": "nowhere"}}, f)
        self.assertRaises(ConfigError, self.file.movedTo, "carol@example.test")

    def test_noFile(self) -> None:
        self.assertIsNone(self.successResultOf(StoreDirectory(self.store).movedTo("carol@example.test")))
