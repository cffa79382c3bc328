"""Collects every problem in a spec, each with its position, and raises them together as one SpecError."""

import ast
import math
import operator

from ..errors import SpecError
from .textproto import FieldLocator


class Checker:
    def __init__(self, path, text):
        self.path = str(path)
        self.locator = FieldLocator(text)
        self.problems = []

    def fail(self, field, message, index=0):
        line, col = self.locator.find(field, index)
        self.problems.append((line, col, f"{field}: {message}"))

    def require_range(self, field, value, lo, hi, lo_open=True, hi_open=True, index=0):
        ok_lo = value > lo if lo_open else value >= lo
        ok_hi = value < hi if hi_open else value <= hi
        if not (ok_lo and ok_hi and math.isfinite(value)):
            interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            self.fail(field, f"must be in {interval}, got {value:g}", index)

    def raise_if_any(self):
        if not self.problems:
            return
        # Report in file order; the first problem carries the position, the rest follow on their own lines.
        problems = sorted(self.problems, key=lambda p: (p[0] or 0, p[1] or 0))
        line, col, first = problems[0]
        rest = [f"{self.path}:{ln}: {msg}" if ln else f"{self.path}: {msg}" for ln, _, msg in problems[1:]]
        message = first + ("".join("\n  " + r for r in rest) if rest else "")
        raise SpecError(message, path=self.path, line=line, column=col)


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def literal_numbers(text):
    """Evaluate a TAO list-valued string field such as "[1.0, 2.0, 0.5, 3.0, 1.0/3.0]".

    TAO evaluates these strings with Python's eval(); taoflow accepts the same numeric literals, lists, tuples and
    + - * / arithmetic, and nothing else, so a spec can never execute code.
    """

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, (ast.List, ast.Tuple)):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"unsupported expression {ast.unparse(node)!r}")

    try:
        return ev(ast.parse(text.strip(), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, TypeError) as e:
        raise ValueError(f"not a list of numbers: {text!r} ({e})") from None
