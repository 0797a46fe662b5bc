"""
Finding stores and checkers by name among the installed Twisted plugins,
so a third-party package adds one by shipping a module in twisted/plugins/.
"""

from typing import Dict, List

from twisted import plugins as twistedPlugins
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import getPlugins

from mailplat.auth.compat import bytesUsernames
from mailplat.errors import ConfigError
from mailplat.interfaces import IStore, IStoreFactory


def storeFactories() -> Dict[str, IStoreFactory]:
    """
    Every installed store plugin by name.
    """
    return {f.storeName: f for f in getPlugins(IStoreFactory, twistedPlugins)}


def checkerFactories() -> Dict[str, ICheckerFactory]:
    """
    Every installed checker plugin by C{authType} (Twisted's own included).
    """
    return {f.authType: f for f in getPlugins(ICheckerFactory, twistedPlugins)}


def makeStore(spec: str, dataDir: str, where: str = "--store") -> IStore:
    """
    Make the store named by C{spec} (C{NAME[:ARGS]}).

    @raise ConfigError: unknown name or bad arguments.
    """
    name, _, args = spec.partition(":")
    factories = storeFactories()
    factory = factories.get(name)
    if factory is None:
        raise ConfigError(f"{where}: unknown store {name!r} (installed: {', '.join(sorted(factories))})")
    try:
        return factory.makeStore(args, dataDir)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def makeCheckers(specs: List[str], dataDir: str, where: str = "--auth") -> List[ICredentialsChecker]:
    """
    Make the checkers named by C{specs} (C{NAME[:ARGS]} each, as Twisted's
    strcred takes them).  A factory with a C{defaultArguments(dataDir)}
    method (mailplat's own, C{sql}) says what an empty C{ARGS} means, since
    strcred's C{generateChecker} is never told the data directory.

    @raise ConfigError: unknown name or bad arguments.
    """
    factories = checkerFactories()
    checkers = []
    for spec in specs:
        name, _, args = spec.partition(":")
        factory = factories.get(name)
        if factory is None:
            raise ConfigError(f"{where}: unknown checker {name!r} (installed: {', '.join(sorted(factories))})")
        if not args and hasattr(factory, "defaultArguments"):
            args = factory.defaultArguments(dataDir)
        try:
            checkers.append(bytesUsernames(factory.generateChecker(args)))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        except Exception as e:
            raise ConfigError(f"{where}: checker {name!r} refused {args!r}: {e}") from None
    return checkers
