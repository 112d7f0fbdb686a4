"""GlobSet and the compiled policy give exactly the answers of glob_match and of evaluating every
rule against every file, whatever the patterns and paths."""

from __future__ import annotations

from fnmatch import fnmatchcase

from hypothesis import given, settings
from hypothesis import strategies as st

from hyperion.gate.globset import REGEX_PATH_LIMIT, GlobSet
from hyperion.gate.patch import FilePatch, Operation
from hyperion.gate.paths import glob_match, in_scope
from hyperion.gate.policy import Policy, Rule, decide, fired_rules

PATTERN_PARTS = st.sampled_from([
    "a", "b", "ab", "a.py", "*.py", "*", "?", "**", "a*", "*b", "a?b", "*a*", "[ab]", "[!a]",
    "[^b]*", "\\*", "[a-b]x", "", "x.tar.gz", "*.tar.gz", "*.", ".py", "Dockerfile"])
PATH_PARTS = st.sampled_from(["a", "b", "ab", "ba", "a.py", "b.py", "x", "*", "Dockerfile",
                              "x.tar.gz", "y.gz", "py", ".py", "a.", "é", "ab\n", ""])
PATTERNS = st.one_of(
    st.lists(PATTERN_PARTS, min_size=1, max_size=5).map("/".join),
    st.lists(PATTERN_PARTS, min_size=1, max_size=4).map(lambda p: "/" + "/".join(p)),
    st.lists(PATTERN_PARTS, min_size=1, max_size=4).map(lambda p: "/".join(p) + "/"),
    st.lists(PATTERN_PARTS, min_size=1, max_size=3).map(lambda p: "**/" + "/".join(p)),
)
PATHS = st.lists(PATH_PARTS, min_size=1, max_size=5).map("/".join)


@given(st.lists(PATTERNS, min_size=1, max_size=12), st.lists(PATHS, min_size=1, max_size=12))
@settings(max_examples=1500)
def test_globset_agrees_with_glob_match(patterns: list[str], paths: list[str]) -> None:
    globs = GlobSet(patterns)
    expected = {i: [j for j, path in enumerate(paths) if glob_match(path, pattern)]
                for i, pattern in enumerate(patterns)}
    expected = {i: hits for i, hits in expected.items() if hits}
    together = {i: sorted(hits) for i, hits in globs.match_all(paths).items()}
    assert together == expected
    for j, path in enumerate(paths):
        assert sorted(globs.matching(path)) == [i for i, hits in expected.items() if j in hits]


def test_long_paths_and_backtracking_patterns_take_the_bounded_matcher() -> None:
    long_path = "/".join(["aaaa"] * 100)           # over REGEX_PATH_LIMIT
    assert len(long_path) > REGEX_PATH_LIMIT
    patterns = ["**/*a*a*a*b", "a*/**", "**/aaaa", "aaaa/**/a*a", "*/*/*"]
    globs = GlobSet(patterns)
    for path in (long_path, long_path + "b", "aaaa/aaaa/aaab"):
        assert sorted(globs.matching(path)) == [
            i for i, p in enumerate(patterns) if glob_match(path, p)]


# --- the compiled policy against the obvious evaluation ------------------------------------

def reference_fires(rule: Rule, agent: str, files: list[FilePatch]) -> bool:
    m = rule.match
    if m.agents and not any(fnmatchcase(agent, pattern) for pattern in m.agents):
        return False

    def selects(f: FilePatch) -> bool:
        if m.paths_not and in_scope(f.path, m.paths_not):
            return False
        if m.paths and not (in_scope(f.path, m.paths) or
                            (f.old_path is not None and in_scope(f.old_path, m.paths))):
            return False
        return not m.operations or f.operation.value in m.operations

    selected = [f for f in files if selects(f)]
    if (m.paths or m.operations) and not selected:
        return False
    if m.min_files is not None and len(selected) < m.min_files:
        return False
    lines = sum(f.added_lines + f.removed_lines for f in selected)
    return m.min_lines is None or lines >= m.min_lines


FILE_PATHS = st.sampled_from(["src/a.py", "src/b.py", "src/gen/c.py", "docs/x.md", "README.md",
                              "deploy/prod.yaml", ".github/workflows/ci.yml", "Dockerfile",
                              "svc/Dockerfile", "lib/x.tar.gz"])
RULE_PATTERNS = st.sampled_from(["src/**", "src/gen/**", "**/*.py", "**/*.md", "docs/",
                                 "Dockerfile", "**/Dockerfile", "*.md", "src/*.py", ".github/**",
                                 "[sd]*/**", "**/*.gz", "lib/*.tar.gz"])
OPS = st.sampled_from(["add", "update", "delete", "rename"])


@st.composite
def files_strategy(draw: st.DrawFn) -> list[FilePatch]:
    paths = draw(st.lists(FILE_PATHS, min_size=0, max_size=8, unique=True))
    out = []
    for path in paths:
        op = draw(OPS)
        old = draw(FILE_PATHS) if op == "rename" else None
        out.append(FilePatch(path=path, old_path=old, operation=Operation(op), old_mode=None,
                             new_mode=None, binary=False, added_lines=draw(st.integers(0, 30)),
                             removed_lines=draw(st.integers(0, 30)), added_text=()))
    return out


@st.composite
def rules_strategy(draw: st.DrawFn) -> list[dict[str, object]]:
    rules = []
    for i in range(draw(st.integers(1, 8))):
        match: dict[str, object] = {}
        if draw(st.booleans()):
            match["paths"] = draw(st.lists(RULE_PATTERNS, max_size=3))
        if draw(st.booleans()):
            match["paths_not"] = draw(st.lists(RULE_PATTERNS, max_size=2))
        if draw(st.booleans()):
            match["operations"] = draw(st.lists(OPS, max_size=2, unique=True))
        if draw(st.booleans()):
            match["agents"] = draw(st.lists(st.sampled_from(["bot-*", "codex-1", "*"]),
                                            max_size=2))
        if draw(st.booleans()):
            match["min_files"] = draw(st.integers(0, 4))
        if draw(st.booleans()):
            match["min_lines"] = draw(st.integers(0, 60))
        rules.append({"name": f"r{i}", "match": match,
                      "action": draw(st.sampled_from(["allow", "notify", "require_approval",
                                                      "deny"]))})
    return rules


@given(rules_strategy(), files_strategy(), st.sampled_from(["bot-3", "codex-1", "alice"]))
@settings(max_examples=1500)
def test_compiled_rules_fire_exactly_like_the_obvious_evaluation(
        rules: list[dict[str, object]], files: list[FilePatch], agent: str) -> None:
    policy = Policy.model_validate({"version": 1, "rules": rules})
    expected = [r.name for r in policy.rules if reference_fires(r, agent, files)]
    assert fired_rules(policy, agent, files) == expected
    decision = decide(policy, agent, files)
    assert set(decision.rules) <= set(expected)
    assert (decision.rules == ()) == (expected == [])
