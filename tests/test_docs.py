"""Docs stay in sync with the single sources of truth."""
import os

from edge_vlm.docs import param_table
from edge_vlm.params import NODE_PARAMS, resolve

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_parameter_tables_are_current():
    readme = open(os.path.join(ROOT, "README.md")).read()
    for node in NODE_PARAMS:
        assert param_table(node) in readme, \
            f"README parameter table of {node} is stale: python -m edge_vlm.docs"


def test_readme_first_screen_has_the_two_commands():
    head = "\n".join(open(os.path.join(ROOT, "README.md")).read().splitlines()[:40])
    assert "make demo" in head and "make test" in head


def test_param_validation_errors_are_clear():
    with pytest.raises(ValueError, match="unknown parameter"):
        resolve("anc_router", {"no_such": 1})
    with pytest.raises(ValueError, match="<= 1.0"):
        resolve("anc_router", {"compute_budget": 2.0})
    with pytest.raises(ValueError, match="one of"):
        resolve("vlm_captioner", {"decoding": "sample"})
    assert resolve("anc_router", {"compute_budget": 1})["compute_budget"] == 1.0
