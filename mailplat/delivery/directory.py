"""
The directory: which addresses receive mail here, and where it goes.

Two sources answer it:

 - the store: an address exists when the store has an account for it;
 - the directory file C{<dataDir>/directory.json} (L{DirectoryFile}),
   managed with C{mailplat domain ...} and C{mailplat alias ...}: virtual
   domains, aliases (one address to many, local or remote), catch-alls
   (the alias C{@domain}), and moved addresses (C{"moved": {"old@d":
   "new@elsewhere"}}): mail to a moved address is refused with
   C{551 5.1.6 User not local; please try <new@elsewhere>} (RFC 5321 3.4)
   instead of being delivered or forwarded.

Resolution of an address of a local domain (L{StoreDirectory.expand}), in
this order: an alias of exactly that address; the account of that
address; the address without its plus tag (C{user+tag@d} to C{user@d});
the domain's catch-all.  Alias targets are resolved the same way in turn
(an alias naming itself, or a target already being expanded, is the
account itself when there is one: a loop is never followed twice); a
target in a domain that is not local is a forward to a remote address,
delivered through the queue.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Generator, Iterable, List, Optional, Tuple

from twisted.internet import defer
from zope.interface import implementer

from mailplat.address import normalizeAddress, splitAddress
from mailplat.errors import ConfigError
from mailplat.interfaces import IDirectory, IStore

#: The most alias levels followed from one address.
MAX_ALIAS_DEPTH = 20


class AliasLoop(Exception):
    """
    Expanding an address ran into a loop (or too many levels) and found no
    recipient.
    """


@dataclass
class Resolution:
    """
    Where mail for one address goes.

    @ivar local: account addresses here, each once, in order.
    @ivar remote: addresses in other domains it is forwarded to.
    @ivar loop: a loop was met (and cut) while expanding.
    """

    local: List[str] = field(default_factory=list)
    remote: List[str] = field(default_factory=list)
    loop: bool = False

    def __bool__(self) -> bool:
        return bool(self.local or self.remote)


def _validAddress(address: str, allowCatchAll: bool = False) -> str:
    normalized = normalizeAddress(address)
    local, domain = splitAddress(normalized)
    if not domain or (not local and not allowCatchAll) or any(c in normalized for c in " \t\r\n\x00/<>,"):
        raise ConfigError(f"{address!r} is not an address of the form user@domain")
    return normalized


def _validDomain(domain: str) -> str:
    d = domain.strip().lower().rstrip(".")
    if not d or "@" in d or ".." in d or any(c in d for c in " \t\r\n\x00/"):
        raise ConfigError(f"{domain!r} is not a domain name")
    return d


class DirectoryFile:
    """
    The virtual domains and aliases, kept in one JSON file::

        {"version": 1,
         "domains": ["example.test"],
         "aliases": {"postmaster@example.test": ["alice@example.test"],
                     "@example.test": ["catchall@example.test"]},
         "moved": {"carol@example.test": "carol@new.example"}}

    C{moved} is optional: an address that has moved to C{new}; the SMTP
    server answers C{551 5.1.6 User not local; please try <new>} for it.

    Every change rewrites the file atomically (temporary file, fsync,
    rename, directory fsync).  The file is read again whenever it changed
    on disk, so a running server sees the admin command's changes.

    @ivar path: the file's path; it need not exist.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: Optional[Tuple[int, int, int]] = None
        self._domains: List[str] = []
        self._aliases: Dict[str, List[str]] = {}
        self._moved: Dict[str, str] = {}

    # Reading.

    def _load(self) -> None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._stamp = None
            self._domains, self._aliases, self._moved = [], {}, {}
            return
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp == self._stamp:
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            domains = [_validDomain(d) for d in data.get("domains", [])]
            aliases = {
                _validAddress(k, allowCatchAll=True): [_validAddress(t) for t in v]
                for k, v in data.get("aliases", {}).items()
            }
            moved = {_validAddress(k): _validAddress(v) for k, v in data.get("moved", {}).items()}
        except (ValueError, AttributeError, TypeError, ConfigError) as e:
            raise ConfigError(f"{self.path}: not a valid directory file: {e}") from None
        self._domains, self._aliases, self._moved, self._stamp = domains, aliases, moved, stamp

    def domains(self) -> List[str]:
        """
        The virtual domains, sorted.
        """
        self._load()
        return sorted(self._domains)

    def aliases(self) -> Dict[str, List[str]]:
        """
        Every alias (C{@domain} for a catch-all) and its targets.
        """
        self._load()
        return {k: list(v) for k, v in self._aliases.items()}

    def lookup(self, key: str) -> Optional[List[str]]:
        """
        The targets of alias C{key} (normalised), or L{None}.
        """
        self._load()
        targets = self._aliases.get(key)
        return list(targets) if targets is not None else None

    def movedTo(self, address: str) -> Optional[str]:
        """
        The new address of C{address} (normalised) when it has moved, else
        L{None}.
        """
        self._load()
        return self._moved.get(address)

    def listMoved(self) -> List[Tuple[str, str]]:
        """
        Every moved address with its new address, sorted.
        """
        self._load()
        return sorted(self._moved.items())

    # Changing.

    def _save(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        tmp = self.path + ".tmp"
        data: Dict[str, object] = {
            "version": 1,
            "domains": sorted(self._domains),
            "aliases": {k: self._aliases[k] for k in sorted(self._aliases)},
        }
        if self._moved:
            data["moved"] = {k: self._moved[k] for k in sorted(self._moved)}
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.path)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        stat = os.stat(self.path)
        self._stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def addDomain(self, domain: str) -> str:
        """
        Make C{domain} a virtual domain of this server.

        @return: the normalised domain.
        @raise ConfigError: not a domain, or already there.
        """
        self._load()
        d = _validDomain(domain)
        if d in self._domains:
            raise ConfigError(f"domain {d} exists already")
        self._domains.append(d)
        self._save()
        return d

    def removeDomain(self, domain: str) -> str:
        """
        Remove a virtual domain and every alias in it.

        @raise ConfigError: no such domain.
        """
        self._load()
        d = _validDomain(domain)
        if d not in self._domains:
            raise ConfigError(f"{d}: no such domain")
        self._domains.remove(d)
        for key in [k for k in self._aliases if splitAddress(k)[1] == d]:
            del self._aliases[key]
        self._save()
        return d

    def listDomains(self) -> List[str]:
        """
        Same as L{domains}.
        """
        return self.domains()

    def addAlias(self, alias: str, targets: Iterable[str]) -> List[str]:
        """
        Add targets to an alias (created when new).  C{@domain} is the
        domain's catch-all.

        @return: the alias's targets now.
        @raise ConfigError: a bad address, or no target.
        """
        self._load()
        key = _validAddress(alias, allowCatchAll=True)
        new = [_validAddress(t) for t in targets]
        if not new:
            raise ConfigError(f"alias {key} needs at least one target")
        current = self._aliases.setdefault(key, [])
        for t in new:
            if t not in current:
                current.append(t)
        self._save()
        return list(current)

    def removeAlias(self, alias: str, target: Optional[str] = None) -> None:
        """
        Remove one target of an alias (the alias goes with its last
        target), or the whole alias when C{target} is L{None}.

        @raise ConfigError: no such alias or target.
        """
        self._load()
        key = _validAddress(alias, allowCatchAll=True)
        if key not in self._aliases:
            raise ConfigError(f"{key}: no such alias")
        if target is None:
            del self._aliases[key]
        else:
            t = normalizeAddress(target)
            if t not in self._aliases[key]:
                raise ConfigError(f"{key}: {t} is not one of its targets")
            self._aliases[key].remove(t)
            if not self._aliases[key]:
                del self._aliases[key]
        self._save()

    def setMoved(self, address: str, newAddress: str) -> str:
        """
        Mark C{address} as moved to C{newAddress} (replacing an earlier
        setting).

        @return: the normalised new address.
        @raise ConfigError: a bad address, or an address moved to itself.
        """
        self._load()
        key = _validAddress(address)
        target = _validAddress(newAddress)
        if key == target:
            raise ConfigError(f"{key} cannot move to itself")
        self._moved[key] = target
        self._save()
        return target

    def removeMoved(self, address: str) -> None:
        """
        Forget that C{address} moved.

        @raise ConfigError: it is not marked as moved.
        """
        self._load()
        key = _validAddress(address)
        if key not in self._moved:
            raise ConfigError(f"{key}: not marked as moved")
        del self._moved[key]
        self._save()

    def listAliases(self) -> List[Tuple[str, List[str]]]:
        """
        Every alias with its targets, sorted by alias.
        """
        aliases = self.aliases()
        return [(k, aliases[k]) for k in sorted(aliases)]


@implementer(IDirectory)
class StoreDirectory:
    """
    An address exists when the store has an account for it, or when the
    directory file makes it an alias (see the module docstring).

    Local domains are the configured ones and the virtual domains of the
    directory file; with none configured, every domain that has at least
    one account is local too (so a fresh install that adds
    C{alice@example.test} receives mail for example.test and relays
    nothing).

    @ivar store: the L{IStore}.
    @ivar domains: the configured domains (lower-case), possibly empty.
    @ivar file: the L{DirectoryFile} (or an object with its reading
        methods, such as L{mailplat.delivery.sqldirectory.SQLDirectoryFile}),
        or L{None} (accounts only).
    @ivar plusDelimiter: the sub-address delimiter (C{"+"}), or C{""} to
        turn plus-addressing off.
    """

    def __init__(
        self, store: IStore, domains: Iterable[str] = (), path: Optional[str] = None, plusDelimiter: str = "+",
        file: Optional[Any] = None,
    ) -> None:
        """
        @param path: the directory file's path; ignored when C{file} is
            given.
        @param file: the directory to use (see
            L{mailplat.delivery.sqldirectory.directoryFor}).
        """
        self.store = store
        self.domains = frozenset(d.lower().rstrip(".") for d in domains)
        self.file = file if file is not None else (DirectoryFile(path) if path is not None else None)
        self.plusDelimiter = plusDelimiter

    def isLocalDomain(self, domain: str) -> "defer.Deferred[bool]":
        """
        See L{IDirectory.isLocalDomain}.
        """
        domain = domain.lower().rstrip(".")
        if domain in self.domains:
            return defer.succeed(True)
        try:
            virtual = self.file is not None and domain in self.file.domains()
        except Exception:
            return defer.fail()
        if virtual:
            return defer.succeed(True)
        if self.domains:
            return defer.succeed(False)
        return self.store.hasDomain(domain)

    def isLocalAddress(self, address: str, accounts: Optional[Dict[str, bool]] = None) -> "defer.Deferred[bool]":
        """
        Whether the domain of C{address} (normalised) is local: as
        L{isLocalDomain}, but when the domains come from the accounts (none
        configured or in the directory file), an account for C{address}
        itself answers yes without the store looking through the domain's
        accounts.

        @param accounts: when given, what the store answered about an
            account for C{address}, if it was asked, is put in it
            (C{accounts[address] = found}), for L{expand} not to ask
            again.
        """
        domain = splitAddress(address)[1]
        if self.domains or not domain:
            return self.isLocalDomain(domain)

        def hasAccount(found: bool) -> Any:
            if accounts is not None:
                accounts[address] = bool(found)
            return True if found else self.isLocalDomain(domain)

        return self.store.hasAccount(address).addCallback(hasAccount)

    def movedTo(self, address: str) -> "defer.Deferred[Optional[str]]":
        """
        The new address of C{address} when the directory file marks it as
        moved, else L{None} (see L{DirectoryFile.movedTo}).
        """
        if self.file is None:
            return defer.succeed(None)
        return defer.succeed(self.file.movedTo(normalizeAddress(address)))

    @defer.inlineCallbacks
    def resolve(self, address: str) -> Generator["defer.Deferred[Any]", Any, List[str]]:
        """
        See L{IDirectory.resolve}: the accounts here that receive mail for
        C{address} (remote forwards are left out: see L{expand}).
        """
        try:
            resolution = yield self.expand(address)
        except AliasLoop:
            return []
        result: List[str] = resolution.local
        return result

    @defer.inlineCallbacks
    def expand(self, address: str, domainIsLocal: bool = False,
               accounts: Optional[Dict[str, bool]] = None) -> Generator["defer.Deferred[Any]", Any, Resolution]:
        """
        Where mail for C{address} goes: accounts here and remote forwards.
        An address in a domain that is not local resolves to nothing (the
        caller decides whether it may be relayed).

        @param domainIsLocal: the caller has just found the address's
            domain local (L{isLocalDomain}), so it is not asked again.
        @param accounts: whether addresses have an account, as the store
            has just answered the caller (see L{isLocalAddress}); the
            store is not asked again about these.
        @return: a Deferred firing with a L{Resolution}.
        @raise AliasLoop: (as a failure) only loops were found.
        """
        address = normalizeAddress(address)
        local, domain = splitAddress(address)
        result = Resolution()
        if not local or not domain or not (domainIsLocal or (yield self.isLocalDomain(domain))):
            return result
        yield self._expand(address, [], result, accounts or {})
        if not result and result.loop:
            raise AliasLoop(address)
        return result

    @defer.inlineCallbacks
    def _expand(self, address: str, path: List[str], result: Resolution,
                known: Dict[str, bool]) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Add what C{address} (of a local domain) resolves to into C{result}.

        @param path: the addresses being expanded above this one.
        @param known: whether addresses have an account, as the store has
            just answered (see L{expand}).
        """
        if len(path) > MAX_ALIAS_DEPTH:
            result.loop = True
            return
        local, domain = splitAddress(address)
        candidates = [address]
        if self.plusDelimiter and self.plusDelimiter in local:
            base = local.split(self.plusDelimiter, 1)[0]
            if base:
                candidates.append(f"{base}@{domain}")
        for candidate in candidates:
            targets = self.file.lookup(candidate) if self.file is not None else None
            if targets is not None and candidate not in path:
                yield self._follow(candidate, targets, path, result, known)
                return
            found = known.get(candidate)
            if found is None:
                found = yield self.store.hasAccount(candidate)
            if found:
                if candidate not in result.local:
                    result.local.append(candidate)
                return
            if targets is not None:
                # An alias already being expanded, without an account.
                result.loop = True
                return
        catchAll = self.file.lookup("@" + domain) if self.file is not None else None
        if catchAll is not None:
            key = "@" + domain
            if key in path:
                result.loop = True
                return
            yield self._follow(key, catchAll, path, result, known)

    @defer.inlineCallbacks
    def _follow(self, key: str, targets: List[str], path: List[str], result: Resolution,
                known: Dict[str, bool]) -> Generator["defer.Deferred[Any]", Any, None]:
        inner = path + [key]
        for target in targets:
            tlocal, tdomain = splitAddress(target)
            if not (yield self.isLocalDomain(tdomain)):
                if target not in result.remote:
                    result.remote.append(target)
                continue
            if target == key:
                # "alice: alice, bob" keeps a copy in alice's account.
                if (yield self.store.hasAccount(target)):
                    if target not in result.local:
                        result.local.append(target)
                else:
                    result.loop = True
                continue
            yield self._expand(target, inner, result, known)
