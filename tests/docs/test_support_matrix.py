"""docs/providers.md's support matrix is checked against the conformance suite, so the
table cannot drift from the code: each cell needs golden cases tagged with its feature
whose outcome matches it.

  refused    every tagged case is a 400 answered before anything goes upstream;
  supported  some tagged case sends the client's body upstream unchanged apart from
             `model` and `stream_options` (the upstream speaks OpenAI);
  translated some tagged case goes upstream in a rewritten form.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
DOC = ROOT / "docs" / "providers.md"


def read_matrix() -> dict[tuple[str, str], str]:
    text = DOC.read_text()
    block = re.search(r"<!-- support-matrix:start -->(.*?)<!-- support-matrix:end -->", text, re.S)
    assert block, "docs/providers.md lost its support-matrix markers"
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in block.group(1).strip().splitlines()]
    header, body = rows[0], [r for r in rows[2:] if r]
    return {(row[0], provider): value for row in body for provider, value in zip(header[1:], row[1:], strict=True)}


def tagged_cases(provider: str, feature: str) -> list[Path]:
    return [meta.parent for meta in sorted((GOLDEN / provider).glob("*/meta.json"))
            if feature in orjson.loads(meta.read_bytes())["features"]]


def is_refusal(case: Path) -> bool:
    if (case / "upstream_request.json").exists():
        return False
    expected = orjson.loads((case / "expected_response.json").read_bytes())
    return bool(expected["status"] == 400 and expected["error"]["type"] == "invalid_request_error")


def is_pass_through(case: Path) -> bool:
    client: dict[str, Any] = orjson.loads((case / "client_request.json").read_bytes())
    sent = orjson.loads((case / "upstream_request.json").read_bytes())["body"]
    ignored = {"model", "stream_options"}
    return {k: v for k, v in client.items() if k not in ignored} == {k: v for k, v in sent.items() if k not in ignored}


MATRIX = read_matrix()


@pytest.mark.parametrize(("feature", "provider"), sorted(MATRIX), ids=[f"{p}:{f}" for f, p in sorted(MATRIX)])
def test_matrix_cell_matches_golden_cases(feature: str, provider: str) -> None:
    value = MATRIX[(feature, provider)]
    cases = tagged_cases(provider, feature)
    assert cases, f"no golden case for {provider}/{feature}"
    served = [c for c in cases if not is_refusal(c)]
    if value == "refused":
        assert not served, f"{provider}/{feature} is documented as refused but {served[0].name} is served"
    elif value == "supported":
        assert any(is_pass_through(c) for c in served), f"{provider}/{feature}: no case passes it through"
    elif value == "translated":
        assert any(not is_pass_through(c) for c in served), f"{provider}/{feature}: no case translates it"
    else:
        pytest.fail(f"unknown matrix value {value!r}")


def test_every_tagged_feature_is_in_the_matrix() -> None:
    features = {f for meta in GOLDEN.glob("*/*/meta.json") for f in orjson.loads(meta.read_bytes())["features"]}
    documented = {feature for feature, _ in MATRIX}
    assert features <= documented, f"features without a matrix row: {sorted(features - documented)}"
    providers = {p for _, p in MATRIX}
    assert providers == {d.name for d in GOLDEN.iterdir() if d.is_dir()}
