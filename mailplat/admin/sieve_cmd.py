"""
The C{mailplat sieve ...} admin command: the per-account Sieve scripts
kept in C{<dataDir>/sieve/<address>.sieve} (see L{mailplat.sieve}).

    mailplat ... sieve set ADDRESS FILE    check FILE, then install it
    mailplat ... sieve check FILE          say whether FILE is valid Sieve
    mailplat ... sieve show ADDRESS        print the script of ADDRESS
    mailplat ... sieve del ADDRESS         remove the script of ADDRESS

A running server uses a new script from the next message on.
"""

import os
import sys
from typing import Any, Optional

from twisted.internet import defer
from twisted.python import usage

from mailplat.errors import ConfigError
from mailplat.sieve import SieveError, compile, scriptPath


class SieveSet(usage.Options):
    synopsis = "ADDRESS FILE"
    description = "Check FILE and install it as the Sieve script of ADDRESS (- reads standard input)."

    def parseArgs(self, address: str, path: str) -> None:  # type: ignore[override]
        self["address"] = address
        self["file"] = path


class SieveCheck(usage.Options):
    synopsis = "FILE"
    description = "Say whether FILE is a valid Sieve script."

    def parseArgs(self, path: str) -> None:  # type: ignore[override]
        self["file"] = path


class _AddressArg(usage.Options):
    synopsis = "ADDRESS"

    def parseArgs(self, address: str) -> None:  # type: ignore[override]
        self["address"] = address


class SieveShow(_AddressArg):
    description = "Print the Sieve script of ADDRESS."


class SieveDel(_AddressArg):
    description = "Remove the Sieve script of ADDRESS."


class SieveOptions(usage.Options):
    """
    C{sieve set | check | show | del}.
    """

    synopsis = "sieve (set ADDRESS FILE | check FILE | show ADDRESS | del ADDRESS)"
    subCommands = [
        ["set", None, SieveSet, "Install a script"],
        ["check", None, SieveCheck, "Check a script"],
        ["show", None, SieveShow, "Print a script"],
        ["del", None, SieveDel, "Remove a script"],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("sieve needs a subcommand: set, check, show or del")


def run(options: usage.Options, config: Any, out: Any = None, stdin: Any = None) -> "defer.Deferred[None]":
    """
    Carry out a parsed C{sieve} command.

    @param options: a parsed L{SieveOptions}.
    @param config: the L{mailplat.config.Config} (its C{dataDir} is used).
    @param out: where to write (standard output by default).
    @param stdin: where C{-} reads from (standard input by default).
    @return: a Deferred failing with L{ConfigError} (one clear line) on a
        bad address, unreadable file or invalid script.
    """
    out = out if out is not None else sys.stdout
    stdin = stdin if stdin is not None else sys.stdin
    return defer.maybeDeferred(_run, options, config, out, stdin)


def _read(path: str, stdin: Any) -> str:
    try:
        if path == "-":
            return stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the script: {e}") from None


def _check(path: str, text: str) -> None:
    try:
        compile(text)
    except SieveError as e:
        raise ConfigError(f"{path}: invalid Sieve script: {e}") from None


def _path(config: Any, address: str) -> str:
    try:
        return scriptPath(config.dataDir, address)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _run(options: usage.Options, config: Any, out: Any, stdin: Any) -> None:
    sub: Optional[usage.Options] = options.subOptions
    name = options.subCommand
    assert sub is not None
    if name == "check":
        _check(sub["file"], _read(sub["file"], stdin))
        out.write(f"{sub['file']}: valid\n")
    elif name == "set":
        path = _path(config, sub["address"])
        text = _read(sub["file"], stdin)
        _check(sub["file"], text)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        out.write(f"sieve script of {sub['address']} installed\n")
    elif name == "show":
        path = _path(config, sub["address"])
        try:
            with open(path, encoding="utf-8") as f:
                out.write(f.read())
        except FileNotFoundError:
            raise ConfigError(f"{sub['address']} has no sieve script") from None
    elif name == "del":
        path = _path(config, sub["address"])
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise ConfigError(f"{sub['address']} has no sieve script") from None
        out.write(f"sieve script of {sub['address']} removed\n")
