"""Fuzz suite, in process: the readers and the per-record work never raise, hang or lose a record.

Bounded for CI and reproducible (``derandomize``: the same inputs on every run); ``tools/fuzz.py
--minutes N`` runs the same properties (``_fuzz_props.PROPERTIES``) with fresh inputs for longer.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

import _fuzz_props as fp

pytestmark = pytest.mark.fuzz
P = fp.PROPERTIES


def ci(name: str):  # type: ignore[no-untyped-def]
    """The CI budget of property ``name``: its examples, reproducible, shrunk on failure."""
    p = P[name]
    return lambda f: settings(max_examples=p.ci_examples, deadline=None, derandomize=True,
                              database=None, suppress_health_check=list(HealthCheck))(
        given(p.strategy)(f))


@ci("msp_reader")
def test_msp_reader(value):
    P["msp_reader"].check(value)


@ci("msp_line_ends")
def test_msp_line_end_conventions_read_alike(value):
    P["msp_line_ends"].check(value)


@ci("convert_msp")
def test_convert_msp_without_structure(value):
    P["convert_msp"].check(value)


@ci("convert_msp_rdkit")
def test_convert_msp_with_rdkit(value):
    P["convert_msp_rdkit"].check(value)


@ci("iter_lines")
def test_iter_lines(value):
    P["iter_lines"].check(value)


@ci("featurize_rows")
def test_featurize_rows_into_a_shard(value):
    P["featurize_rows"].check(value)


@ci("predict_inputs")
def test_predict_inputs_and_writer(value):
    P["predict_inputs"].check(value)
