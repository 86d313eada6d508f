"""sendflowr.arrays: the sorted-order set operations give numpy's answers, on the shapes the identity run and the
API's identity map feed them (random 64-bit keys, repeats, absent values, empty sides)."""

import numpy as np
import pytest

from sendflowr.arrays import lookup, unique


@pytest.mark.parametrize("n", [0, 1, 2, 1000, 50_000])
def test_unique_is_numpys(n):
    rng = np.random.default_rng(n)
    values = rng.integers(0, 2**63, n, dtype=np.uint64)
    values = np.concatenate([values, values[: n // 3]])  # repeats
    rng.shuffle(values)
    got = unique(values)
    assert got.dtype == values.dtype
    np.testing.assert_array_equal(got, np.unique(values))


@pytest.mark.parametrize("keys_n,values_n", [(0, 5), (5, 0), (1, 4), (1000, 3000), (40_000, 100_000)])
def test_lookup_is_a_binary_search_with_found(keys_n, values_n):
    rng = np.random.default_rng(keys_n + values_n)
    keys = np.unique(rng.integers(0, 2**63, keys_n, dtype=np.uint64))
    present = keys[rng.integers(0, len(keys), values_n)] if len(keys) else np.zeros(values_n, np.uint64)
    absent = rng.integers(0, 2**63, values_n, dtype=np.uint64)
    values = np.where(rng.random(values_n) < 0.5, present, absent)
    at, found = lookup(keys, values)
    want_found = np.isin(values, keys)
    np.testing.assert_array_equal(found, want_found)
    if len(keys):
        np.testing.assert_array_equal(at[found], np.searchsorted(keys, values[found]))
        assert (keys[at[found]] == values[found]).all()
        assert ((at >= 0) & (at < len(keys))).all()  # absent values still index something (clipped)
    else:
        assert not found.any()
