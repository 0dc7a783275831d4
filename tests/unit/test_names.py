"""The canonical form of names and patterns, and the name rules' matching:
fixed cases, and hypothesis properties (a rule never matches a name outside its
suffix, whatever the spelling)."""

from __future__ import annotations

import idna
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gconnect.errors import HostDeniedError, HostNotAllowedError
from gconnect.ops.workermetrics import add_counters, empty_snapshot
from gconnect.tunnel.hostrules import HostRules
from gconnect.tunnel.names import HostNameError, canonical_name, parse_pattern

from .budget import examples

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "text,canonical",
    [
        ("Example.COM.", "example.com"),
        ("Bücher.Example.", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("ＥＸＡＭＰＬＥ．com", "example.com"),  # full-width letters and dot (UTS-46 mapping)
        ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
        ("_dmarc.example.com", "_dmarc.example.com"),
    ],
)
def test_canonical_name(text, canonical):
    assert canonical_name(text) == canonical


@pytest.mark.parametrize(
    "text", ["127.1", "0x7f.1", "2130706433", "１２７．０．０．１", "a..b", "", ".", "-a.com", "a b.com", "xn--zz.com"]
)
def test_not_names(text):
    with pytest.raises(HostNameError):
        canonical_name(text)


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("Example.com", "example.com"),
        (".Example.com.", ".example.com"),
        ("*.Bücher.example", "*.xn--bcher-kva.example"),
        ("203.0.113.7", "203.0.113.7"),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("2001:db8:0::1", "2001:db8::1"),
    ],
)
def test_parse_pattern(text, pattern):
    assert parse_pattern(text) == pattern


@pytest.mark.parametrize(
    "text", ["a*.com", "*.*.com", "*", "*.", "..com", "a.com:443", "[::1]:443", "010.0.0.1", "10.0.0.0/8", " "]
)
def test_bad_patterns(text):
    with pytest.raises(HostNameError):
        parse_pattern(text)


def judge(rules: HostRules, host: str) -> str | None:
    refusal = rules.judge(host, 0)
    return None if refusal is None else refusal.code


def test_decision_deny_over_allow_and_ip_literals():
    rules = HostRules([".example.com", "*.glob.test", "exact.test", "203.0.113.7"], ["bad.example.com", "198.51.100.1"])
    assert judge(rules, "example.com") is None
    assert judge(rules, "a.b.example.com") is None
    assert judge(rules, "bad.example.com") == "host_denied"
    assert judge(rules, "x.bad.example.com") is None  # a deny of one name is that name only
    assert judge(rules, "glob.test") == "host_not_allowed"
    assert judge(rules, "a.glob.test") is None
    assert judge(rules, "notexample.com") == "host_not_allowed"
    assert rules.judge("203.0.113.7", 2) is None
    assert isinstance(rules.judge("203.0.113.8", 2), HostNotAllowedError)
    assert isinstance(rules.judge("198.51.100.1", 2), HostDeniedError)
    # An IPv4-mapped (or NAT64) spelling of a denied address is denied too.
    assert isinstance(rules.judge("::ffff:198.51.100.1", 10), HostDeniedError)
    assert isinstance(rules.judge("64:ff9b::c633:6401", 10), HostDeniedError)
    deny_only = HostRules([], [".example.com"])
    assert deny_only.judge("other.test", 0) is None
    assert deny_only.judge("203.0.113.7", 2) is None


def test_would_deny_counters_are_summed_across_workers():
    total = empty_snapshot()
    one = {**empty_snapshot(), "would_deny": [["host_denied", 2], ["host_not_allowed", 1]]}
    two = {**empty_snapshot(), "would_deny": [["host_not_allowed", 5]]}
    old = {k: v for k, v in empty_snapshot().items() if k != "would_deny"}  # a worker of an older release
    for snap in (one, two, old):
        add_counters(total, snap)
    assert total["would_deny"] == [["host_denied", 2], ["host_not_allowed", 6]]


# --- properties ------------------------------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789" + "äöüéñçøåßąłžкирилцаΩωλ例え"
labels = st.text(alphabet=LETTERS, min_size=1, max_size=12).filter(lambda s: not s.isdigit())


def valid(label: str) -> bool:
    try:
        canonical_name(label + ".test")
    except HostNameError:
        return False
    return True


names = st.lists(labels.filter(valid), min_size=1, max_size=4).map(lambda parts: ".".join(parts) + ".test")


@st.composite
def spellings(draw, name: str) -> str:
    """*name* written some other way: per-label U-label or A-label, random case, a trailing dot."""
    out = []
    for label in canonical_name(name).split("."):
        if label.startswith("xn--") and draw(st.booleans()):
            label = idna.decode(label)
        label = "".join(ch.upper() if draw(st.booleans()) and ch.upper().lower() == ch else ch for ch in label)
        out.append(label)
    return ".".join(out) + ("." if draw(st.booleans()) else "")


@settings(max_examples=examples(300), deadline=None)
@given(st.data(), names, names)
def test_a_rule_never_matches_a_name_outside_its_suffix(data, suffix, name):
    canon_suffix, canon_name = canonical_name(suffix), canonical_name(name)
    # Half the time put the name under the suffix, so both outcomes are exercised.
    if data.draw(st.booleans()):
        canon_name = canon_name + "." + canon_suffix
        assume(len(canon_name) <= 253)
    spelled = data.draw(spellings(canon_name))
    assert canonical_name(spelled) == canon_name
    inside = canon_name == canon_suffix or canon_name.endswith("." + canon_suffix)
    strictly_below = canon_name.endswith("." + canon_suffix)
    pattern_spelling = data.draw(spellings(canon_suffix)).rstrip(".")
    for prefix, matches in (("", canon_name == canon_suffix), (".", inside), ("*.", strictly_below)):
        rules = HostRules([parse_pattern(prefix + pattern_spelling)], [])
        assert (judge(rules, canonical_name(spelled)) is None) == matches, (prefix, pattern_spelling, spelled)
        deny = HostRules([], [parse_pattern(prefix + pattern_spelling)])
        assert (judge(deny, canonical_name(spelled)) == "host_denied") == matches


@settings(max_examples=examples(300), deadline=None)
@given(st.data(), names)
def test_every_spelling_has_one_canonical_form(data, name):
    canon = canonical_name(name)
    assert canonical_name(data.draw(spellings(canon))) == canon
    assert canonical_name(canon) == canon  # idempotent
    assert canon.isascii() and canon == canon.lower() and not canon.endswith(".")
