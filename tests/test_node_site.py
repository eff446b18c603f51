"""The lazy `rfc3987_syntax` our local Ray nodes start with (backends/node_site/): importing
`jsonschema` (as every Ray process does through `ray.runtime_env`) no longer builds the IRI
grammar, and IRI checks still work, on the real package, when something uses them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import jupyter_raykube.backends.local as local

pytest.importorskip("rfc3987_syntax")  # without the package, jsonschema never imports it

PROBE = r"""
import json, sys
import jsonschema
from jsonschema import Draft202012Validator, FormatChecker
before = sys.modules["rfc3987_syntax"].__file__
validator = Draft202012Validator({"format": "iri"}, format_checker=FormatChecker())
bad = [e.message for e in validator.iter_errors("http://ex ample")]
good = [e.message for e in validator.iter_errors("http://example.com/caf\u00e9")]
print(json.dumps({"before": before, "after": sys.modules["rfc3987_syntax"].__file__, "bad": bad, "good": good}))
"""


def test_jsonschema_loads_the_iri_grammar_only_when_it_checks_an_iri() -> None:
    site = Path(local.__file__).with_name("node_site")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(out.stdout)
    assert Path(seen["before"]).parent == site  # importing jsonschema took the stand-in
    assert "site-packages" in seen["after"]  # the first IRI check loaded the real package
    assert seen["bad"] and not seen["good"]
