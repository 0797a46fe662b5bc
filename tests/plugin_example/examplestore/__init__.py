"""
A third-party store package, as someone outside mailplat would write one:
it depends on mailplat's public contract only, and is found by
C{mailplat.plugins.storeFactories()} because it ships
C{twisted/plugins/examplestore_plugin.py}.
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from mailplat.errors import ConfigError
from mailplat.interfaces import IStoreFactory
from mailplat.store.memory import MemoryStore


class ExampleStore(MemoryStore):
    """
    A memory store that remembers the directory it was given.

    @ivar directory: the argument string, or the data directory.
    """

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory


@implementer(IStoreFactory, IPlugin)
class ExampleStoreFactory:
    """
    The C{example} store plugin: C{--store example[:DIR]}.
    """

    storeName = "example"
    storeHelp = "An example third-party store (in memory)."
    argStringFormat = "Optional directory; the data directory when not given."

    def makeStore(self, argstring: str, dataDir: str) -> ExampleStore:
        """
        Make the store.

        @raise ConfigError: the argument string holds a NUL.
        """
        if "\x00" in argstring:
            raise ConfigError("store 'example': the directory may not hold a NUL")
        return ExampleStore(argstring or dataDir)
