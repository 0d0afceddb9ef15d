"""Jinja's sandbox for staff-written templates (a campaign's bodies, the email footer), with limits.

Jinja's sandbox keeps a template away from Python's internals and from our models
(SECURITY.md 15), but not from the machine's memory and time: `{{ 'a' * 10**9 }}` builds a
gigabyte before anything can look at it, and two nested loops over `range(100000)` run for
minutes. A template runs when staff save it (the trial renders), when they preview it, and
once per recipient when a campaign is sent, so either would stall a web worker or the job
worker. Here every render has a budget, and a template that goes over it raises
TemplateLimit, which the callers report as that template failing:

- **size**: no text or collection a template builds, and not its output, is larger than
  PORTAL_MAX_BODY_BYTES characters, the largest body the outbox accepts. What can multiply a
  size (`*`, `**`, `+`, `%` and `~`, padding, replacing and joining, a string's format) is
  checked *before* it runs, from the sizes of its operands; the text a macro or a block
  gathers (`self.<block>()` too) is counted as it grows;
- **steps**: loop rounds, calls (a macro's too) and filters, at most MAX_STEPS in one render;
- **time**: at most MAX_SECONDS for one render, checked at every step.

The environment is Jinja's immutable sandbox: a template cannot change a list or a dict in
place (nothing a mail needs), so only the assignments above can grow what it holds.
"""

import re
import time
from collections.abc import ItemsView
from collections.abc import KeysView
from collections.abc import ValuesView
from contextvars import ContextVar
from dataclasses import dataclass

from flask import current_app
from flask import has_app_context
from jinja2 import nodes
from jinja2 import pass_eval_context
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.runtime import markup_join
from jinja2.runtime import str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

#: Loop rounds, calls and filters in one render: a mail's template needs a few dozen.
MAX_STEPS = 100_000
#: Seconds one render may take: a mail's template takes a millisecond or so.
MAX_SECONDS = 2.0
#: The size of a number a template may compute, in bits (about 30,000 digits).
MAX_BITS = 100_000
#: The size limit without an app (and so without its PORTAL_MAX_BODY_BYTES).
DEFAULT_MAX_SIZE = 512 * 1024
#: How many items adding up lists (`|sum(start=[])`) may copy, about 15 ms of work.
MAX_COPIES = 10**8
#: How deep a template's nested lists and namespaces may go.
MAX_DEPTH = 50
#: The numbers in a format string: widths and precisions, each adding up to that many characters.
_NUMBER = re.compile(r"\d+")


class TemplateLimit(SecurityError):
    """A staff template went over its budget of size, steps or time; the message says which."""


@dataclass
class _Budget:
    size: int
    steps: int
    deadline: float

    def step(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise TemplateLimit(
                f"the template takes more than {MAX_STEPS:,} steps (loop rounds, calls and "
                "filters)"
            )
        if time.monotonic() > self.deadline:
            raise TemplateLimit(f"the template takes longer than {MAX_SECONDS:g} seconds")


_budget: ContextVar[_Budget | None] = ContextVar("portal_template_budget", default=None)


def max_size() -> int:
    """Return the largest text a staff template may build or output, in characters."""
    budget = _budget.get()
    if budget is not None:
        return budget.size
    if has_app_context():
        return current_app.config["PORTAL_MAX_BODY_BYTES"]
    return DEFAULT_MAX_SIZE


def _step() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.step()


def _too_large(what: str) -> TemplateLimit:
    return TemplateLimit(f"{what} would be larger than {max_size():,} characters")


def weight(value, limit: int, depth: int = 0) -> int:
    """Return about how many characters `value` takes as text, counting no further than just
    past `limit` (so a huge value costs little to weigh)."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return value.bit_length() // 3 + 1
    if depth > MAX_DEPTH:
        return limit + 1
    if isinstance(value, Namespace):
        value = object.__getattribute__(value, "_Namespace__attrs")
    if isinstance(value, dict | ItemsView):
        value = [part for item in (value.items() if isinstance(value, dict) else value)
                 for part in item]
    if isinstance(value, list | tuple | set | frozenset | KeysView | ValuesView):
        total = 2 + 2 * len(value)
        for item in value:
            if total > limit:
                break
            total += weight(item, limit - total, depth + 1)
        return total
    # Anything else a sandboxed template can hold (a range, a macro, an undefined value) is
    # shown as a short text.
    return 20


def _check(value, what: str = "the text it builds"):
    """Return `value`, or raise TemplateLimit if it is larger than the limit."""
    limit = max_size()
    if weight(value, limit) > limit:
        raise _too_large(what)
    return value


def _width(value) -> int:
    """Return the characters a width argument adds per place: a number, or a string's length."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    return len(value) if isinstance(value, str) else 0


def _format_weight(template: str, args: tuple, kwargs: dict) -> int:
    """Return at most how long `template` formatted with these arguments can be: its own
    length, every number in it (a width or a precision) and every argument's size."""
    limit = max_size()
    total = len(template) + sum(int(number) for number in _NUMBER.findall(template))
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool):
            total += max(value, 0)  # a "%*s" width
        total += weight(value, limit)
    return total


def _replace_weight(text: str, old: str, new: str, count=None) -> int:
    places = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and 0 <= count < places:
        places = count
    return len(text) + places * max(len(new) - len(old), 0)


def _join_weight(items, separator: str = "") -> int:
    limit = max_size()
    return weight(list(items), limit) + len(items) * len(separator)


def _amplified(name: str, value, args: tuple, kwargs: dict) -> int | None:
    """Return how large a filter's or a string method's result can be, where it can be
    much larger than its operands; None where it cannot."""
    first = args[0] if args else None
    if name in ("center", "ljust", "rjust", "zfill"):
        return weight(value, max_size()) + _width(kwargs.get("width", first))
    if name == "indent" and isinstance(value, str):
        lines = value.count("\n") + 1
        return len(value) + lines * _width(kwargs.get("width", 4 if first is None else first))
    if name == "expandtabs" and isinstance(value, str):
        return len(value) + value.count("\t") * _width(kwargs.get("tabsize", first or 8))
    if name == "wordwrap" and isinstance(value, str):
        width = kwargs.get("width", 79 if first is None else first)
        wrapstring = kwargs.get("wrapstring", args[2] if len(args) > 2 else None)
        wrap = len(wrapstring) if isinstance(wrapstring, str) else 1
        # A break where a long word is cut, and one in place of each run of spaces.
        breaks = len(value) // max(width if isinstance(width, int) else 1, 1) + 1
        spaces = len(value.split()) + 1
        return len(value) + breaks * wrap + spaces * max(wrap - 1, 0)
    if name == "replace" and isinstance(value, str):
        old, new, count = (*args, None, None, None)[:3]
        old, new = kwargs.get("old", old), kwargs.get("new", new)
        if isinstance(old, str) and isinstance(new, str):
            return _replace_weight(value, old, new, kwargs.get("count", count))
    if name in ("format", "format_map") and isinstance(value, str):
        return _format_weight(value, args, kwargs)
    if name == "join":
        if isinstance(value, str):  # str.join(items): the string is the separator
            return _join_weight(list(first or ()), value)
        return _join_weight(list(value), first if isinstance(first, str) else "")
    if name in ("batch", "slice"):
        # Each pads its result up to its count with the filler.
        return _width(kwargs.get("linecount", kwargs.get("slices", first)))
    return None


class _Budgeted(NodeTransformer):
    """Make a parsed template count its loops' rounds and check `~` before it joins."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        node = self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "portal_counted", [], [], None, None,
                                 lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Filter:
        node = self.generic_visit(node)
        parts = nodes.List(node.nodes, lineno=node.lineno)
        return nodes.Filter(parts, "portal_concat", [], [], None, None, lineno=node.lineno)


class _Output(list):
    """The text a macro, a `{% set %}` block, a `{% filter %}` block or a recursive loop
    gathers before it is joined: it may hold no more than the size limit either."""

    def __init__(self):
        super().__init__()
        self.size = 0

    def _add(self, text) -> None:
        self.size += len(text)
        if self.size > max_size():
            raise _too_large("the text a macro or a block gathers")

    def append(self, text) -> None:
        self._add(text)
        super().append(text)

    def extend(self, texts) -> None:
        texts = list(texts)
        for text in texts:
            self._add(text)
        super().extend(texts)


def _join(parts) -> str:
    """Join a block's text as Jinja's `concat` does, no further than the size limit: what
    `self.<block>()` renders is gathered this way."""
    limit, total, chunks = max_size(), 0, []
    for part in parts:
        total += len(part)
        if total > limit:
            raise _too_large("the text a block gathers")
        chunks.append(part)
    return "".join(chunks)


class _BudgetedCodeGenerator(CodeGenerator):
    """Jinja's code generator, gathering a block's text in an _Output rather than a list."""

    def buffer(self, frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.output()")


class StaffSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the budget of this module (see its docstring)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BudgetedCodeGenerator
    output = _Output
    concat = staticmethod(_join)

    def __init__(self, **options):
        super().__init__(finalize=_check, **options)
        # No lorem ipsum in a mail; its paragraph count is one more size to watch.
        self.globals.pop("lipsum", None)
        self.filters = {name: _bounded_filter(name, function)
                        for name, function in self.filters.items()}
        self.filters["portal_counted"] = _counted
        self.filters["portal_concat"] = _concat

    def _parse(self, source, name, filename):
        tree = _Budgeted().visit(super()._parse(source, name, filename))
        tree.set_environment(self)
        return tree

    def call_binop(self, context, operator, left, right):
        _step()
        limit = max_size()
        numbers = all(isinstance(side, int) and not isinstance(side, bool)
                      for side in (left, right))
        if operator == "*":
            if numbers:
                if left.bit_length() + right.bit_length() > MAX_BITS:
                    raise TemplateLimit("the template computes a number that is too large")
            else:
                sequence, times = (left, right) if isinstance(right, int) else (right, left)
                if (isinstance(times, int) and times > 0
                        and isinstance(sequence, str | list | tuple)
                        and weight(sequence, limit) * times > limit):
                    raise _too_large("a repeated text or list")
        elif operator == "**":
            if numbers and right > 0 and abs(left) > 1 and left.bit_length() * right > MAX_BITS:
                raise TemplateLimit("the template computes a number that is too large")
        elif operator == "+":
            if not numbers and weight(left, limit) + weight(right, limit) > limit:
                raise _too_large("a joined text or list")
        elif operator == "%" and isinstance(left, str):
            values = right if isinstance(right, tuple) else (right,)
            if _format_weight(left, values, {}) > limit:
                raise _too_large("a formatted text")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's own signature)
        _step()
        target = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):
            name = getattr(target, "__name__", "")
            if name == "join" and args:
                # Weighed, then joined: an iterator is read once, so it is read into a list.
                args = (list(args[0]), *args[1:])
            estimate = _amplified(name, owner, args, kwargs)
            if estimate is not None and estimate > max_size():
                raise _too_large("a string method's result")
        return _check(super().call(__context, __obj, *args, **kwargs), "a call's result")


def _bounded_filter(name: str, function):
    """Return the filter `function` counting a step and checked for size around its call."""

    def bounded(*args, **kwargs):
        _step()
        # Filters may take the context or environment first (Jinja's pass_* markers).
        offset = 1 if getattr(function, "jinja_pass_arg", None) else 0
        value, rest = (args[offset], args[offset + 1:]) if len(args) > offset else (None, ())
        if name in ("join", "sum") and value is not None and not isinstance(value, list | tuple):
            # Weighed, then joined: an iterator is read once, so it is read into a list (and
            # a string's characters are what the filter joins).
            value = list(value)
            args = (*args[:offset], value, *rest)
        if name == "sum" and isinstance(kwargs.get("start", rest[1] if len(rest) > 1 else 0),
                                        list | tuple):
            # Adding up lists copies the growing result once per item: quadratic, in one call
            # that no step or deadline interrupts.
            if len(value) * weight(value, MAX_COPIES) > MAX_COPIES:
                raise TemplateLimit("adding up these lists would copy them too many times")
        # What a filter is given may be no larger than anything else (a dict's view may hold
        # more than it shows by itself), and some filters make much more of it.
        _check(value, f"what the {name} filter is given")
        estimate = _amplified(name, value, rest, kwargs)
        if estimate is not None and estimate > max_size():
            raise _too_large(f"the result of the {name} filter")
        return _check(function(*args, **kwargs), f"the result of the {name} filter")

    for attribute in ("jinja_pass_arg", "__name__", "__doc__"):
        if hasattr(function, attribute):
            setattr(bounded, attribute, getattr(function, attribute))
    return bounded


def _counted(iterable):
    """Yield a loop's items, each one step of the render's budget."""
    budget = _budget.get()
    if budget is None:
        yield from iterable
        return
    for item in iterable:
        budget.step()
        yield item


@pass_eval_context
def _concat(eval_context, parts: list):
    """Join the parts of `~` as Jinja does, once their total size is known to be allowed."""
    limit = max_size()
    if sum(weight(part, limit) for part in parts) > limit:
        raise _too_large("a joined text")
    return markup_join(parts) if eval_context.autoescape else str_join(parts)


def line_of(error: BaseException) -> int | None:
    """Return the line of the staff template where `error` was raised, if it was raised while
    one rendered: Jinja rewrites the traceback so that the template's own lines show in it."""
    line, frame = None, error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_filename == "<template>":
            line = frame.tb_lineno  # the innermost one: in a macro, the macro's own line
        frame = frame.tb_next
    return line


def render(template, context: dict) -> str:
    """Render a template made by a StaffSandbox within its budget; raise TemplateLimit if over."""
    budget = _Budget(size=max_size(), steps=MAX_STEPS,
                     deadline=time.monotonic() + MAX_SECONDS)
    token = _budget.set(budget)
    try:
        chunks, total = [], 0
        for chunk in template.generate(context):
            total += len(chunk)
            if total > budget.size:
                raise TemplateLimit(
                    f"the template's output would be larger than {budget.size:,} characters"
                )
            chunks.append(chunk)
        return "".join(chunks)
    finally:
        _budget.reset(token)
