"""
A parser for the Sieve language (RFC 5228 section 8): the script text to a
tree of L{Command}s and L{Test}s.

Lexical rules: C{#} and C{/* */} comments, identifiers, tags (C{:name}),
numbers with an optional C{K}/C{M}/C{G} quantifier, quoted strings (with
C{\\\\} escapes), multi-line strings (C{text:} ... C{.}, dot-unstuffed) and
string lists (C{["a", "b"]}).  Checking what the commands and tests mean
(their arguments, C{require}) is the interpreter's job
(L{mailplat.sieve.interpreter.validate}).
"""

import re
from dataclasses import dataclass, field
from typing import List, Tuple, Union

#: The largest script accepted, in octets.
MAX_SCRIPT = 256 * 1024
#: The deepest nesting of blocks and tests accepted.
MAX_DEPTH = 32


class SieveError(ValueError):
    """
    The script is not valid Sieve; the message says where and why.
    """


@dataclass
class Tag:
    """
    A tagged argument (C{:contains}), name lower-cased without the colon.
    """

    name: str


@dataclass
class Test:
    """
    A test: its identifier (lower-cased), arguments and nested tests.
    """

    name: str
    args: List["Argument"] = field(default_factory=list)
    tests: List["Test"] = field(default_factory=list)
    line: int = 0


@dataclass
class Command:
    """
    A command: identifier (lower-cased), arguments, tests (for C{if}),
    and its block (L{None} when it ends with C{;}).
    """

    name: str
    args: List["Argument"] = field(default_factory=list)
    tests: List[Test] = field(default_factory=list)
    block: Union[List["Command"], None] = None
    line: int = 0


#: A positional or tagged argument: a L{Tag}, a number, or a string list.
Argument = Union[Tag, int, List[str]]

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<hash>\#[^\n]*)
  | (?P<bracket>/\*.*?\*/)
  | (?P<multiline>text:[ \t]*(?:\#[^\n]*)?\r?\n(?P<mtext>.*?)(?:^|(?<=\n))\.\r?\n)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>[0-9]+[KkMmGg]?)
  | (?P<tag>:[A-Za-z_][A-Za-z0-9_]*)
  | (?P<identifier>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<special>[;{}()\[\],])
    """,
    re.VERBOSE | re.DOTALL | re.MULTILINE,
)

_QUANTIFIERS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _tokens(text: str) -> List[Tuple[str, object, int]]:
    tokens: List[Tuple[str, object, int]] = []
    pos = 0
    line = 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise SieveError(f"line {line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup
        value = m.group()
        if kind == "mtext":
            kind = "multiline"
        if kind == "multiline":
            body = m.group("mtext")
            # Dot-unstuffing (RFC 5228 2.4.2).
            lines = body.split("\n")
            body = "\n".join(ln[1:] if ln.startswith("..") else ln for ln in lines)
            tokens.append(("string", body, line))
        elif kind == "string":
            tokens.append(("string", re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL), line))
        elif kind == "number":
            unit = value[-1].lower()
            number = int(value[:-1]) * _QUANTIFIERS[unit] if unit in _QUANTIFIERS else int(value)
            tokens.append(("number", number, line))
        elif kind == "tag":
            tokens.append(("tag", value[1:].lower(), line))
        elif kind == "identifier":
            tokens.append(("identifier", value.lower(), line))
        elif kind == "special":
            tokens.append((value, value, line))
        line += value.count("\n")
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, tokens: List[Tuple[str, object, int]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else "end"

    def line(self) -> int:
        if self.pos < len(self.tokens):
            return self.tokens[self.pos][2]
        return self.tokens[-1][2] if self.tokens else 1

    def take(self, kind: str) -> object:
        if self.peek() != kind:
            found = self.peek()
            raise SieveError(f"line {self.line()}: expected {kind!r}, found {found!r}")
        value = self.tokens[self.pos][1]
        self.pos += 1
        return value

    def commands(self, depth: int) -> List[Command]:
        if depth > MAX_DEPTH:
            raise SieveError(f"line {self.line()}: nested too deeply")
        result = []
        while self.peek() == "identifier":
            result.append(self.command(depth))
        return result

    def command(self, depth: int) -> Command:
        line = self.line()
        name = str(self.take("identifier"))
        args, tests = self.arguments(depth)
        if self.peek() == "{":
            self.take("{")
            block = self.commands(depth + 1)
            self.take("}")
            return Command(name, args, tests, block, line)
        self.take(";")
        return Command(name, args, tests, None, line)

    def arguments(self, depth: int) -> Tuple[List[Argument], List[Test]]:
        args: List[Argument] = []
        while True:
            kind = self.peek()
            if kind == "tag":
                args.append(Tag(str(self.take("tag"))))
            elif kind == "number":
                args.append(int(self.take("number")))  # type: ignore[call-overload]
            elif kind == "string":
                args.append([str(self.take("string"))])
            elif kind == "[":
                args.append(self.stringList())
            else:
                break
        tests: List[Test] = []
        if self.peek() == "(":
            self.take("(")
            tests.append(self.test(depth + 1))
            while self.peek() == ",":
                self.take(",")
                tests.append(self.test(depth + 1))
            self.take(")")
        elif self.peek() == "identifier":
            tests.append(self.test(depth + 1))
        return args, tests

    def stringList(self) -> List[str]:
        self.take("[")
        items = [str(self.take("string"))]
        while self.peek() == ",":
            self.take(",")
            items.append(str(self.take("string")))
        self.take("]")
        return items

    def test(self, depth: int) -> Test:
        if depth > MAX_DEPTH:
            raise SieveError(f"line {self.line()}: nested too deeply")
        line = self.line()
        name = str(self.take("identifier"))
        args, tests = self.arguments(depth)
        return Test(name, args, tests, line)


def parse(text: str) -> List[Command]:
    """
    Parse a Sieve script.

    @return: the commands at the top level.
    @raise SieveError: a syntax error (with its line), or a script that is
        too large or nested too deeply.
    """
    if len(text.encode("utf-8")) > MAX_SCRIPT:
        raise SieveError("script too large")
    parser = _Parser(_tokens(text))
    commands = parser.commands(0)
    if parser.peek() != "end":
        raise SieveError(f"line {parser.line()}: unexpected {parser.peek()!r}")
    return commands
