"""The kernel registry: each family module's KERNELS table and the lazy index in core.qtypes agree,
and get_kernel hands out exactly the table's functions."""
from __future__ import annotations

import importlib

import pytest

from core.errors import UnsupportedError
from core.kernels import get_kernel
from core.qtypes import INTERMEDIATE_ONLY, KERNEL_FAMILIES, T


@pytest.mark.parametrize("family", sorted(KERNEL_FAMILIES))
def test_each_family_table_matches_the_index(family):
    table = importlib.import_module(f"core.kernels.{family}").KERNELS
    assert set(table) - INTERMEDIATE_ONLY == set(KERNEL_FAMILIES[family])
    for qt in KERNEL_FAMILIES[family]:
        q, dq = table[qt]
        k = get_kernel(qt.name)
        assert k._q is q and k._dq is dq and k.qtype == qt


def test_types_outside_the_tables_are_refused():
    for qt in (T.Q8_K, T.Q8_1):
        with pytest.raises(UnsupportedError):
            get_kernel(qt)
