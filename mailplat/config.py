"""
mailplat's configuration: defaults, the TOML file, the command line.

Precedence: an option given on the command line wins over the config file,
which wins over the embedded defaults.  Every error is a
L{mailplat.errors.ConfigError} whose message names the file (or the
command line), the key and what was wrong, ready to be shown as one line.
"""

import os
import socket
import tomllib
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

from twisted.python import usage

from mailplat.errors import ConfigError

# The listeners this version serves, with their embedded defaults (DESIGN.md:
# unprivileged ports on 127.0.0.1 so a newcomer needs no root).
DEFAULT_LISTENERS: Dict[str, str] = {
    "smtp": "tcp:2525:interface=127.0.0.1",
    "submission": "tcp:2587:interface=127.0.0.1",
    "smtps": "tcp:2465:interface=127.0.0.1",
    "pop3": "tcp:1110:interface=127.0.0.1",
    "pop3s": "tcp:1995:interface=127.0.0.1",
    "imap": "tcp:1143:interface=127.0.0.1",
    "imaps": "tcp:1993:interface=127.0.0.1",
}

#: The listeners that speak TLS from the first octet (implicit TLS).
IMPLICIT_TLS_LISTENERS = ("smtps", "pop3s", "imaps")

# Listener endpoint strings may be set to this to turn a listener off.
DISABLED = "none"


@dataclass(frozen=True)
class Config:
    """
    The resolved configuration of one server.

    @ivar source: where the file values came from (a path), or None.
    @ivar hostname: the name the server greets with and puts in headers.
    @ivar dataDir: where the server keeps its state (mail, passwords).
    @ivar domains: the domains mail is accepted for; empty means "every
        domain that has an account".
    @ivar store: the store, C{NAME[:ARGS]}.
    @ivar auth: checker specifications, C{NAME[:ARGS]} each (strcred style).
    @ivar listeners: protocol name to Twisted server endpoint string (or
        L{DISABLED}).
    @ivar maxMessageSize: largest message accepted (SMTP SIZE, APPEND), octets.
    @ivar smtpTimeout: idle timeout of an SMTP session, seconds.
    @ivar pop3Timeout: idle timeout of a POP3 session, seconds.
    @ivar imapTimeout: IMAP autologout timer, seconds.
    @ivar tlsCert: PEM file with the server's certificate (its chain may
        follow it), or None for a self-signed one made in the data
        directory.
    @ivar tlsKey: PEM file with the certificate's private key, or None.
    @ivar tlsSNI: server name (lower case, C{*.} wildcard allowed) to
        C{(cert, key)} paths, chosen by the name a client asks for (SNI).
    @ivar allowPlaintext: allow passwords over unencrypted connections from
        any address (by default only from loopback).
    @ivar workers: processes serving the listeners (the twistd process and
        C{workers - 1} children sharing its sockets); None means one per
        CPU core.
    @ivar metricsListener: endpoint of the Prometheus metrics page, or
        L{DISABLED}.
    @ivar imapIndex: keep the per-node IMAP message index (summaries and
        full-text search) on disk.
    @ivar imapIndexDir: where that index lives; None means
        C{<dataDir>/index}.
    """

    source: Optional[str] = None
    hostname: str = field(default_factory=lambda: socket.getfqdn() or "localhost")
    dataDir: str = "data"
    domains: Tuple[str, ...] = ()
    store: str = "maildir"
    auth: Tuple[str, ...] = ("mailplat",)
    listeners: Dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LISTENERS))
    maxMessageSize: int = 50 * 1024 * 1024
    smtpTimeout: float = 300.0
    pop3Timeout: float = 600.0
    imapTimeout: float = 1800.0
    tlsCert: Optional[str] = None
    tlsKey: Optional[str] = None
    tlsSNI: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    allowPlaintext: bool = False
    relaySmarthost: Optional[str] = None
    relayUser: Optional[str] = None
    relayPassword: Optional[str] = None
    relayVerifyTLS: bool = False
    relayConcurrency: int = 20
    relayRetryBase: float = 300.0
    relayRetryMax: float = 4 * 3600.0
    relayLifetime: float = 5 * 86400.0
    relayDelayWarning: float = 4 * 3600.0
    relayConnectTimeout: float = 30.0
    relayCommandTimeout: float = 300.0
    maxRecipientsPerMessage: int = 1000
    plusDelimiter: str = "+"
    workers: Optional[int] = None
    maxConnectionsPerAddress: int = 20
    maxConnections: int = 1000
    exemptLoopback: bool = True
    loginDelayAfter: int = 5
    loginRefuseAfter: int = 30
    loginWindow: float = 900.0
    loginMaxDelay: float = 30.0
    quota: int = 0
    maxErrors: int = 20
    sieve: bool = True
    imapIndex: bool = True
    imapIndexDir: Optional[str] = None
    policySpf: str = "tag"
    policyDkimVerify: bool = True
    policyDmarc: str = "reject"
    policyDnsblZones: Tuple[str, ...] = ()
    policyDnsbl: str = "reject"
    dkimSelector: str = "mail"
    rspamdUrl: Optional[str] = None
    spamd: Optional[str] = None
    spamRejectScore: Optional[float] = None
    spamAddHeaderScore: Optional[float] = None
    spamUnavailable: str = "accept"
    greylist: bool = False
    greylistDelay: float = 300.0
    policyTrustLoopback: bool = True
    metricsListener: str = DISABLED

    @property
    def indexDirectory(self) -> str:
        """
        Where the IMAP message index files are: C{imapIndexDir}, else
        C{<dataDir>/index}.
        """
        return self.imapIndexDir or os.path.join(self.dataDir, "index")


def _domain(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a domain name, got {value!r}")
    domain = value.strip().lower().rstrip(".")
    labels = domain.split(".")
    if any(not label or len(label) > 63 for label in labels) or len(domain) > 253:
        raise ConfigError(f"{where}: {value!r} is not a valid domain name")
    for ch in domain:
        if not (ch.isalnum() or ch in "-."):
            raise ConfigError(f"{where}: {value!r} is not a valid domain name")
    return domain


def _endpoint(where: str, value: Any) -> str:
    from twisted.internet import endpoints, reactor

    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a Twisted endpoint string such as 'tcp:2525:interface=127.0.0.1', got {value!r}")
    if value == DISABLED:
        return value
    try:
        endpoints.serverFromString(reactor, value)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{where}: {value!r} is not a valid endpoint ({e})") from None
    return value


def _positive(where: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ConfigError(f"{where}: expected a positive {'whole number' if kind is int else 'number'}, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{where}: must be greater than 0, got {value!r}")
    return kind(value)


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _stringList(where: str, value: Any) -> List[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    return list(value)


def _boolean(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _sniName(where: str, value: str) -> str:
    name = value.strip().lower().rstrip(".")
    if name.startswith("*."):
        return "*." + _domain(where, name[2:])
    return _domain(where, name)


def _sni(where: str, value: Any) -> Dict[str, Tuple[str, str]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table of host names, such as sni = {{\"mail.example.test\" = {{cert = \"a.pem\", key = \"a.key\"}}}}")
    result = {}
    for host, entry in value.items():
        here = f"{where}.{host!r}"
        name = _sniName(here, host)
        if not isinstance(entry, dict) or set(entry) != {"cert", "key"}:
            raise ConfigError(f"{here}: expected {{cert = \"PEM file\", key = \"PEM file\"}}, got {entry!r}")
        result[name] = (_string(f"{here}.cert", entry["cert"]), _string(f"{here}.key", entry["key"]))
    return result


def _hostPort(where: str, value: Any) -> str:
    from mailplat.relay import parseHostPort

    value = _string(where, value)
    try:
        parseHostPort(value)
    except ValueError as e:
        raise ConfigError(f"{where}: {value!r} is not host[:port] ({e})") from None
    return value


def _octets(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: expected a whole number of octets (0 for no limit), got {value!r}")
    return value


def _choice(where: str, value: Any, choices: Tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _nonNegative(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{where}: expected a number of seconds (0 turns it off), got {value!r}")
    return float(value)


def _delimiter(where: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > 1 or (value and value in "@\\\""):
        raise ConfigError(f"{where}: expected one character such as '+' (or '' to turn it off), got {value!r}")
    return value


# The file's keys: table -> key -> (Config field, converter).
_SCHEMA: Dict[str, Dict[str, Tuple[str, Any]]] = {
    "server": {
        "hostname": ("hostname", _domain),
        "data_dir": ("dataDir", _string),
        "domains": ("domains", lambda w, v: tuple(_domain(w, d) for d in _stringList(w, v))),
        "store": ("store", _string),
        "auth": ("auth", lambda w, v: tuple(_stringList(w, v))),
        "workers": ("workers", lambda w, v: _positive(w, v, int)),
    },
    "listen": {**{name: (name, _endpoint) for name in DEFAULT_LISTENERS}, "metrics": ("metricsListener", _endpoint)},
    "tls": {
        "cert": ("tlsCert", _string),
        "key": ("tlsKey", _string),
        "sni": ("tlsSNI", _sni),
    },
    "auth": {
        "allow_plaintext": ("allowPlaintext", _boolean),
        "throttle_delay_after": ("loginDelayAfter", lambda w, v: _positive(w, v, int)),
        "throttle_refuse_after": ("loginRefuseAfter", lambda w, v: _positive(w, v, int)),
        "throttle_window": ("loginWindow", lambda w, v: _positive(w, v, float)),
        "throttle_max_delay": ("loginMaxDelay", lambda w, v: _positive(w, v, float)),
    },
    "relay": {
        "smarthost": ("relaySmarthost", lambda w, v: _hostPort(w, v)),
        "smarthost_user": ("relayUser", _string),
        "smarthost_password": ("relayPassword", _string),
        "verify_tls": ("relayVerifyTLS", _boolean),
        "concurrency": ("relayConcurrency", lambda w, v: _positive(w, v, int)),
        "retry_base": ("relayRetryBase", lambda w, v: _positive(w, v, float)),
        "retry_max": ("relayRetryMax", lambda w, v: _positive(w, v, float)),
        "lifetime": ("relayLifetime", lambda w, v: _positive(w, v, float)),
        "delay_warning": ("relayDelayWarning", lambda w, v: _nonNegative(w, v)),
        "connect_timeout": ("relayConnectTimeout", lambda w, v: _positive(w, v, float)),
        "command_timeout": ("relayCommandTimeout", lambda w, v: _positive(w, v, float)),
    },
    "delivery": {
        "max_recipients_per_message": ("maxRecipientsPerMessage", lambda w, v: _positive(w, v, int)),
        "plus_delimiter": ("plusDelimiter", lambda w, v: _delimiter(w, v)),
        "sieve": ("sieve", _boolean),
    },
    "imap": {
        "index": ("imapIndex", _boolean),
        "index_dir": ("imapIndexDir", _string),
    },
    "policy": {
        "spf": ("policySpf", lambda w, v: _choice(w, v, ("off", "tag", "reject"))),
        "dkim_verify": ("policyDkimVerify", _boolean),
        "dmarc": ("policyDmarc", lambda w, v: _choice(w, v, ("off", "tag", "junk", "reject"))),
        "dnsbl_zones": ("policyDnsblZones", lambda w, v: tuple(_domain(w, d) for d in _stringList(w, v))),
        "dnsbl": ("policyDnsbl", lambda w, v: _choice(w, v, ("tag", "junk", "reject"))),
        "dkim_selector": ("dkimSelector", _string),
        "rspamd_url": ("rspamdUrl", _string),
        "spamd": ("spamd", lambda w, v: _hostPort(w, v)),
        "spam_reject_score": ("spamRejectScore", lambda w, v: _number(w, v)),
        "spam_add_header_score": ("spamAddHeaderScore", lambda w, v: _number(w, v)),
        "spam_unavailable": ("spamUnavailable", lambda w, v: _choice(w, v, ("accept", "tempfail"))),
        "greylist": ("greylist", _boolean),
        "greylist_delay": ("greylistDelay", lambda w, v: _positive(w, v, float)),
        "trust_loopback": ("policyTrustLoopback", _boolean),
    },
    "limits": {
        "max_message_size": ("maxMessageSize", lambda w, v: _positive(w, v, int)),
        "smtp_timeout": ("smtpTimeout", lambda w, v: _positive(w, v, float)),
        "pop3_timeout": ("pop3Timeout", lambda w, v: _positive(w, v, float)),
        "imap_timeout": ("imapTimeout", lambda w, v: _positive(w, v, float)),
        "max_connections_per_address": ("maxConnectionsPerAddress", lambda w, v: _positive(w, v, int)),
        "max_connections": ("maxConnections", lambda w, v: _positive(w, v, int)),
        "exempt_loopback": ("exemptLoopback", _boolean),
        "quota": ("quota", lambda w, v: _octets(w, v)),
        "max_errors": ("maxErrors", lambda w, v: _positive(w, v, int)),
    },
}


def loadFile(path: str, base: Optional[Config] = None) -> Config:
    """
    Read a TOML config file over C{base} (the defaults when omitted).

    @raise ConfigError: the file cannot be read, is not TOML, or has an
        unknown key or a bad value; the message names the file and key.
    """
    config = base or Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    changes: Dict[str, Any] = {"source": path}
    listeners = dict(config.listeners)
    for table, values in data.items():
        schema = _SCHEMA.get(table)
        if schema is None:
            if not isinstance(values, dict):
                # A key written before any section header.
                homes = sorted(name for name, keys in _SCHEMA.items() if table in keys)
                where = (f"it belongs in [{homes[0]}]" if len(homes) == 1 else
                         f"keys go in a section ({', '.join(f'[{name}]' for name in sorted(_SCHEMA))})")
                raise ConfigError(f"{path}: key '{table}' is outside any section: {where}")
            raise ConfigError(f"{path}: unknown section [{table}] (known: {', '.join(sorted(_SCHEMA))})")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: '{table}' must be a section ([{table}])")
        for key, value in values.items():
            if key not in schema:
                raise ConfigError(f"{path}: unknown key '{table}.{key}' (known: {', '.join(sorted(schema))})")
            attr, convert = schema[key]
            converted = convert(f"{path}: {table}.{key}", value)
            if table == "listen" and key in DEFAULT_LISTENERS:
                listeners[attr] = converted
            else:
                changes[attr] = converted
    changes["listeners"] = listeners
    # Relative paths in a file are relative to the file, not to the
    # directory the server happens to be started from.
    here = os.path.dirname(os.path.abspath(path))

    def relative(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(here, p)

    for attr in ("dataDir", "tlsCert", "tlsKey", "imapIndexDir"):
        if attr in changes:
            changes[attr] = relative(changes[attr])
    if "tlsSNI" in changes:
        changes["tlsSNI"] = {name: (relative(c), relative(k)) for name, (c, k) in changes["tlsSNI"].items()}
    config = replace(config, **changes)
    checkTLS(config, path)
    return config


def workerCount(config: Config) -> int:
    """
    How many processes serve: C{config.workers}, or one per CPU core.
    """
    if config.workers is not None:
        return config.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def checkTLS(config: Config, where: str) -> None:
    """
    A certificate needs its key and the other way round.

    @param where: the file or C{"command line"}, for the message.
    @raise ConfigError: one of the two is missing.
    """
    if bool(config.tlsCert) != bool(config.tlsKey):
        given, missing = ("cert", "key") if config.tlsCert else ("key", "cert")
        raise ConfigError(
            f"{where}: tls.{given} is set but tls.{missing} is not (--tls-cert and --tls-key go together)"
        )


class ConfigOptions(usage.Options):
    """
    The options every mailplat command shares (the server and the admin
    commands): where the config file and the data directory are.
    """

    optParameters = [
        ["config", "c", None, "Config file (TOML); see etc/mailplat.toml for every key."],
        ["data-dir", "d", None, "Data directory (mail, passwords, state). Default: ./data"],
    ]

    def resolveConfig(self) -> Config:
        """
        Defaults, then the config file, then the command line.

        @raise ConfigError: anything wrong, said in one line.
        """
        config = Config()
        if self["config"]:
            config = loadFile(self["config"], config)
        if self["data-dir"]:
            config = replace(config, dataDir=self["data-dir"])
        config = self.applyCommandLine(config)
        checkTLS(config, config.source or "command line")
        return config

    def applyCommandLine(self, config: Config) -> Config:
        """
        Apply options beyond the shared ones; subclasses extend.
        """
        return config
