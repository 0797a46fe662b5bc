"""
Checking and running a parsed Sieve script (RFC 5228) against one
message, giving the list of actions to take.

Supported: C{require}; C{if}/C{elsif}/C{else}; the tests C{allof},
C{anyof}, C{not}, C{true}, C{false}, C{header}, C{address}, C{envelope},
C{size}, C{exists} with C{:is}, C{:contains}, C{:matches} and the
comparators C{i;ascii-casemap} (default) and C{i;octet}, and for
addresses C{:all}, C{:localpart}, C{:domain}; the actions C{keep},
C{discard}, C{stop}, C{fileinto} (with C{:create}, RFC 5490), C{redirect},
C{reject} (RFC 5429) and C{vacation} (RFC 5230).  Running the actions is
the caller's job (L{mailplat.sieve.SieveFilter}).
"""

import email.header
import email.utils
import re
from dataclasses import dataclass, field
from email.message import Message
from typing import Dict, List, Optional, Sequence, Tuple, cast

from mailplat.sieve.parser import Command, SieveError, Tag, Test

#: Extensions a script may C{require}.
EXTENSIONS = frozenset(
    ["fileinto", "envelope", "reject", "vacation", "mailbox", "comparator-i;octet", "comparator-i;ascii-casemap"]
)
_COMPARATORS = ("i;ascii-casemap", "i;octet")
_MATCH_TYPES = ("is", "contains", "matches")
_ADDRESS_PARTS = ("all", "localpart", "domain")
#: The most redirects one script run may make (RFC 5228 4.2).
MAX_REDIRECTS = 5


@dataclass
class Action:
    """
    One action the script asked for.

    @ivar name: C{keep}, C{fileinto}, C{redirect}, C{reject}, C{vacation}.
    @ivar mailbox: for C{keep} (C{INBOX}) and C{fileinto}.
    @ivar create: C{fileinto :create}.
    @ivar address: for C{redirect}.
    @ivar reason: for C{reject} and C{vacation}.
    @ivar options: for C{vacation}: C{days}, C{subject}, C{from},
        C{addresses}, C{handle}.
    """

    name: str
    mailbox: Optional[str] = None
    create: bool = False
    address: Optional[str] = None
    reason: Optional[str] = None
    options: Dict[str, object] = field(default_factory=dict)


@dataclass
class MessageContext:
    """
    What a script can look at.

    @ivar headers: the parsed header section.
    @ivar size: the message size in octets.
    @ivar envelopeFrom: the reverse path (C{""} for C{<>}).
    @ivar envelopeTo: the recipient address this delivery is for.
    """

    headers: Message
    size: int
    envelopeFrom: str
    envelopeTo: str


class _Stop(Exception):
    pass


def _split(args: Sequence[object], line: int, what: str) -> Tuple[Dict[str, object], List[object]]:
    tags: Dict[str, object] = {}
    positional: List[object] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        if isinstance(arg, Tag):
            if arg.name in tags:
                raise SieveError(f"line {line}: {what}: :{arg.name} given twice")
            if arg.name in ("comparator", "days", "subject", "from", "addresses", "handle", "over", "under"):
                if i + 1 >= len(items) or isinstance(items[i + 1], Tag):
                    raise SieveError(f"line {line}: {what}: :{arg.name} needs a value")
                tags[arg.name] = items[i + 1]
                i += 2
                continue
            tags[arg.name] = True
        else:
            positional.append(arg)
        i += 1
    return tags, positional


def _strings(value: object, line: int, what: str) -> List[str]:
    if not isinstance(value, list):
        raise SieveError(f"line {line}: {what}: expected a string or string list")
    return value


def _string(value: object, line: int, what: str) -> str:
    items = _strings(value, line, what)
    if len(items) != 1:
        raise SieveError(f"line {line}: {what}: expected one string")
    return items[0]


def _matchOptions(tags: Dict[str, object], line: int, name: str, required: set, allowed: tuple) -> None:
    kinds = [t for t in tags if t in _MATCH_TYPES]
    if len(kinds) > 1:
        raise SieveError(f"line {line}: {name}: only one match type")
    parts = [t for t in tags if t in _ADDRESS_PARTS]
    if len(parts) > 1:
        raise SieveError(f"line {line}: {name}: only one address part")
    for t in tags:
        if t not in allowed:
            raise SieveError(f"line {line}: {name}: unknown tag :{t}")
    if "comparator" in tags:
        comparator = _string(tags["comparator"], line, name)
        # Both comparators are always available (RFC 5228 2.7.3).
        if comparator not in _COMPARATORS:
            raise SieveError(f"line {line}: {name}: unknown comparator {comparator!r}")


def validate(commands: List[Command]) -> None:
    """
    Check a parsed script: known commands and tests, their arguments,
    C{require} before use, C{elsif}/C{else} after C{if}.

    @raise SieveError: the first problem found.
    """
    required: set = set()
    _validateBlock(commands, required, top=True)


def _validateBlock(commands: List[Command], required: set, top: bool) -> None:
    previous = None
    mayRequire = top
    for c in commands:
        if c.name == "require":
            if not mayRequire:
                raise SieveError(f"line {c.line}: require must come first")
            if len(c.args) != 1 or c.tests or c.block is not None:
                raise SieveError(f"line {c.line}: require takes one string list")
            for ext in _strings(c.args[0], c.line, "require"):
                if ext not in EXTENSIONS:
                    raise SieveError(f"line {c.line}: unsupported extension {ext!r}")
                required.add(ext)
            previous = c.name
            continue
        mayRequire = False
        if c.name in ("if", "elsif", "else"):
            if c.name != "if" and previous not in ("if", "elsif"):
                raise SieveError(f"line {c.line}: {c.name} without if")
            if c.block is None or c.args:
                raise SieveError(f"line {c.line}: {c.name} needs a block")
            if c.name == "else":
                if c.tests:
                    raise SieveError(f"line {c.line}: else takes no test")
            elif len(c.tests) != 1:
                raise SieveError(f"line {c.line}: {c.name} takes one test")
            for t in c.tests:
                _validateTest(t, required)
            _validateBlock(c.block, required, top=False)
        else:
            if c.block is not None or c.tests:
                raise SieveError(f"line {c.line}: {c.name} takes no block or test")
            _validateAction(c, required)
        previous = c.name


def _validateAction(c: Command, required: set) -> None:
    tags, positional = _split(c.args, c.line, c.name)
    need = {"fileinto": "fileinto", "reject": "reject", "vacation": "vacation"}.get(c.name)
    if need and need not in required:
        raise SieveError(f"line {c.line}: {c.name} used without require \"{need}\"")
    if c.name in ("keep", "discard", "stop"):
        if c.args:
            raise SieveError(f"line {c.line}: {c.name} takes no arguments")
    elif c.name == "fileinto":
        if set(tags) - {"create"} or len(positional) != 1:
            raise SieveError(f"line {c.line}: fileinto [:create] <mailbox>")
        if "create" in tags and "mailbox" not in required:
            raise SieveError(f"line {c.line}: :create used without require \"mailbox\"")
        _string(positional[0], c.line, "fileinto")
    elif c.name in ("redirect", "reject"):
        if tags or len(positional) != 1:
            raise SieveError(f"line {c.line}: {c.name} takes one string")
        value = _string(positional[0], c.line, c.name)
        if c.name == "redirect" and "@" not in value:
            raise SieveError(f"line {c.line}: redirect needs an address")
    elif c.name == "vacation":
        if set(tags) - {"days", "subject", "from", "addresses", "handle", "mime"} or len(positional) != 1:
            raise SieveError(f"line {c.line}: vacation [:days n] [:subject s] [:from s] [:addresses l] [:handle s] <reason>")
        if "days" in tags and not isinstance(tags["days"], int):
            raise SieveError(f"line {c.line}: vacation :days needs a number")
        for key in ("subject", "from", "handle"):
            if key in tags:
                _string(tags[key], c.line, f"vacation :{key}")
        if "addresses" in tags:
            _strings(tags["addresses"], c.line, "vacation :addresses")
        _string(positional[0], c.line, "vacation")
    else:
        raise SieveError(f"line {c.line}: unknown command {c.name!r}")


def _validateTest(t: Test, required: set) -> None:
    if t.name in ("allof", "anyof"):
        if t.args or not t.tests:
            raise SieveError(f"line {t.line}: {t.name} takes a list of tests")
        for sub in t.tests:
            _validateTest(sub, required)
        return
    if t.name == "not":
        if t.args or len(t.tests) != 1:
            raise SieveError(f"line {t.line}: not takes one test")
        _validateTest(t.tests[0], required)
        return
    if t.tests:
        raise SieveError(f"line {t.line}: {t.name} takes no nested test")
    tags, positional = _split(t.args, t.line, t.name)
    if t.name in ("true", "false"):
        if t.args:
            raise SieveError(f"line {t.line}: {t.name} takes no arguments")
    elif t.name == "header":
        _matchOptions(tags, t.line, t.name, required, ("comparator",) + _MATCH_TYPES)
        if len(positional) != 2:
            raise SieveError(f"line {t.line}: header <names> <keys>")
        _strings(positional[0], t.line, t.name)
        _strings(positional[1], t.line, t.name)
    elif t.name in ("address", "envelope"):
        if t.name == "envelope" and "envelope" not in required:
            raise SieveError(f"line {t.line}: envelope used without require \"envelope\"")
        _matchOptions(tags, t.line, t.name, required, ("comparator",) + _MATCH_TYPES + _ADDRESS_PARTS)
        if len(positional) != 2:
            raise SieveError(f"line {t.line}: {t.name} <names> <keys>")
        names = _strings(positional[0], t.line, t.name)
        _strings(positional[1], t.line, t.name)
        if t.name == "envelope" and any(n.lower() not in ("from", "to") for n in names):
            raise SieveError(f"line {t.line}: envelope parts are \"from\" and \"to\"")
    elif t.name == "exists":
        if tags or len(positional) != 1:
            raise SieveError(f"line {t.line}: exists <names>")
        _strings(positional[0], t.line, t.name)
    elif t.name == "size":
        if positional or len(tags) != 1 or not isinstance(tags.get("over", tags.get("under")), int):
            raise SieveError(f"line {t.line}: size :over|:under <number>")
    else:
        raise SieveError(f"line {t.line}: unknown test {t.name!r}")


def _wildcard(pattern: str) -> "re.Pattern[str]":
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _asciiFold(text: str) -> str:
    return "".join(c.lower() if c.isascii() else c for c in text)


def matches(value: str, key: str, matchType: str = "is", comparator: str = "i;ascii-casemap") -> bool:
    """
    Whether C{value} matches C{key} with a Sieve match type and comparator.
    """
    if comparator == "i;ascii-casemap":
        value, key = _asciiFold(value), _asciiFold(key)
    if matchType == "contains":
        return key in value
    if matchType == "matches":
        return _wildcard(key).fullmatch(value) is not None
    return value == key


def _decode(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:
        return value


def _part(address: str, part: str) -> str:
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if part == "localpart":
        return local
    if part == "domain":
        return domain
    return address


class Interpreter:
    """
    Runs a validated script against one message.
    """

    def __init__(self, commands: List[Command]) -> None:
        self.commands = commands

    def run(self, context: MessageContext) -> List[Action]:
        """
        The actions for C{context}'s message.  The implicit keep (RFC 5228
        2.10.2) is added as C{keep} unless an action cancelled it.
        """
        self._actions: List[Action] = []
        self._cancelled = False
        self._context = context
        try:
            self._block(self.commands)
        except _Stop:
            pass
        actions = self._actions
        if not self._cancelled and not any(a.name in ("keep", "fileinto") for a in actions):
            actions.append(Action("keep", mailbox="INBOX"))
        return actions

    def _block(self, commands: List[Command]) -> None:
        taken = False
        for c in commands:
            if c.name == "if":
                taken = self._test(c.tests[0])
                if taken:
                    self._block(c.block or [])
            elif c.name == "elsif":
                if not taken:
                    taken = self._test(c.tests[0])
                    if taken:
                        self._block(c.block or [])
            elif c.name == "else":
                if not taken:
                    self._block(c.block or [])
                taken = True
            else:
                self._action(c)

    def _action(self, c: Command) -> None:
        tags, positional = _split(c.args, c.line, c.name)
        if c.name == "require":
            return
        if c.name == "stop":
            raise _Stop()
        if c.name == "keep":
            self._add(Action("keep", mailbox="INBOX"))
        elif c.name == "discard":
            self._cancelled = True
        elif c.name == "fileinto":
            self._add(Action("fileinto", mailbox=_string(positional[0], c.line, c.name), create="create" in tags))
            self._cancelled = True
        elif c.name == "redirect":
            if sum(1 for a in self._actions if a.name == "redirect") < MAX_REDIRECTS:
                self._add(Action("redirect", address=_string(positional[0], c.line, c.name)))
            self._cancelled = True
        elif c.name == "reject":
            self._add(Action("reject", reason=_string(positional[0], c.line, c.name)))
            self._cancelled = True
        elif c.name == "vacation":
            options: Dict[str, object] = {}
            for key in ("days", "subject", "from", "addresses", "handle"):
                if key in tags:
                    value = tags[key]
                    options[key] = value[0] if isinstance(value, list) and key != "addresses" else value
            self._add(Action("vacation", reason=_string(positional[0], c.line, c.name), options=options))

    def _add(self, action: Action) -> None:
        for a in self._actions:
            if a.name == action.name and a.mailbox == action.mailbox and a.address == action.address and a.name != "vacation":
                return  # RFC 5228 2.10.3: duplicates are done once
        self._actions.append(action)

    def _test(self, t: Test) -> bool:
        if t.name == "true":
            return True
        if t.name == "false":
            return False
        if t.name == "not":
            return not self._test(t.tests[0])
        if t.name == "allof":
            return all(self._test(s) for s in t.tests)
        if t.name == "anyof":
            return any(self._test(s) for s in t.tests)
        tags, positional = _split(t.args, t.line, t.name)
        headers = self._context.headers
        if t.name == "exists":
            return all(headers.get(n) is not None for n in _strings(positional[0], t.line, t.name))
        if t.name == "size":
            # validate() made sure the one of them given holds an int.
            if "over" in tags:
                return self._context.size > cast(int, tags["over"])
            return self._context.size < cast(int, tags["under"])
        matchType = next((m for m in _MATCH_TYPES if m in tags), "is")
        comparator = _string(tags["comparator"], t.line, t.name) if "comparator" in tags else "i;ascii-casemap"
        names = _strings(positional[0], t.line, t.name)
        keys = _strings(positional[1], t.line, t.name)
        values: List[str] = []
        if t.name == "header":
            for n in names:
                values.extend(_decode(str(v)) for v in headers.get_all(n, []))
        elif t.name == "address":
            part = next((p for p in _ADDRESS_PARTS if p in tags), "all")
            for n in names:
                for _, address in email.utils.getaddresses([str(v) for v in headers.get_all(n, [])]):
                    if address:
                        values.append(_part(address, part))
        else:
            part = next((p for p in _ADDRESS_PARTS if p in tags), "all")
            for n in names:
                address = self._context.envelopeFrom if n.lower() == "from" else self._context.envelopeTo
                values.append(_part(address, part) if address else "")
        return any(matches(v, k, matchType, comparator) for v in values for k in keys)
