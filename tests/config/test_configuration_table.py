"""Every setting the code reads from the environment is documented in README's configuration table."""

from __future__ import annotations

import re

from tests.stack import ROOT

READ_FROM_ENVIRONMENT = re.compile(
    r"""(?:\benv(?:_int|_float|_bool)?\(|os\.environ\.get\(|os\.environ\[|os\.getenv\(|_required\()\s*["']([A-Z][A-Z0-9_]+)["']"""
)
SOURCE_DIRECTORIES = ("config", "writes", "api", "readmodels")


def variables_read_by_the_code() -> set[str]:
    found: set[str] = set()
    for directory in SOURCE_DIRECTORIES:
        for path in (ROOT / directory).rglob("*.py"):
            if "migrations" not in path.parts:
                found.update(READ_FROM_ENVIRONMENT.findall(path.read_text()))
    return found


def variables_in_the_readme_table() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split(" | ")[0])}


def test_configuration_table_lists_every_variable_the_code_reads():
    read = variables_read_by_the_code()
    assert len(read) > 40  # the scan itself works
    missing = read - variables_in_the_readme_table()
    assert not missing, f"read from the environment but not in README's configuration table: {sorted(missing)}"
