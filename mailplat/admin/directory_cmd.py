"""
The C{mailplat domain ...} and C{mailplat alias ...} admin commands: the
virtual domains and aliases of the directory file
(C{<dataDir>/directory.json}, see L{mailplat.delivery.directory}).

    mailplat ... domain add DOMAIN | domain remove DOMAIN | domain list
    mailplat ... alias add ALIAS TARGET [TARGET ...]
    mailplat ... alias remove ALIAS [TARGET]
    mailplat ... alias list

An alias C{@domain} is that domain's catch-all.  With the C{sql} store the
directory lives in the store's database instead
(L{mailplat.delivery.sqldirectory.directoryFor}).  A running server sees the
changes at once (it reads the file or tables again when they changed).
"""

import os
import sys
from typing import Any, List, Optional

from twisted.internet import defer
from twisted.python import usage

from mailplat.delivery.sqldirectory import directoryFor


class _DomainArg(usage.Options):
    synopsis = "DOMAIN"

    def parseArgs(self, domain: str) -> None:  # type: ignore[override]
        self["domain"] = domain


class DomainAdd(_DomainArg):
    description = "Make DOMAIN a virtual domain of this server."


class DomainRemove(_DomainArg):
    description = "Remove a virtual domain and its aliases."


class DomainList(usage.Options):
    synopsis = ""
    description = "List the virtual domains."


class DomainOptions(usage.Options):
    """
    C{mailplat domain add|remove|list}.
    """

    synopsis = "add DOMAIN | remove DOMAIN | list"
    subCommands = [
        ["add", None, DomainAdd, DomainAdd.description],
        ["remove", None, DomainRemove, DomainRemove.description],
        ["list", None, DomainList, DomainList.description],
    ]

    def postOptions(self) -> None:
        if not self.subCommand:
            raise usage.UsageError("domain needs one of: add, remove, list")


class AliasAdd(usage.Options):
    synopsis = "ALIAS TARGET [TARGET ...]"
    description = "Deliver mail for ALIAS (or @domain: a catch-all) to the targets (local or remote)."

    def parseArgs(self, alias: str, *targets: str) -> None:  # type: ignore[override]
        if not targets:
            raise usage.UsageError("alias add needs at least one target")
        self["alias"] = alias
        self["targets"] = list(targets)


class AliasRemove(usage.Options):
    synopsis = "ALIAS [TARGET]"
    description = "Remove one target of ALIAS, or the whole alias."

    def parseArgs(self, alias: str, target: Optional[str] = None) -> None:  # type: ignore[override]
        self["alias"] = alias
        self["target"] = target


class AliasList(usage.Options):
    synopsis = ""
    description = "List the aliases and their targets."


class AliasOptions(usage.Options):
    """
    C{mailplat alias add|remove|list}.
    """

    synopsis = "add ALIAS TARGET... | remove ALIAS [TARGET] | list"
    subCommands = [
        ["add", None, AliasAdd, AliasAdd.description],
        ["remove", None, AliasRemove, AliasRemove.description],
        ["list", None, AliasList, AliasList.description],
    ]

    def postOptions(self) -> None:
        if not self.subCommand:
            raise usage.UsageError("alias needs one of: add, remove, list")


def directoryPath(config: Any) -> str:
    """
    Where the directory file of C{config} lives.
    """
    return os.path.join(config.dataDir, "directory.json")


def run(options: usage.Options, config: Any, out: Any = None) -> "defer.Deferred[None]":
    """
    Carry out a parsed L{DomainOptions} or L{AliasOptions} command.

    @param config: the L{mailplat.config.Config} (its C{dataDir} and
        C{store} are used).
    @param out: where to write (standard output by default).
    @return: a Deferred firing when done; it fails with
        L{mailplat.errors.ConfigError} (one line for the user) on a bad
        address or a missing domain or alias.
    """
    out = out if out is not None else sys.stdout
    return defer.maybeDeferred(_run, options, config, out)


def _run(options: usage.Options, config: Any, out: Any) -> None:
    directory = directoryFor(getattr(config, "store", ""), config.dataDir)
    try:
        _apply(directory, options, out)
    finally:
        close = getattr(directory, "close", None)
        if close is not None:
            close()


def _apply(directory: Any, options: usage.Options, out: Any) -> None:
    verb = options.subCommand
    sub = options.subOptions
    if isinstance(options, DomainOptions):
        if verb == "add":
            out.write(f"added domain {directory.addDomain(sub['domain'])}\n")
        elif verb == "remove":
            out.write(f"removed domain {directory.removeDomain(sub['domain'])}\n")
        else:
            for domain in directory.listDomains():
                out.write(domain + "\n")
        return
    if verb == "add":
        targets: List[str] = directory.addAlias(sub["alias"], sub["targets"])
        out.write(f"{sub['alias'].lower()} -> {', '.join(targets)}\n")
    elif verb == "remove":
        directory.removeAlias(sub["alias"], sub["target"])
        out.write(f"removed {sub['alias'].lower()}" + (f" -> {sub['target']}" if sub["target"] else "") + "\n")
    else:
        for alias, targets in directory.listAliases():
            out.write(f"{alias} -> {', '.join(targets)}\n")
