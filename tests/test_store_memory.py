"""
The in-memory store against the store conformance suite.
"""

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mailplat.errors import ConfigError
from mailplat.interfaces import IStoreFactory
from mailplat.store.memory import MemoryStore, MemoryStoreFactory
from tests.storetests import StoreConformanceMixin


class MemoryStoreConformanceTests(StoreConformanceMixin, unittest.TestCase):
    """
    L{MemoryStore} keeps the store contract (nothing persists).
    """

    persistent = False

    def makeStore(self) -> MemoryStore:
        return MemoryStore()


class MemoryStoreFactoryTests(unittest.TestCase):
    """
    The C{memory} store plugin.
    """

    def test_factory(self) -> None:
        factory = MemoryStoreFactory()
        self.assertTrue(verifyObject(IStoreFactory, factory))
        self.assertEqual(factory.storeName, "memory")
        self.assertIsInstance(factory.makeStore("", "/nonexistent"), MemoryStore)

    def test_arguments(self) -> None:
        self.assertRaises(ConfigError, MemoryStoreFactory().makeStore, "x", "/nonexistent")
