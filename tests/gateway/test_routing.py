"""gateway.routing: pure matching of paygates and pricing of resources."""

from __future__ import annotations

import pytest

from gateway.config import PaygateConfig
from gateway.routing import Router, glob_to_regex, path_problem, strip_prefix


def pg(id: str, prefix: str, *, host: str | None = None, default_units: int = 1,
       rules: list[dict] | None = None) -> PaygateConfig:
    return PaygateConfig(id=id, prefix=prefix, host=host, target="https://o.example.com",
                         default_units=default_units, rules=rules or [])


SKY_RULES = [
    {"method": "GET", "path": "/v1/flights*", "units": 1},
    {"method": "GET", "path": "/v1/hotels*", "units": 2},
    {"method": "POST", "path": "/v1/holds", "units": 10},
    {"method": "POST", "path": "/v1/bookings", "units": 25},
    {"method": "*", "path": "/v1/free/*", "units": 0},
]


def test_prefix_matches_only_at_a_segment_boundary():
    r = Router([pg("sky", "/sky")])
    assert r.match("GET", None, "/skyroute") is None
    assert r.match("GET", None, "/skyroute/v1") is None
    assert r.match("GET", None, "/sk") is None
    assert r.match("GET", None, "/sky").subpath == "/"
    assert r.match("GET", None, "/sky/").subpath == "/"
    assert r.match("GET", None, "/sky/v1/x").subpath == "/v1/x"


def test_strip_prefix():
    assert strip_prefix("/", "/a/b") == "/a/b"
    assert strip_prefix("/a", "/a") == "/"
    assert strip_prefix("/a", "/a/b") == "/b"
    assert strip_prefix("/a", "/ab") is None


def test_longest_prefix_wins():
    # Router works whatever the config validation allows; give it nested prefixes.
    r = Router([pg("root", "/"), pg("api", "/api"), pg("v2", "/api/v2")])
    assert r.match("GET", None, "/api/v2/things").paygate.id == "v2"
    assert r.match("GET", None, "/api/v2/things").subpath == "/things"
    assert r.match("GET", None, "/api/v1/things").paygate.id == "api"
    assert r.match("GET", None, "/api/v2x").paygate.id == "api"
    assert r.match("GET", None, "/other").paygate.id == "root"
    assert r.match("GET", None, "/other").subpath == "/other"


def test_host_matching_ignores_port_and_case():
    r = Router([pg("docs", "/api", host="docs.example.com"), pg("any", "/other")])
    assert r.match("GET", "docs.example.com", "/api/x").paygate.id == "docs"
    assert r.match("GET", "docs.example.com:8443", "/api/x").paygate.id == "docs"
    assert r.match("GET", "DOCS.Example.COM:80", "/api/x").paygate.id == "docs"
    assert r.match("GET", "evil.example.com", "/api/x") is None
    assert r.match("GET", None, "/api/x") is None
    # a host-less paygate matches any host
    assert r.match("GET", "whatever:1", "/other/x").paygate.id == "any"


def test_host_bound_paygate_wins_over_hostless_with_same_prefix():
    r = Router([pg("any", "/api"), pg("docs", "/api", host="docs.example.com")])
    assert r.match("GET", "docs.example.com:8080", "/api").paygate.id == "docs"
    assert r.match("GET", "other.example.com", "/api").paygate.id == "any"


def test_rule_globbing():
    r = Router([pg("sky", "/skyroute", rules=SKY_RULES, default_units=3)])
    assert r.match("GET", None, "/skyroute/v1/flights").units == 1
    assert r.match("GET", None, "/skyroute/v1/flights/ZRH-LHR").units == 1
    assert r.match("GET", None, "/skyroute/v1/flights-cheap").units == 1
    assert r.match("GET", None, "/skyroute/v1/hotels/9").units == 2
    assert r.match("DELETE", None, "/skyroute/v1/free/a/b").units == 0
    # the glob is anchored: no match in the middle of a path
    assert r.match("GET", None, "/skyroute/x/v1/flights").units == 3


def test_glob_is_literal_apart_from_star():
    assert glob_to_regex("/v1/a.b*").fullmatch("/v1/a.b/c")
    assert not glob_to_regex("/v1/a.b*").fullmatch("/v1/aXb/c")
    assert not glob_to_regex("/v1/(x)").fullmatch("/v1/x")
    assert glob_to_regex("/v1/(x)").fullmatch("/v1/(x)")


def test_method_specific_rules():
    r = Router([pg("sky", "/skyroute", rules=SKY_RULES, default_units=3)])
    assert r.match("POST", None, "/skyroute/v1/holds").units == 10
    assert r.match("GET", None, "/skyroute/v1/holds").units == 3  # GET not priced by the rule
    assert r.match("POST", None, "/skyroute/v1/bookings").units == 25
    assert r.match("POST", None, "/skyroute/v1/flights").units == 3


def test_rule_method_is_case_insensitive_in_config():
    r = Router([pg("a", "/a", rules=[{"method": "post", "path": "/x", "units": 7}])])
    assert r.match("POST", None, "/a/x").units == 7


def test_first_matching_rule_wins():
    rules = [{"path": "/v1/flights/special", "units": 50},
             {"path": "/v1/flights*", "units": 1},
             {"path": "/v1/flights/special", "units": 99}]
    r = Router([pg("sky", "/sky", rules=rules)])
    assert r.match("GET", None, "/sky/v1/flights/special").units == 50
    assert r.match("GET", None, "/sky/v1/flights/other").units == 1


def test_default_units_for_unmatched_paths():
    r = Router([pg("sky", "/sky", rules=SKY_RULES, default_units=4),
                pg("free", "/free", default_units=0)])
    assert r.match("GET", None, "/sky/unknown").units == 4
    assert r.match("GET", None, "/sky").units == 4
    assert r.match("PUT", None, "/free/anything").units == 0


def test_no_paygate():
    assert Router([]).match("GET", None, "/") is None
    assert Router([pg("a", "/a")]).match("GET", None, "/b") is None


@pytest.mark.parametrize("path,bad", [
    ("/a/../b", True), ("/a/./b", True), ("/..", True), ("/a/..", True), ("/.", True),
    ("/a/...", False), ("/a/.hidden", False), ("/a/b..c", False), ("/a/b/", False), ("/", False),
])
def test_dot_segments(path, bad):
    assert (path_problem(path) is not None) is bad


@pytest.mark.parametrize("path", [
    "/", "/sky", "/sky/", "/sky/v1/bookings", "/sky/v1/flights/", "/a/x%20y", "/a/%3Fq",
    "/a/caf%C3%A9", "/a/!$&'()*+,=:@-._~", "/a/%E2%82%AC",
])
def test_path_problem_accepts_unambiguous_spellings(path):
    assert path_problem(path) is None


@pytest.mark.parametrize("path,why", [
    ("//sky", "empty"), ("/sky//v1", "empty"), ("/sky/v1//", "empty"),
    ("/sky/%62ookings", "'b'"), ("/sky/%7E", "'~'"), ("/sky/%2e%2e/x", "'.'"),
    ("/sky/a%2Fb", "'/'"), ("/sky/a%2fb", "'/'"), ("/sky/a%5Cb", "'\\\\'"),
    ("/sky/a%3Bb", "';'"), ("/sky/a%2562", "'%'"), ("/sky/a%00", "'\\x00'"), ("/sky/a%7F", "x7f"),
    ("/sky/a;b", "';'"), ("/sky;x/v1", "';'"), ("/sky\\v1", "'\\\\'"), ("/sky/a b", "' '"),
    ("/sky/caf\u00e9", "'\u00e9'"), ("/sky/a%", "two hex"), ("/sky/a%zz", "two hex"),
    ("/sky/a%C0%AF", "UTF-8"), ("/sky/a%ED%A0%80", "UTF-8"), ("/sky/%EF%BC%8F", "normalisation"),
    ("/sky/%EF%BD%82ookings", "normalisation"), ("sky", "start with /"),
])
def test_path_problem_refuses_ambiguous_spellings(path, why):
    problem = path_problem(path)
    assert problem is not None and why in problem, (path, problem)


def test_prefix_and_rules_ignore_case_and_a_trailing_slash_at_the_dearest_reading():
    r = Router([pg("sky", "/sky", rules=SKY_RULES, default_units=1)])
    for path in ("/SKY/v1/bookings", "/sky/V1/Bookings", "/Sky/v1/bookings/"):
        m = r.match("POST", None, path)
        assert m.paygate.id == "sky" and m.units == 25, path
    assert r.match("POST", None, "/SKY/v1/bookings").subpath == "/v1/bookings"
    # a case-sensitive origin's exact rule is never undercut by a case-folded cheaper one
    rules = [{"path": "/v1/report", "units": 1}, {"path": "/v1/Report", "units": 100}]
    r = Router([pg("sky", "/sky", rules=rules, default_units=3)])
    assert r.match("GET", None, "/sky/v1/Report").units == 100
    assert r.match("GET", None, "/sky/v1/other/").units == 3
    # free stays free only when every reading is free
    r = Router([pg("sky", "/sky", rules=[{"path": "/v1/status", "units": 0}], default_units=2)])
    assert r.match("GET", None, "/sky/v1/status").units == 0
    assert r.match("GET", None, "/sky/v1/status/").units == 2  # may be another resource
    assert r.match("GET", None, "/sky/v1/STATUS").units == 2


def test_host_matching_ipv6_literal_with_port():
    r = Router([pg("v6", "/api", host="[::1]")])
    assert r.match("GET", "[::1]:8402", "/api/x").paygate.id == "v6"
    assert r.match("GET", "[::1]", "/api/x").paygate.id == "v6"
    assert r.match("GET", "[::2]:8402", "/api/x") is None
