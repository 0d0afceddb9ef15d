"""Staff templates keep to a budget of size, steps and time (portal/sandbox.py).

A campaign's bodies and the footer are staff-written templates, rendered when they are saved,
previewed and sent. Jinja's sandbox alone let `{{ 'a' * 10**9 }}` build a gigabyte during the
save's trial render (18 s on this kind of machine) and let nested loops run for minutes. Each
template here must be stopped with TemplateLimit before it takes much memory; and templates
within the budget must render exactly as in Jinja's own sandbox. Outside an app the limit is
the default body limit (512 KiB), so only the test of that limit needs one.
"""

import tracemalloc

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment

from portal import sandbox
from portal.sandbox import TemplateLimit

#: What a campaign template sees (content.SAMPLE's shape, with a longer name).
CONTEXT = {"first_name": "Ada", "last_name": "Lovelace", "name": "Ada Lovelace",
           "email": "ada@example.test", "fields": {"sales_stage": "won", "card": "****1111"},
           "unsubscribe_url": "https://portal.example/l/x"}

#: Each would take gigabytes, or minutes, or both, without the budget.
BOMBS = {
    "repeat": "{{ 'a' * 10**9 }}",
    "repeat-a-value": "{{ first_name * 10**9 }}",
    "power": "{{ 10**100000**2 }}",
    "squaring": "{% set ns = namespace(x=2) %}{% for i in range(40) %}"
                "{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x > 1 }}",
    "doubling-tilde": "{% set ns = namespace(x='a' * 1000) %}{% for i in range(40) %}"
                      "{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
    "doubling-plus": "{% set ns = namespace(x='a' * 1000) %}{% for i in range(40) %}"
                     "{% set ns.x = ns.x + ns.x %}{% endfor %}",
    "doubling-set": "{% set x = 'a' * 300000 %}{% set x = x ~ x %}{% set x = x ~ x %}",
    "center": "{{ 'a'|center(10**9) }}",
    "ljust": "{{ 'a'.ljust(10**9) }}",
    "zfill": "{{ '1'.zfill(10**9) }}",
    "indent": "{{ ('a\\n' * 200000)|indent(100000) }}",
    "replace-filter": "{{ ('a' * 400000)|replace('', 'bbbbb') }}",
    "replace-keywords": "{{ ('a' * 400000)|replace(old='', new='b' * 400000) }}",
    "join-a-string": "{{ ('a' * 400000)|join('b' * 400000) }}",
    "replace-method": "{{ ('a' * 400000).replace('', 'bbbbb') }}",
    "expandtabs": "{{ ('\\t' * 400000).expandtabs(100000) }}",
    "wordwrap": "{{ ('a' * 300000)|wordwrap(1, wrapstring='x' * 100) }}",
    "batch": "{{ ['a']|batch(10**9, 'x')|list }}",
    "slice": "{{ ['a']|slice(10**9, 'x')|list }}",
    "format-method": "{{ '{:>1000000000}'.format('a') }}",
    "format-filter": "{{ '%1000000000d'|format(1) }}",
    "percent": "{{ '%1000000000s' % 'a' }}",
    "percent-star": "{{ '%*s' % (10**9, 'a') }}",
    "join-filter": "{% set s = 'a' * 400000 %}{{ ([s] * 1000)|join }}",
    "join-method": "{% set s = 'a' * 400000 %}{{ ''.join([s, s, s]) }}",
    "list-literal": "{% set s = 'a' * 400000 %}{{ [s, s, s, s, s] }}",
    "tuple-string": "{% set s = 'a' * 400000 %}{{ (s, s, s)|string }}",
    "namespace": "{% set s = 'a' * 400000 %}{{ namespace(a=s, b=s, c=s) }}",
    "concat": "{% set s = 'a' * 400000 %}{{ s ~ s ~ s }}",
    # A dict's view shows every item it holds, as a list does.
    "dict-view": "{% set s = 'a' * 400000 %}{{ {1: s, 2: s, 3: s}.items() }}",
    "dict-view-string": "{% set s = 'a' * 400000 %}{{ {1: s, 2: s}.values()|string }}",
    "dict-view-concat": "{% set s = 'a' * 400000 %}{{ 'x' ~ {1: s, 2: s}.values() }}",
    "output": "{% set s = 'a' * 400000 %}{{ s }}{{ s }}",
    "nested-ranges": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                     "{% endfor %}",
    "nested-lists": "{% set l = [0] * 100000 %}{% for a in l %}{% for b in l %}{% endfor %}"
                    "{% endfor %}",
    # Text gathered by a block before it is joined, not streamed like the template's output.
    "set-block": "{% set s = 'a' * 400000 %}{% set x %}{% for i in range(1000) %}{{ s ~ i }}"
                 "{% endfor %}{% endset %}",
    "macro-body": "{% set s = 'a' * 400000 %}{% macro m() %}{% for i in range(1000) %}"
                  "{{ s ~ i }}{% endfor %}{% endmacro %}{{ m()|length }}",
    "filter-block": "{% set s = 'a' * 400000 %}{% filter upper %}{% for i in range(1000) %}"
                    "{{ s ~ i }}{% endfor %}{% endfilter %}",
    "call-block": "{% set s = 'a' * 400000 %}{% macro m() %}{{ caller()|length }}{% endmacro %}"
                  "{% call m() %}{% for i in range(1000) %}{{ s ~ i }}{% endfor %}{% endcall %}",
    "block-reference": "{% set s = 'a' * 400000 %}{% if false %}{% block b %}"
                       "{% for i in range(1000) %}{{ s ~ i }}{% endfor %}{% endblock %}{% endif %}"
                       "{{ self.b()|length }}",
    # One call, quadratic: each list added copies the result so far (seconds, not memory).
    "sum-of-lists": "{{ ([[0]] * 85000)|sum(start=[])|length }}",
    "exponential-macro": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}"
                         "{% endmacro %}{{ f(40) }}",
}


@pytest.mark.parametrize("source", BOMBS.values(), ids=BOMBS.keys())
@pytest.mark.parametrize("autoescape", [True, False], ids=["html", "text"])
def test_a_template_that_would_take_the_machine_is_stopped_early(source, autoescape):
    environment = sandbox.StaffSandbox(autoescape=autoescape)
    tracemalloc.start()
    try:
        with pytest.raises(TemplateLimit):
            sandbox.render(environment.from_string(source), CONTEXT)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The limit is PORTAL_MAX_BODY_BYTES (512 KiB) characters: a few of them at a time.
    assert peak < 16 * 2**20


def test_the_limits_are_named_in_the_message():
    environment = sandbox.StaffSandbox(autoescape=False)

    def refusal(source: str) -> str:
        with pytest.raises(TemplateLimit) as stopped:
            sandbox.render(environment.from_string(source), CONTEXT)
        return str(stopped.value)

    assert refusal(BOMBS["repeat"]) == (
        "a repeated text or list would be larger than 524,288 characters"
    )
    assert refusal(BOMBS["nested-ranges"]) == (
        "the template takes more than 100,000 steps (loop rounds, calls and filters)"
    )
    assert "the center filter" in refusal(BOMBS["center"])
    assert refusal(BOMBS["output"]) == (
        "the template's output would be larger than 524,288 characters"
    )


def test_the_size_limit_follows_the_outboxs_body_limit(app, monkeypatch):
    monkeypatch.setitem(app.config, "PORTAL_MAX_BODY_BYTES", 1000)
    environment = sandbox.StaffSandbox(autoescape=False)
    assert sandbox.render(environment.from_string("{{ 'a' * 1000 }}"), {}) == "a" * 1000
    with pytest.raises(TemplateLimit, match="larger than 1,000 characters"):
        sandbox.render(environment.from_string("{{ 'a' * 1001 }}"), {})
    with pytest.raises(TemplateLimit, match="output"):
        sandbox.render(environment.from_string("{% for i in range(11) %}{{ 'a' * 100 }}"
                                               "{% endfor %}"), {})


def test_a_render_past_its_time_is_stopped(monkeypatch):
    environment = sandbox.StaffSandbox(autoescape=False)
    template = environment.from_string("{% for i in range(10) %}{{ i }}{% endfor %}")
    assert sandbox.render(template, {}) == "0123456789"
    monkeypatch.setattr(sandbox, "MAX_SECONDS", -1)
    with pytest.raises(TemplateLimit, match="takes longer than -1 seconds"):
        sandbox.render(template, {})


def test_steps_are_counted_per_render_not_per_template(monkeypatch):
    monkeypatch.setattr(sandbox, "MAX_STEPS", 50)
    environment = sandbox.StaffSandbox(autoescape=False)
    template = environment.from_string("{% for i in range(40) %}.{% endfor %}")
    # Each render has its own budget: the second is not charged for the first.
    assert sandbox.render(template, {}) == "." * 40
    assert sandbox.render(template, {}) == "." * 40
    with pytest.raises(TemplateLimit, match="more than 50 steps"):
        sandbox.render(environment.from_string("{% for i in range(60) %}.{% endfor %}"), {})


def test_a_template_cannot_change_a_list_in_place():
    # The immutable sandbox: without it, `extend` in a loop would double a list unchecked.
    environment = sandbox.StaffSandbox(autoescape=False)
    template = environment.from_string("{% set l = [1] %}{{ l.extend(l) }}")
    with pytest.raises(Exception, match="unsafe|not safely callable"):
        sandbox.render(template, {})


#: Pieces of ordinary templates, every construct the budget touches among them: loops (with
#: `loop`, else, filters, unpacking and recursion), `~`, `+`, `*`, `%`, calls, macros, the
#: filters it wraps, and a value that needs escaping.
PIECES = [
    "Hello ", "{{ first_name }}", "{{ name|upper }}", "{{ fields.sales_stage }}",
    "{{ fields.nope }}", "{{ first_name ~ ' ' ~ last_name }}", "{{ first_name + '!' }}",
    "{{ '-' * 3 }}", "{{ 2 ** 10 }}", "{{ '%s/%s' % (first_name, 3) }}",
    "{{ '{} {}'.format(first_name, 2) }}", "{{ '%s'|format(email) }}",
    "{{ fields|dictsort|join(', ') }}", "{{ [first_name, last_name]|join(' & ') }}",
    "{{ ''.join(['a', 'b']) }}", "{{ first_name|center(9) }}", "{{ 'a\nb'|indent(2, true) }}",
    "{{ name|replace('a', 'A') }}", "{{ name|replace(old='a', new='4', count=1) }}",
    "{{ first_name|join('.') }}", "{{ name.replace('e', 'E') }}", "{{ name|wordwrap(5) }}",
    "{{ [1, 2, 3, 4, 5]|batch(2, 0)|list }}", "{{ [[1], [2, 3]]|sum(start=[]) }}",
    "{{ range(4)|sum }}", "{{ [1, 2, 3]|slice(2)|list }}",
    "{% for k, v in fields|dictsort %}{{ loop.index }}{{ k }}={{ v }};{% endfor %}",
    "{% for x in [3, 1, 2]|sort %}{{ loop.length }}{{ loop.revindex }}{{ x }}{% endfor %}",
    "{% for x in [] %}never{% else %}empty{% endfor %}",
    "{% for x in range(5) if x is odd %}{{ x }}{{ loop.cycle('a', 'b') }}{% endfor %}",
    "{% for n in [{'c': [{'c': []}]}] recursive %}<{{ loop(n.c) }}>{% endfor %}",
    "{% macro hi(who) %}Hi {{ who }}{{ caller() if caller }}{% endmacro %}{{ hi(first_name) }}",
    "{% call hi('x') %}!{% endcall %}", "{% set ns = namespace(n=0) %}", "{{ ns.n if ns }}",
    "{% set x = first_name ~ 1 %}{{ x }}", "{{ email|length }}", "{{ 10 // first_name|length }}",
    "<b>{{ '<i>' ~ first_name }}</b>", "{{ '<i>'|safe ~ first_name }}", "{{ unsubscribe_url }}",
    "{{ first_name[1:] * 2 }}", "{{ (first_name, 1) }}", "{{ range(3)|list }}", "{{ x.y }}",
    "{% if first_name %}yes{% endif %}", "{{ [1] + [2] }}", "{{ 7 % 3 }}", "{{ 2 * 3 }}",
    "{% block b %}[{{ name }}]{% endblock %}{{ self.b() }}",
]


def _jinjas_own(autoescape: bool):
    environment = ImmutableSandboxedEnvironment(autoescape=autoescape)
    environment.globals.pop("lipsum", None)
    return environment


def _outcome(environment, source: str, render):
    try:
        return "ok", render(environment.from_string(source))
    except Exception as error:
        return "error", type(error).__name__


@given(pieces=st.lists(st.sampled_from(PIECES), max_size=6), autoescape=st.booleans())
@settings(max_examples=300)
def test_a_template_within_the_budget_renders_as_in_jinjas_own_sandbox(pieces, autoescape):
    source = "".join(pieces)
    ours = _outcome(sandbox.StaffSandbox(autoescape=autoescape), source,
                    lambda template: sandbox.render(template, CONTEXT))
    theirs = _outcome(_jinjas_own(autoescape), source, lambda template: template.render(CONTEXT))
    assert ours == theirs, source


#: Steps that grow what a template holds, each by a size or a count drawn below (N): repeated
#: in a loop, they double, square or multiply it, which is how a template outgrows any limit
#: that checks only its final output.
GROWTH = [
    "{% set ns.x = ns.x ~ ns.x %}", "{% set ns.x = ns.x + ns.x %}", "{% set ns.x = ns.x * N %}",
    "{% set ns.x = ns.x|center(N) %}", "{% set ns.x = ns.x.ljust(N) %}",
    "{% set ns.x = ns.x|indent(N, true) ~ '\\n' %}", "{% set ns.x = ns.x|replace('', ns.x) %}",
    "{% set ns.x = ns.x.replace('a', ns.x) %}", "{% set ns.x = ns.x|join(ns.x) %}",
    "{% set ns.x = '%*s' % (N, ns.x) %}", "{% set ns.x = '{:>{}}'.format(ns.x, N) %}",
    "{% set ns.x = (ns.x ~ '\\t').expandtabs(N) %}",
    "{% set ns.x = ns.x|wordwrap(1, true, ns.x) %}", "{% set ns.x = ns.l|join(ns.x) %}",
    "{% set ns.x = ns.l|string %}", "{% set ns.x = ns|string %}",
    "{% set ns.x = {1: ns.x, 2: ns.x}.values()|string %}",
    "{% set ns.x = 'x' ~ {1: ns.x, 2: ns.x}.items() %}",
    "{% set ns.l = ns.l + ns.l %}", "{% set ns.l = ns.l * N %}", "{% set ns.l = [ns.x] * N %}",
    "{% set ns.l = ns.l|batch(N, ns.x)|list %}", "{% set ns.n = ns.n * ns.n %}",
    "{% set ns.n = ns.n ** N %}", "{% set ns.x %}{% for j in range(N) %}{{ ns.x }}{% endfor %}"
    "{% endset %}", "{% set ns.x = m(ns.x) %}", "{{ ns.x }}",
]
SIZES = st.sampled_from([0, 1, 2, 3, 40, 1000, 400_000, 10**9])


@given(steps=st.lists(st.tuples(st.sampled_from(GROWTH), SIZES), min_size=1, max_size=4),
       rounds=st.sampled_from([1, 2, 10, 40]), autoescape=st.booleans())
@settings(max_examples=3000, deadline=None, derandomize=False, database=None)
def test_whatever_a_template_grows_a_render_stays_small(steps, rounds, autoescape):
    body = "".join(step.replace("N", str(size)) for step, size in steps)
    source = ("{% macro m(v) %}{{ v }}{{ v }}{% endmacro %}"
              "{% set ns = namespace(x='ab', l=['ab', 'cd'], n=3) %}"
              f"{{% for i in range({rounds}) %}}{body}{{% endfor %}}")
    environment = sandbox.StaffSandbox(autoescape=autoescape)
    tracemalloc.start()
    try:
        try:
            output = sandbox.render(environment.from_string(source), {})
        except Exception:  # noqa: BLE001 (TemplateLimit, or an error of the template's own)
            output = ""
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(output) <= sandbox.DEFAULT_MAX_SIZE
    assert peak < 32 * 2**20, source
