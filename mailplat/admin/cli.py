"""
The C{mailplat} admin command: users, domains and aliases, the outbound
queue, certificates and configuration checks.

    mailplat [--config FILE] [--data-dir DIR] user add ADDRESS [--password-stdin]
    mailplat ... user passwd ADDRESS [--password-stdin]
    mailplat ... user del ADDRESS
    mailplat ... user list
    mailplat ... check-config
    mailplat ... cert selfsigned [--hostname NAME]
    mailplat ... domain add|remove DOMAIN | domain list
    mailplat ... alias add ALIAS TARGET... | alias remove ALIAS [TARGET] | alias list
    mailplat ... queue list | show ID | flush [ID] | delete ID | hold ID | release ID
    mailplat ... dkim keygen DOMAIN [--selector S]
    mailplat ... sieve set ADDRESS FILE | sieve check FILE | sieve show ADDRESS | sieve del ADDRESS
    mailplat ... migrate --from STORE --to STORE [--user ADDRESS] [-q]
"""

import getpass
import os
import sys
from dataclasses import replace
from typing import Any, Generator, List, Optional

from twisted.internet import defer, task
from twisted.python import usage

from mailplat.admin import directory_cmd, dkim_cmd, migrate_cmd, queue_cmd, sieve_cmd
from mailplat.address import normalizeAddress, splitAddress
from mailplat.auth.passwd import PasswordFile
from mailplat.config import Config, ConfigOptions
from mailplat.errors import ConfigError, NoSuchAccount
from mailplat.imap.index import removeIndex
from mailplat.plugins import makeCheckers, makeStore


class _AddressOptions(usage.Options):
    def parseArgs(self, address: str) -> None:  # type: ignore[override]
        self["address"] = address


class _PasswordOptions(_AddressOptions):
    optFlags = [["password-stdin", None, "Read the password from the first line of standard input."]]

    def parseOptions(self, options: Optional[List[str]] = None) -> None:
        """
        Accept the flag after the address too (C{user add ADDRESS
        --password-stdin}, as documented); an address never starts with C{-}.
        """
        options = list(sys.argv[1:] if options is None else options)
        flags = [o for o in options if o.startswith("-")]
        super().parseOptions(flags + [o for o in options if not o.startswith("-")])


class UserAdd(_PasswordOptions):
    synopsis = "ADDRESS [--password-stdin]"
    description = "Create an account and set its password."


class UserPasswd(_PasswordOptions):
    synopsis = "ADDRESS [--password-stdin]"
    description = "Change an account's password."


class UserDel(_AddressOptions):
    synopsis = "ADDRESS"
    description = "Delete an account, its password and all its mail."


class UserList(usage.Options):
    synopsis = ""
    description = "List the accounts."


class UserOptions(usage.Options):
    synopsis = "add|passwd|del|list ..."
    subCommands = [
        ["add", None, UserAdd, UserAdd.description],
        ["passwd", None, UserPasswd, UserPasswd.description],
        ["del", None, UserDel, UserDel.description],
        ["list", None, UserList, UserList.description],
    ]

    def postOptions(self) -> None:
        if not self.subCommand:
            raise usage.UsageError("user needs one of: add, passwd, del, list")


class CheckConfig(usage.Options):
    synopsis = ""
    description = "Load the configuration, the store and the checkers, and say whether all is well."


class CertSelfSigned(usage.Options):
    synopsis = "[--hostname NAME]"
    description = (
        "Make a new self-signed certificate and key in <data-dir>/tls/ (replacing the one for that name); "
        "the server uses it when tls.cert is not set."
    )
    optParameters = [["hostname", None, None, "The name to certify. Default: server.hostname."]]


class CertOptions(usage.Options):
    synopsis = "selfsigned [--hostname NAME]"
    subCommands = [["selfsigned", None, CertSelfSigned, CertSelfSigned.description]]

    def postOptions(self) -> None:
        if not self.subCommand:
            raise usage.UsageError("cert needs: selfsigned")


class AdminOptions(ConfigOptions):
    """
    The C{mailplat} command's options.
    """

    synopsis = "mailplat [--config FILE] [--data-dir DIR] [--store NAME[:ARGS]] COMMAND ..."
    optParameters = [
        ["store", None, None, "The store, NAME[:ARGS], when not the one in the config file (as the server's --store)."],
    ]

    def applyCommandLine(self, config: Config) -> Config:
        """
        C{--store} wins over the config file, as it does for the server.
        """
        if self["store"]:
            config = replace(config, store=self["store"])
        return config
    subCommands = [
        ["user", None, UserOptions, "Manage accounts: add, passwd, del, list."],
        ["check-config", None, CheckConfig, CheckConfig.description],
        ["cert", None, CertOptions, "TLS certificates: selfsigned."],
        ["domain", None, directory_cmd.DomainOptions, "Domains mail is received for: add, remove, list."],
        ["alias", None, directory_cmd.AliasOptions, "Aliases and forwards: add, remove, list."],
        ["queue", None, queue_cmd.QueueOptions, "The outbound queue: list, show, flush, delete, hold, release."],
        ["dkim", None, dkim_cmd.DkimOptions, "DKIM signing keys: keygen."],
        ["sieve", None, sieve_cmd.SieveOptions, "Sieve filters: set, check, show, del."],
        ["migrate", None, migrate_cmd.MigrateOptions,
         "Move accounts between stores (or import a Dovecot/Courier Maildir), verified."],
    ]

    def postOptions(self) -> None:
        if not self.subCommand:
            raise usage.UsageError("a command is needed: user, check-config, cert, domain, alias, queue, dkim, sieve or migrate")


def readPassword(fromStdin: bool) -> str:
    """
    The new password: the first line of standard input, or asked twice on
    the terminal.

    @raise ConfigError: empty, or the two entries differ.
    """
    if fromStdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise ConfigError("the two passwords differ; nothing changed")
    if not password:
        raise ConfigError("the password is empty; nothing changed")
    return password


def checkAddress(config: Config, address: str) -> str:
    """
    The normalised address, refused unless it is C{local@domain} in one of
    the configured domains (when some are configured).
    """
    normalized = normalizeAddress(address)
    local, domain = splitAddress(normalized)
    if not local or not domain or "/" in normalized or "\x00" in normalized or local.startswith(".") or ".." in domain:
        raise ConfigError(f"{address!r} is not an address of the form user@domain")
    if config.domains and domain not in config.domains:
        raise ConfigError(f"{address!r}: domain {domain!r} is not in server.domains ({', '.join(config.domains)})")
    return normalized


@defer.inlineCallbacks
def run(options: AdminOptions, config: Config, out: Any = sys.stdout) -> Generator["defer.Deferred[Any]", Any, None]:
    """
    Carry out the parsed command against the configured store.
    """
    if options.subCommand == "cert":
        makeCertificate(config, options.subOptions.subOptions["hostname"], out)
        return
    if options.subCommand in ("domain", "alias"):
        yield directory_cmd.run(options.subOptions, config, out)
        return
    if options.subCommand == "queue":
        yield queue_cmd.run(options.subOptions, config, out)
        return
    if options.subCommand == "dkim":
        yield dkim_cmd.run(options.subOptions, config, out)
        return
    if options.subCommand == "sieve":
        yield sieve_cmd.run(options.subOptions, config, out)
        return
    if options.subCommand == "migrate":
        yield migrate_cmd.run(options.subOptions, config, out)
        return
    store = makeStore(config.store, config.dataDir, f"{config.source or 'command line'}: server.store")
    passwords = PasswordFile(os.path.join(config.dataDir, "passwd"))
    try:
        if options.subCommand == "check-config":
            makeCheckers(list(config.auth), config.dataDir, f"{config.source or 'command line'}: server.auth")
            accounts = yield store.listAccounts()
            out.write(f"configuration OK ({config.source or 'defaults'}); store {config.store} holds {len(accounts)} account(s)\n")
            return
        user = options.subOptions
        verb = user.subCommand
        if verb == "list":
            accounts = set((yield store.listAccounts())) | set(passwords.users())
            for address in sorted(accounts):
                out.write(address + "\n")
            return
        address = checkAddress(config, user.subOptions["address"])
        if verb == "add":
            if (yield store.hasAccount(address)) or passwords.hashFor(address):
                raise ConfigError(f"{address} exists already; use 'user passwd' to change its password")
            password = readPassword(user.subOptions["password-stdin"])
            yield store.getAccount(address, create=True)
            passwords.setPassword(address, password)
            yield _storeUser(store, address, password)
            out.write(f"added {address}\n")
        elif verb == "passwd":
            if not ((yield store.hasAccount(address)) or passwords.hashFor(address)):
                raise ConfigError(f"{address}: no such user")
            password = readPassword(user.subOptions["password-stdin"])
            passwords.setPassword(address, password)
            yield _storeUser(store, address, password)
            out.write(f"password changed for {address}\n")
        elif verb == "del":
            known = passwords.remove(address)
            deleteUser = getattr(store, "deleteUser", None)
            if deleteUser is not None and (yield deleteUser(address)):
                known = True
            try:
                yield store.deleteAccount(address)
                known = True
            except NoSuchAccount:
                pass
            # The message index holds the text of the account's mail.
            try:
                if removeIndex(config.indexDirectory, address):
                    known = True
            except OSError as e:
                raise ConfigError(f"{address}: could not delete its message index: {e}")
            if not known:
                raise ConfigError(f"{address}: no such user")
            out.write(f"deleted {address}\n")
    finally:
        yield store.close()


def _storeUser(store: Any, address: str, password: str) -> Any:
    """
    A store that keeps users itself (the SQL store: C{--auth sql} checks
    its table) gets the password too; others have nothing to do.
    """
    setUserPassword = getattr(store, "setUserPassword", None)
    if setUserPassword is None:
        return defer.succeed(None)
    return setUserPassword(address, password)


def makeCertificate(config: Config, hostname: Optional[str], out: Any) -> None:
    """
    C{cert selfsigned}: a new self-signed certificate for C{hostname} (the
    configured host name when L{None}) in the data directory.

    @raise ConfigError: a bad host name, or the files cannot be written.
    """
    from mailplat.config import _domain
    from mailplat.tls import selfSignedFiles

    name = _domain("--hostname", hostname) if hostname else config.hostname
    cert, key = selfSignedFiles(config.dataDir, name, force=True)
    out.write(f"self-signed certificate for {name}: {cert} (key {key})\n")
    if config.tlsCert:
        out.write(f"note: tls.cert is set ({config.tlsCert}), so the server uses that one, not this\n")


def main(argv: Optional[List[str]] = None) -> None:
    """
    The console entry point; exits 0 on success, 1 with one line on error.
    """
    options = AdminOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
        config = options.resolveConfig()
    except (usage.UsageError, ConfigError) as e:
        sys.exit(f"mailplat: {e}")

    def go(reactor: Any) -> defer.Deferred:
        def failed(failure: Any) -> None:
            if failure.check(ConfigError, NoSuchAccount):
                raise SystemExit(f"mailplat: {failure.value}")
            raise SystemExit(f"mailplat: failed: {failure.getErrorMessage()}")

        return run(options, config).addErrback(failed)

    task.react(go)
