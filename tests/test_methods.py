"""The method registry and the random-units control (``ucan_cli.methods``), without a model.

The control's semantics are asserted exactly on synthetic statistics: U-CAN's count and factor
multiset (hence its budget) on as many units drawn from the live units above the floor, seeded,
sorted draw then permutation from ``default_rng([seed, 0x5EED])``. The CLI path (``--method
random``) is tested in test_attenuate_cli.py.
"""

from __future__ import annotations

import numpy as np
import pytest


def _result(n: int = 60, planted: int = 8, cumulative: np.ndarray | None = None, seed: int = 0):
    """U-CAN's ``ScoreResult`` on plausible statistics with ``planted`` forget-specific units and
    six silent (dead) ones, three modules of n / 3 output units."""
    from ucan_cli.methods.ucan.scoring import MethodParams, SetStats, compute_scores

    rng = np.random.default_rng(seed)
    base = rng.lognormal(0.0, 0.5, n)

    def stats(m1: np.ndarray, records: int, tokens: float = 200.0) -> SetStats:
        return SetStats(sum_abs=m1 * tokens, sum_sq=(m1**2) * 1.5 * tokens, tokens=np.full(n, tokens),
                        rec_sum=m1 * records, rec_sumsq=(m1**2) * 1.2 * records, n_records=records)

    forget = base * np.exp(rng.normal(0, 0.02, n))
    forget[rng.choice(n, planted, replace=False)] *= 4.0
    half_a = base * np.exp(rng.normal(0, 0.02, n))
    for m1 in (base, forget, half_a):
        m1[-6:] = 0.0  # zero utility: dead
    return compute_scores(stats(forget, 8), stats(base, 16), stats(half_a, 8), stats(base, 8),
                          np.repeat(np.arange(3), n // 3), MethodParams(unit="output", ratio=0.1), cum_factors=cumulative)


def test_registry_names_get_and_unknown():
    from ucan_cli.errors import InputError
    from ucan_cli.methods import registry
    from ucan_cli.methods.base import ACTIVATIONS, Method

    assert registry.names()[:2] == ("ucan", "random") and registry.DEFAULT == "ucan"
    for name in ("ucan", "random"):
        method = registry.get(name)
        assert isinstance(method, Method) and method.name == name and method.statistics == ACTIVATIONS
        assert method.pretty_name and registry.get(name) is method
    assert registry.get("ucan").reference_url.startswith("https://arxiv.org/")
    with pytest.raises(InputError, match=r"--method 'nope': no such method; available: ucan, random"):
        registry.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("random"))


def test_register_adds_a_method():
    from ucan_cli.methods import registry
    from ucan_cli.methods.base import Method

    class Nothing(Method):
        name = "test-nothing"
        pretty_name = "Nothing"
        description = "nothing"
        params_type = dict

        def edit(self, source, stats, params, *, seed=0, cumulative=None):
            raise NotImplementedError

    method = registry.register(Nothing())
    try:
        assert registry.get("test-nothing") is method and registry.names()[-1] == "test-nothing"
    finally:
        registry._loaded.pop("test-nothing")


def test_random_units_spend_ucans_budget_on_drawn_live_units():
    from ucan_cli.methods.random_units import draw, summary

    ucan = _result()
    edited = np.flatnonzero(ucan.s < 1.0)
    assert 0 < edited.size < ucan.n_live < ucan.s.size  # some units are dead, so live matters
    d = draw(ucan, seed=4)
    assert np.array_equal(d.chosen, np.flatnonzero(d.s < 1.0)) and np.all(np.diff(d.chosen) > 0)
    assert np.all(ucan.live[d.chosen])  # drawn among the live units only
    assert np.array_equal(np.sort(d.s[d.chosen]), np.sort(ucan.s[edited]))  # the same factor multiset
    assert np.all(d.s[np.setdiff1d(np.arange(d.s.size), d.chosen)] == 1.0)
    # The documented stream: the sorted draw, then the permutation.
    rng = np.random.default_rng([4, 0x5EED])
    chosen = np.sort(rng.choice(np.flatnonzero(ucan.live), size=edited.size, replace=False))
    assert np.array_equal(chosen, d.chosen) and np.array_equal(rng.permutation(ucan.s[edited]), d.s[d.chosen])
    # Seeded: equal seeds, equal draws; another seed, other units.
    assert np.array_equal(draw(ucan, seed=4).s, d.s) and not np.array_equal(draw(ucan, seed=5).chosen, d.chosen)
    doc = summary(d)
    assert doc["n_attenuated"] == int((ucan.s < 1).sum()) and doc["k"] == ucan.k
    assert doc["budget_sum_1_minus_s"] == pytest.approx(float((1 - ucan.s).sum()), rel=1e-12)
    assert doc["random_units"] == {"seed": 4, "n_pool": ucan.n_live, "overlap_with_ucan": d.overlap_with_ucan}


def test_random_units_respect_the_floor_rule():
    """Units the lineage already drove to the floor are never drawn (as U-CAN never picks them)."""
    from ucan_cli.methods.random_units import draw

    first = _result()
    floored = np.flatnonzero(first.live)[: first.n_live // 2]
    cumulative = np.ones(first.s.size)
    cumulative[floored] = 0.0  # at the default floor 0: not above it
    ucan = _result(cumulative=cumulative)
    for seed in range(20):
        d = draw(ucan, seed)
        assert not np.isin(d.chosen, floored).any() and np.all(d.pool[d.chosen])
        assert d.pool.sum() == ucan.n_live - floored.size
