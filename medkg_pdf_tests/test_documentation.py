"""What a user reads is what the code does: the README names every setting the package reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# a whole variable name; `MEDKG_INBOX_` alone is a prefix a loop completes, not a setting
_SETTING = re.compile(r"\bMEDKG_[A-Z0-9_]*[A-Z0-9]\b")


def test_the_readme_configuration_names_every_environment_variable_the_package_reads():
    read_by_the_package = {
        name for path in (REPO / "medkg_pdf").rglob("*.py") for name in _SETTING.findall(path.read_text(encoding="utf-8"))
    }
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    configuration = readme[readme.index("## Configuration") : readme.index("## The model server client")]

    assert len(read_by_the_package) > 20, "the scan found the settings"
    assert sorted(name for name in read_by_the_package if f"`{name}`" not in configuration) == []


def test_the_published_json_schemas_are_those_of_the_records_written():
    from medkg_pdf.schemas import published_json_schemas

    for name, schema in published_json_schemas().items():
        path = REPO / "docs" / "schemas" / f"{name}.schema.json"
        assert path.exists() and json.loads(path.read_text(encoding="utf-8")) == schema, (
            f"{path.relative_to(REPO)} is out of date: python -m medkg_pdf.schemas docs/schemas"
        )
