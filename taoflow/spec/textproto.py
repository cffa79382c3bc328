"""Protobuf text-format parsing with errors that name the file, line and column.

google.protobuf reports syntax and schema errors with a line and column but no file; semantic checks done after
parsing have no position at all. `FieldLocator` recovers positions by scanning the text once, so every spec error
a user sees points at the line to fix.
"""

import difflib
import re
from pathlib import Path

from google.protobuf import text_format

from ..errors import SpecError

_PACKAGE_PREFIX = re.compile(r'"?taoflow\.tao\.')
_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)"')
_LINE_COL = re.compile(r"^(\d+):(\d+)\s*:\s*")


def read_spec_text(path):
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise SpecError("spec file is not valid UTF-8", path=path, line=line) from None


def parse_text(text, message, path="<spec>"):
    """Merge text into message like TAO's spec loaders do (text_format.Merge); raise SpecError with position."""
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as e:
        raise _spec_error_from_parse(e, message, path) from None
    except ValueError as e:
        # protobuf checks some values only when it sets them (an enum given a number beyond int32: "Value out of
        # range: N") and raises a bare ValueError without a position: point at the first line holding the value.
        raise SpecError(str(e), path=path, line=_line_of(text, str(e).rpartition(": ")[2])) from None
    except RecursionError:
        raise SpecError("blocks nested too deeply", path=path) from None
    return message


def _line_of(text, token):
    if token:
        for number, line in enumerate(text.splitlines(), 1):
            if token in line:
                return number
    return None


def _spec_error_from_parse(err, message, path):
    raw = str(err)
    m = _LINE_COL.match(raw)
    line, col = (int(m.group(1)), int(m.group(2))) if m else (err.GetLine(), err.GetColumn())
    msg = _PACKAGE_PREFIX.sub('"', raw[m.end():] if m else raw).replace('""', '"')
    unknown = _UNKNOWN_FIELD.search(raw)
    if unknown:
        msg += _suggestion(unknown.group(1), message)
    return SpecError(msg, path=path, line=line, column=col)


def _suggestion(name, message):
    """Offer the closest field name anywhere in the schema: most unknown fields are typos or misplaced fields."""
    names = set()

    def walk(desc, seen):
        if desc.full_name in seen:
            return
        seen.add(desc.full_name)
        for f in desc.fields:
            names.add(f.name)
            if f.message_type is not None:
                walk(f.message_type, seen)

    walk(message.DESCRIPTOR, set())
    close = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.7)
    return f" (did you mean '{close[0]}'?)" if close else ""


_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r\n]+)|(?P<comment>\#[^\n]*)|(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
    r"""|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<num>[-+]?[0-9.][0-9A-Za-z.+-]*)|(?P<punct>[{}<>\[\]:,;])|(?P<other>.)"""
)


class FieldLocator:
    """Positions of fields in a text-format spec, keyed by dotted path ('ssd_config.variances').

    Repeated occurrences are kept in order, so the k-th `data_sources` block is locations[path][k].
    """

    def __init__(self, text):
        self.locations = {}
        self._scan(text)

    def _scan(self, text):
        tokens = []
        line, line_start = 1, 0
        for m in _TOKEN.finditer(text):
            kind = m.lastgroup
            if kind not in ("ws", "comment"):
                tokens.append((kind, m.group(), line, m.start() - line_start + 1))
            nl = m.group().count("\n")
            if nl:
                line += nl
                line_start = m.start() + m.group().rfind("\n") + 1
        stack = []
        i = 0
        while i < len(tokens):
            kind, value, ln, col = tokens[i]
            nxt = tokens[i + 1][1] if i + 1 < len(tokens) else None
            if kind == "ident" and nxt in (":", "{", "<"):
                path = ".".join(stack + [value])
                self.locations.setdefault(path, []).append((ln, col))
                j = i + 1
                if tokens[j][1] == ":":
                    j += 1
                if j < len(tokens) and tokens[j][1] in ("{", "<"):
                    stack.append(value)
                    i = j + 1
                    continue
                i = j + 1  # skip the scalar value
                if j < len(tokens) and tokens[j][1] == "[":
                    while i < len(tokens) and tokens[i][1] != "]":
                        i += 1
                    i += 1
                continue
            if value in ("}", ">") and stack:
                stack.pop()
            i += 1

    def find(self, path, index=0):
        """(line, column) of the index-th occurrence of path, falling back to its closest located parent."""
        while path:
            locs = self.locations.get(path)
            if locs:
                return locs[min(index, len(locs) - 1)]
            path = path.rpartition(".")[0]
            index = 0
        return None, None
