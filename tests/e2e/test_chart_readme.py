"""The chart README is generated from values.yaml's comments (tests/e2e/chart_readme.py) and kept current."""

from __future__ import annotations

import yaml

from tests.e2e import chart_readme


def test_chart_readme_is_current():
    assert chart_readme.main(["--check"]) == 0, "run: python -m tests.e2e.chart_readme"


def test_every_value_is_documented_in_the_table():
    """Each leaf of values.yaml has a row of its own or belongs to a documented mapping."""
    text = (chart_readme.CHART / "values.yaml").read_text()
    documented = {p.key for p in chart_readme.parameters(text)}

    def leaves(node, path=()):
        if isinstance(node, dict) and node:
            for key, value in node.items():
                yield from leaves(value, (*path, key))
        else:
            yield ".".join(path)

    undocumented = [
        leaf
        for leaf in leaves(yaml.safe_load(text))
        if not any(leaf == key or leaf.startswith(f"{key}.") for key in documented)
    ]
    assert not undocumented


def test_the_check_fails_on_a_stale_readme(tmp_path, monkeypatch):
    stale = tmp_path / "README.md"
    stale.write_text(chart_readme.render().replace("`tune.workers`", "`tune.worker`"))
    monkeypatch.setattr(chart_readme, "README", stale)
    assert chart_readme.main(["--check"]) == 1
    assert chart_readme.main([]) == 0 and chart_readme.main(["--check"]) == 0


def test_parser_reads_documented_keys_and_skips_block_text():
    text = (
        "# -- Top.\na: 1\nb:\n  # -- Nested,\n  # continued.\n  c: [x]\nconfig: |\n  # -- not a doc\n  d: 2\n"
    )
    params = chart_readme.parameters(text)
    assert [(p.key, p.type, p.default, p.description) for p in params] == [
        ("a", "int", "1", "Top."),
        ("b.c", "list", '["x"]', "Nested, continued."),
    ]
