"""
The C{mailplat dkim ...} admin command: DKIM signing keys.

    mailplat ... dkim keygen DOMAIN [--selector S]

C{keygen} writes an RSA-2048 key to C{<dataDir>/dkim/<domain>.<selector>.key}
(mode 0600; an existing key is kept) and prints the DNS TXT record to
publish.  A running server signs with a new key from the next message on
(the key file is looked up for each message).
"""

import getopt
import sys
from typing import Any, List

from twisted.internet import defer
from twisted.python import usage

from mailplat.errors import ConfigError
from mailplat.policy.dkim import keygen


class DkimKeygen(usage.Options):
    synopsis = "DOMAIN [--selector S]"
    description = "Make a DKIM signing key for DOMAIN and print its DNS TXT record."
    optParameters = [["selector", "s", "mail", "The DKIM selector (the key's name in DNS)."]]

    def parseOptions(self, options: List[str] = None) -> None:  # type: ignore[assignment]
        """
        Accept the options after the domain too (C{keygen DOMAIN -s S}).
        """
        if options is None:
            options = sys.argv[1:]
        try:
            opts, args = getopt.gnu_getopt(options, "s:", ["selector=", "help"])
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e)) from None
        flat = [item for pair in opts for item in pair if item]
        usage.Options.parseOptions(self, flat + ["--"] + args)

    def parseArgs(self, domain: str) -> None:  # type: ignore[override]
        self["domain"] = domain.strip().rstrip(".").lower()


class DkimOptions(usage.Options):
    synopsis = "keygen DOMAIN [--selector S]"
    description = "DKIM signing keys."
    subCommands = [["keygen", None, DkimKeygen, "Make a signing key and print the DNS record to publish."]]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a dkim command is needed: keygen")


def run(options: DkimOptions, config: Any, out: Any = None) -> "defer.Deferred[None]":
    """
    Carry out a C{dkim} command.

    @param config: the L{Config <mailplat.config.Config>} (its C{dataDir}).
    @param out: where to write (standard output by default).
    @return: a Deferred firing when done, or failing with L{ConfigError}.
    """
    if out is None:
        out = sys.stdout
    if options.subCommand == "keygen":
        sub = options.subOptions
        try:
            record = keygen(sub["domain"], sub["selector"], config.dataDir)
        except FileExistsError:
            return defer.fail(ConfigError(f"a DKIM key for {sub['domain']} with selector {sub['selector']} exists already; choose another --selector"))
        except ValueError as e:
            return defer.fail(ConfigError(str(e)))
        except OSError as e:
            return defer.fail(ConfigError(f"cannot write the DKIM key in {config.dataDir}: {e.strerror}"))
        out.write(f"key written for {sub['domain']} (selector {sub['selector']}); publish this DNS record:\n{record}\n")
        return defer.succeed(None)
    return defer.fail(ConfigError(f"unknown dkim command {options.subCommand!r}"))
