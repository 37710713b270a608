"""Fuzz suite, through the installed CLI: exit 0/1/2 only, no traceback, no hang, read = written +
rejected, no temporary file left, input unchanged (``_fuzz_props.run_cli``).

One process per example, so few examples, reproducible (``derandomize``) and not shrunk (each
try is a process: minutes); the failing input is printed as found. ``tools/fuzz.py`` runs many
more.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings

import _fuzz_props as fp

pytestmark = [pytest.mark.fuzz, pytest.mark.cli]
P = fp.PROPERTIES


def ci(name: str):  # type: ignore[no-untyped-def]
    p = P[name]
    return lambda f: settings(max_examples=p.ci_examples, deadline=None, derandomize=True,
                              database=None, phases=(Phase.explicit, Phase.generate),
                              suppress_health_check=list(HealthCheck))(given(p.strategy)(f))


@ci("cli_msp2jsonl")
def test_msp2jsonl(value):
    P["cli_msp2jsonl"].check(value)


@ci("cli_featurize")
def test_featurize(value):
    P["cli_featurize"].check(value)


@ci("cli_predict")
def test_predict(value):
    P["cli_predict"].check(value)
