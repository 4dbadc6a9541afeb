"""Golden tests of U-CAN steps 2-5 (ucan_cli.methods.ucan.scoring) against a literal float64 reference.

The reference below is written straight from SPEC section 3, loop by loop, without calling the
module's helpers, so a mistake in either shows up as a mismatch at 1e-12.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ucan_cli.errors import InputError, NothingToDo
from ucan_cli.methods.ucan.params import MethodParams
from ucan_cli.methods.ucan.scoring import (
    CONSTANT_RELATIVE_STD,
    SetStats,
    budget_size,
    compute_scores,
    factors_from_scores,
    order_eligible,
    robust_scale,
    robust_z,
)

TOL = 1e-12
MODS = np.repeat([0, 1, 2], [6, 8, 6])  # 20 units in 3 modules
N = MODS.size
BOOSTED = (2, 4, 9, 10, 12, 15, 17)
DEAD_U = 4  # zero retain activation -> U = 0
CONSTANT = 12  # same record mean in every record
EXPECTED_ELIGIBLE = {2, 9, 10, 15, 17}  # BOOSTED minus the two dead units


# ---------------------------------------------------------------------------------------------
# World construction


def stats_from(m1: np.ndarray, m2: np.ndarray, tokens: np.ndarray, rec: np.ndarray) -> SetStats:
    """SetStats whose token moments are m1, m2 and whose per-record means are the rows of rec."""
    tokens = np.asarray(tokens, dtype=np.float64)
    return SetStats(
        sum_abs=m1 * tokens,
        sum_sq=m2 * tokens,
        tokens=tokens,
        rec_sum=rec.sum(axis=0),
        rec_sumsq=(rec**2).sum(axis=0),
        n_records=rec.shape[0],
    )


def make_world(seed: int = 0, boost: bool = True) -> dict:
    """Forget, retain and the two retain halves for 20 units; BOOSTED units fire more on D_f."""
    rng = np.random.default_rng(seed)
    m1r = rng.lognormal(0.0, 0.5, N)
    m1f = m1r * np.exp(rng.normal(0.0, 0.02, N))
    if boost:
        m1f[list(BOOSTED)] *= [3.0, 5.0, 2.5, 2.0, 4.0, 1.6, 4.0]
    m1a = m1r * np.exp(rng.normal(0.0, 0.02, N))
    m1b = m1r * np.exp(rng.normal(0.0, 0.02, N))
    for m in (m1r, m1a, m1b):
        m[DEAD_U] = 0.0
    rec_f = m1f * np.exp(rng.normal(0.0, 0.3, (7, N)))
    rec_r = m1r * np.exp(rng.normal(0.0, 0.3, (11, N)))
    rec_f[:, CONSTANT] = 0.7
    rec_r[:, CONSTANT] = 0.7
    tok = lambda per_module: np.asarray(per_module, dtype=np.float64)[MODS]  # noqa: E731
    return {
        "forget": stats_from(m1f, 1.5 * m1f**2, tok([30, 40, 50]), rec_f),
        "retain": stats_from(m1r, 1.5 * m1r**2, tok([100, 120, 90]), rec_r),
        "half_a": stats_from(m1a, 1.5 * m1a**2, tok([50, 60, 45]), rec_r[:5]),
        "half_b": stats_from(m1b, 1.5 * m1b**2, tok([50, 60, 45]), rec_r[5:]),
        "rec_f": rec_f,
        "rec_r": rec_r,
    }


def run(w: dict, params: MethodParams, **kw):
    return compute_scores(w["forget"], w["retain"], w["half_a"], w["half_b"], MODS, params, **kw)


# ---------------------------------------------------------------------------------------------
# Literal reference (SPEC section 3)


def ref_scale(x):
    med = np.median(x)
    mad = np.median(np.abs(x - med))
    if mad > 0:
        return 1.4826 * mad
    return 1.2533 * np.mean(np.abs(x - med))


def reference(w: dict, p: MethodParams, scaling=None, bnorm=None, cum=None) -> dict:
    f, r, a, b = w["forget"], w["retain"], w["half_a"], w["half_b"]
    m1f = f.sum_abs / f.tokens
    m1r = r.sum_abs / r.tokens
    m2r = r.sum_sq / r.tokens
    m1a = a.sum_abs / a.tokens
    m1b = b.sum_abs / b.tokens
    eps = np.zeros(N)
    eps0 = np.zeros(N)
    for u in range(N):
        same = MODS == MODS[u]
        eps[u] = max(1e-6 * np.mean(m1r[same]), 1e-12)
        eps0[u] = max(1e-6 * np.mean(m1b[same]), 1e-12)
    if p.no_contrast:
        R = np.log(m1f + eps)
    else:
        R = np.log((m1f + eps) / (m1r + eps))
    R0 = np.log((m1a + eps0) / (m1b + eps0))
    if p.unit == "rank":
        U = scaling * bnorm * np.sqrt(m2r)
    else:
        U = np.sqrt(m2r)
    records = np.concatenate([w["rec_f"], w["rec_r"]], axis=0)
    rec_mean = records.mean(axis=0)
    rec_std = records.std(axis=0)
    live = (U > 0) & (rec_mean > 0) & (rec_std > 1e-5 * rec_mean)
    sigma0 = max(ref_scale(R0[live]), 1e-12)

    def z(x):
        out = np.full(N, np.nan)
        sc = ref_scale(x[live])
        for u in np.flatnonzero(live):
            out[u] = (x[u] - np.median(x[live])) / sc if sc > 0 else 0.0
        return out

    Rh = z(R)
    logU = np.full(N, np.nan)
    logU[live] = np.log(U[live])
    Uh = z(logU)
    lam = 0.0 if p.no_utility else p.lam
    S = Rh - lam * Uh
    eligible = np.zeros(N, dtype=bool)
    for u in np.flatnonzero(live):
        if p.no_contrast:
            ok = Rh[u] >= 1
        else:
            ok = R[u] >= math.log(1 + p.min_gap) and R[u] >= p.t_risk * sigma0
        if cum is not None:
            ok = ok and cum[u] > p.floor
        eligible[u] = ok
    E = sorted(np.flatnonzero(eligible), key=lambda u: (-S[u], u))
    n_live = int(live.sum())
    if p.tau is None:
        k = min(len(E), math.ceil(p.ratio * n_live))
        tau = S[E[k - 1]] if k else None
        selected = set(E[:k])
    else:
        tau = p.tau
        selected = {u for u in E if S[u] >= tau}
        k = len(selected)
    g, fl = p.sharpness, p.floor
    s = np.ones(N)
    for u in E:
        if p.decay == "sigmoid":
            s[u] = 1 - (1 - fl) * (1 / (1 + math.exp(-g * (S[u] - tau))))
        elif p.decay == "exp":
            s[u] = fl + (1 - fl) * math.exp(-g * max(0.0, S[u] - tau + math.log(2) / g))
        else:
            s[u] = fl if u in selected else 1.0
        if 1 - s[u] < 1e-4:
            s[u] = 1.0
    return dict(
        m1f=m1f, m1r=m1r, m2r=m2r, eps=eps, eps0=eps0, R=R, R0=R0, U=U, live=live,
        sigma0=sigma0, Rh=Rh, Uh=Uh, S=S, eligible=eligible, k=k, tau=tau,
        selected=np.isin(np.arange(N), sorted(selected)), s=s, n_live=n_live,
    )


def assert_matches(res, ref: dict) -> None:
    np.testing.assert_allclose(res.m1_f, ref["m1f"], rtol=0, atol=TOL)
    np.testing.assert_allclose(res.m1_r, ref["m1r"], rtol=0, atol=TOL)
    np.testing.assert_allclose(res.m2_r, ref["m2r"], rtol=0, atol=TOL)
    np.testing.assert_allclose(res.eps[MODS], ref["eps"], rtol=0, atol=TOL)
    np.testing.assert_allclose(res.eps0[MODS], ref["eps0"], rtol=0, atol=TOL)
    np.testing.assert_allclose(res.R, ref["R"], rtol=0, atol=TOL)
    np.testing.assert_allclose(res.R0, ref["R0"], rtol=0, atol=TOL)
    np.testing.assert_allclose(res.U, ref["U"], rtol=0, atol=TOL)
    np.testing.assert_array_equal(res.live, ref["live"])
    assert res.n_live == ref["n_live"]
    assert abs(res.sigma0 - ref["sigma0"]) <= TOL
    # NaN exactly where the reference has NaN (dead units), equal elsewhere.
    np.testing.assert_allclose(res.Rh, ref["Rh"], rtol=0, atol=TOL, equal_nan=True)
    np.testing.assert_allclose(res.Uh, ref["Uh"], rtol=0, atol=TOL, equal_nan=True)
    np.testing.assert_allclose(res.S, ref["S"], rtol=0, atol=TOL, equal_nan=True)
    np.testing.assert_array_equal(res.eligible, ref["eligible"])
    np.testing.assert_array_equal(res.selected, ref["selected"])
    assert res.k == ref["k"]
    assert abs(res.tau - ref["tau"]) <= TOL
    np.testing.assert_allclose(res.s, ref["s"], rtol=0, atol=TOL)
    np.testing.assert_array_equal(res.s == 1.0, ref["s"] == 1.0)  # snap and untouched: exact 1


# ---------------------------------------------------------------------------------------------
# Golden end-to-end


@pytest.mark.parametrize("decay", ["sigmoid", "exp", "hard"])
@pytest.mark.parametrize("floor", [0.0, 0.3])
@pytest.mark.parametrize("sharpness", [4.0, 0.1])  # 0.1: intermediate factors on every unit
def test_golden_output_units(decay: str, floor: float, sharpness: float) -> None:
    w = make_world()
    p = MethodParams(ratio=0.2, decay=decay, floor=floor, sharpness=sharpness)
    res = run(w, p)
    ref = reference(w, p)
    assert_matches(res, ref)
    # The construction: boosted live units, and only those, are eligible; k = ceil(0.2*18) = 4.
    assert set(np.flatnonzero(res.eligible)) == EXPECTED_ELIGIBLE
    assert res.n_live == N - 2
    assert res.k == 4
    assert not res.live[DEAD_U] and not res.live[CONSTANT]
    assert np.isnan(res.S[DEAD_U]) and np.isnan(res.S[CONSTANT])
    # Summary numbers are the reference's budget and are JSON-safe.
    d = res.summary()
    json.dumps(d, allow_nan=False)
    assert d["n_attenuated"] == int((ref["s"] < 1).sum())
    assert d["n_at_most_half"] == int((ref["s"] <= (1 + floor) / 2 + 1e-12).sum())
    assert abs(d["budget_sum_1_minus_s"] - (1 - ref["s"]).sum()) <= TOL
    assert d["n_eligible"] == 5 and d["k"] == 4 and d["n_dead"] == 2
    assert d["n_dead_zero_utility"] == 1 and d["n_dead_constant"] == 1


def test_golden_rank_units() -> None:
    w = make_world(seed=3)
    scaling = np.array([2.0, 0.5, 1.0])[MODS]
    bnorm = np.linspace(0.1, 2.0, N)
    p = MethodParams(unit="rank", ratio=0.3)
    res = run(w, p, scaling=scaling, b_col_norms=bnorm)
    assert_matches(res, reference(w, p, scaling=scaling, bnorm=bnorm))


def test_golden_tau_mode() -> None:
    w = make_world()
    base = run(w, MethodParams(ratio=0.2))
    tau = float(np.sort(base.S[base.eligible])[1])  # second smallest eligible S
    p = MethodParams(ratio=None, tau=tau)
    res = run(w, p)
    ref = reference(w, p)
    assert_matches(res, ref)
    assert res.k == 4 and res.tau == tau
    assert res.selected.sum() == 4


def test_golden_no_contrast() -> None:
    w = make_world()
    p = MethodParams(no_contrast=True, ratio=0.5)
    res = run(w, p)
    ref = reference(w, p)
    assert_matches(res, ref)
    f = w["forget"]
    eps = res.eps[MODS]
    np.testing.assert_allclose(res.R, np.log(f.sum_abs / f.tokens + eps), rtol=0, atol=TOL)
    # Eligibility is Rh >= 1 among live units, nothing else.
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(res.eligible, res.live & (res.Rh >= 1))
    assert res.eligible.sum() >= 1


def test_golden_no_utility() -> None:
    w = make_world()
    p = MethodParams(no_utility=True, lam=2.0, ratio=0.2)
    res = run(w, p)
    assert_matches(res, reference(w, p))
    np.testing.assert_array_equal(res.S[res.live], res.Rh[res.live])
    assert res.summary()["lambda_effective"] == 0.0


def test_golden_cum_factor_floor_rule() -> None:
    w = make_world()
    cum = np.ones(N)
    cum[2] = 0.3  # at the floor: not eligible
    cum[9] = 0.31  # above the floor: still eligible
    cum[10] = 0.0
    p = MethodParams(ratio=0.2, floor=0.3)
    res = run(w, p, cum_factors=cum)
    assert_matches(res, reference(w, p, cum=cum))
    assert set(np.flatnonzero(res.eligible)) == {9, 15, 17}
    assert res.summary()["n_pass_floor"] == int(res.live.sum()) - 2


# ---------------------------------------------------------------------------------------------
# Robust statistics


def test_robust_scale_mad_and_fallback() -> None:
    x = np.array([1.0, 2.0, 4.0, 7.0, 11.0])  # median 4, |dev| = 3,2,0,3,7 -> MAD 3
    assert robust_scale(x) == pytest.approx(1.4826 * 3.0, abs=TOL)
    y = np.array([0.0, 0.0, 0.0, 1.0, 2.0])  # MAD 0 -> 1.2533 * mean |y - 0| = 1.2533 * 0.6
    assert abs(robust_scale(y) - 1.2533 * 0.6) <= TOL
    live = np.array([True, True, True, True, True, False])
    z = robust_z(np.append(y, 99.0), live)
    np.testing.assert_allclose(z[:5], (y - 0.0) / (1.2533 * 0.6), rtol=0, atol=TOL)
    assert np.isnan(z[5])


def test_robust_z_zero_scale_gives_zero() -> None:
    x = np.array([5.0, 5.0, 5.0, -3.0])
    live = np.array([True, True, True, False])
    z = robust_z(x, live)
    assert z[:3].tolist() == [0.0, 0.0, 0.0]
    assert np.isnan(z[3])


def test_sigma0_fallback_and_floor_in_compute_scores() -> None:
    w = make_world()
    # Half a equal to half b: R0 = 0 everywhere, MAD and mean deviation 0 -> sigma0 = 1e-12.
    w["half_a"] = w["half_b"]
    res = run(w, MethodParams(ratio=0.2))
    assert res.sigma0 == 1e-12
    assert np.all(res.R0 == 0.0)
    # Half a differs from half b in 3 live units only: MAD 0, the fallback scale is used.
    hb = w["half_b"]
    sa = hb.sum_abs.copy()
    sa[[0, 7, 14]] *= np.exp([0.1, -0.2, 0.4])
    w["half_a"] = SetStats(sa, hb.sum_sq, hb.tokens, hb.rec_sum, hb.rec_sumsq, hb.n_records)
    res = run(w, MethodParams(ratio=0.2))
    r0 = res.R0[res.live]
    assert np.median(np.abs(r0 - np.median(r0))) == 0.0
    assert abs(res.sigma0 - 1.2533 * np.mean(np.abs(r0 - np.median(r0)))) <= TOL
    assert res.sigma0 > 0.02


# ---------------------------------------------------------------------------------------------
# Dead units


def test_dead_units_zero_utility_and_constant_records() -> None:
    w = make_world()
    res = run(w, MethodParams(ratio=0.2))
    # Both dead units have a large R (they are boosted) but are never eligible.
    assert res.R[DEAD_U] > 10 and res.R[CONSTANT] > 1
    assert res.U[DEAD_U] == 0.0 and res.U[CONSTANT] > 0
    assert not res.eligible[DEAD_U] and not res.eligible[CONSTANT]
    assert res.s[DEAD_U] == 1.0 and res.s[CONSTANT] == 1.0


def test_constant_records_relative_threshold() -> None:
    w = make_world()
    rec_f, rec_r = w["rec_f"].copy(), w["rec_r"].copy()
    rng = np.random.default_rng(1)
    # Unit 12: fp32-like jitter of 1e-7 relative -> still dead. Unit 13: 1e-3 relative -> live.
    rec_f[:, CONSTANT] = 0.7 * (1 + 1e-7 * rng.standard_normal(rec_f.shape[0]))
    rec_r[:, CONSTANT] = 0.7 * (1 + 1e-7 * rng.standard_normal(rec_r.shape[0]))
    rec_f[:, 13] = 0.5 * (1 + 1e-3 * rng.standard_normal(rec_f.shape[0]))
    rec_r[:, 13] = 0.5 * (1 + 1e-3 * rng.standard_normal(rec_r.shape[0]))
    for name, rec in (("forget", rec_f), ("retain", rec_r)):
        st = w[name]
        w[name] = SetStats(
            st.sum_abs, st.sum_sq, st.tokens, rec.sum(0), (rec**2).sum(0), rec.shape[0]
        )
    res = run(w, MethodParams(ratio=0.2))
    assert not res.live[CONSTANT]
    assert res.live[13]
    assert CONSTANT_RELATIVE_STD == 1e-5


def test_zero_tokens_means_zero_moments_and_dead() -> None:
    w = make_world()
    st = w["forget"]
    tokens = st.tokens.copy()
    tokens[MODS == 2] = 0.0
    w["forget"] = SetStats(st.sum_abs, st.sum_sq, tokens, st.rec_sum, st.rec_sumsq, st.n_records)
    res = run(w, MethodParams(ratio=0.2))
    assert np.all(res.m1_f[MODS == 2] == 0.0)
    assert not res.live[MODS == 2].any()
    assert res.n_live == N - 2 - 6


# ---------------------------------------------------------------------------------------------
# k = 0


def test_identical_forget_and_retain_nothing_to_do() -> None:
    w = make_world()
    w["forget"] = w["retain"]
    w["rec_f"] = w["rec_r"]
    with pytest.raises(NothingToDo) as exc:
        run(w, MethodParams())
    d = exc.value.details
    assert d["max_R"] == 0.0  # R = log(1) exactly for every unit
    assert d["n_pass_min_gap"] == 0 and d["n_pass_t_risk"] == 0 and d["n_eligible"] == 0
    assert d["n_live"] == N - 2
    assert "largest R = 0" in exc.value.message
    assert exc.value.exit_code == 4


def test_nothing_to_do_reports_numbers() -> None:
    w = make_world(boost=False)
    # Forget 10% above retain everywhere: every unit passes min_gap (log 1.1 > log 1.05) while
    # noisy halves (sd 0.3) make t_risk * sigma0 far larger than log 1.1.
    r = w["retain"]
    w["forget"] = SetStats(1.1 * r.sum_abs, r.sum_sq, r.tokens, r.rec_sum, r.rec_sumsq, r.n_records)
    rng = np.random.default_rng(5)
    hb = w["half_b"]
    w["half_a"] = SetStats(
        hb.sum_abs * np.exp(rng.normal(0, 0.3, N)), hb.sum_sq, hb.tokens, hb.rec_sum,
        hb.rec_sumsq, hb.n_records,
    )
    p = MethodParams()
    with pytest.raises(NothingToDo) as exc:
        run(w, p)
    d = exc.value.details
    ref = reference(w, p)
    live = ref["live"]
    max_r = ref["R"][live].max()
    assert abs(d["max_R"] - max_r) <= TOL
    assert abs(d["sigma0"] - ref["sigma0"]) <= TOL
    assert abs(d["max_R_over_sigma0"] - max_r / ref["sigma0"]) <= 1e-9
    assert d["n_pass_min_gap"] == 18
    assert d["n_pass_t_risk"] == int((ref["R"][live] >= 3 * ref["sigma0"]).sum()) == 0
    assert d["n_eligible"] == 0
    msg = exc.value.message
    assert f"{max_r:.4g}" in msg and f"{max_r / ref['sigma0']:.4g}" in msg
    assert "18" in msg


def test_tau_mode_above_all_scores_is_nothing_to_do() -> None:
    w = make_world()
    with pytest.raises(NothingToDo) as exc:
        run(w, MethodParams(ratio=None, tau=1e6))
    assert exc.value.details["n_eligible"] == 5
    assert "S >= tau" in exc.value.message


# ---------------------------------------------------------------------------------------------
# Budget


def test_budget_size_is_exact_ceil() -> None:
    assert budget_size(0.05, 40) == 2  # the double nearest 0.05 is above 1/20: exact * 40 > 2
    assert budget_size(0.05, 41) == 3
    assert budget_size(0.1, 30) == 3  # 0.1*30 == 3.0000000000000004 in float
    assert budget_size(0.07, 100) == 7  # 0.07*100 == 7.000000000000001 in float
    assert budget_size(1.0, 18) == 18
    assert budget_size(0.001, 5) == 1


def many_live_world(n_units: int) -> tuple[list[SetStats], np.ndarray]:
    """n_units live units in one module, all strongly forget-specific (all eligible)."""
    rng = np.random.default_rng(2)
    mods = np.zeros(n_units, dtype=np.int64)
    m1r = rng.lognormal(0, 0.3, n_units)
    m1f = m1r * np.exp(1.0 + rng.normal(0, 0.3, n_units))
    m1a = m1r * np.exp(rng.normal(0, 0.01, n_units))
    rec = rng.lognormal(0, 0.3, (6, n_units))
    tok = np.full(n_units, 20.0)
    sets = [stats_from(m, m**2, tok, rec) for m in (m1f, m1r, m1a, m1r)]
    return sets, mods


@pytest.mark.parametrize(("n_units", "k"), [(40, 2), (41, 3)])
def test_ratio_ceil_through_compute_scores(n_units: int, k: int) -> None:
    sets, mods = many_live_world(n_units)
    res = compute_scores(*sets, mods, MethodParams(ratio=0.05))
    assert res.n_live == n_units and res.eligible.sum() == n_units
    assert res.k == k


def test_ties_break_by_module_then_index() -> None:
    s = np.array([1.0, 2.0, 2.0, 0.0, 2.0, 5.0])
    eligible = np.array([True, True, True, True, True, False])
    assert order_eligible(s, eligible).tolist() == [1, 2, 4, 0, 3]
    # End to end: module 1 is an exact copy of module 0, so every unit ties with its twin.
    rng = np.random.default_rng(4)
    half = 6
    mods = np.repeat([0, 1], half)
    m1r = np.tile(rng.lognormal(0, 0.3, half), 2)
    m1f = m1r * np.tile(np.exp(rng.normal(1.0, 0.3, half)), 2)
    m1a = m1r * np.tile(np.exp(rng.normal(0, 0.01, half)), 2)
    rec = np.tile(rng.lognormal(0, 0.3, (5, half)), 2)
    tok = np.full(2 * half, 10.0)
    sets = [stats_from(m, m**2, tok, rec) for m in (m1f, m1r, m1a, m1r)]
    res = compute_scores(*sets, mods, MethodParams(ratio=0.25, decay="hard"))  # k = 3
    top = int(np.argmax(res.S[:half]))
    second = int(np.argsort(-res.S[:half], kind="stable")[1])
    assert res.S[top] == res.S[top + half]
    assert res.k == 3
    assert sorted(np.flatnonzero(res.selected).tolist()) == sorted([top, top + half, second])
    assert res.tau == res.S[second]
    # With k = 3 the third pick is the module-0 twin of the second-best pair.
    assert res.selected[second] and not res.selected[second + half]
    assert res.s[second] == 0.0 and res.s[second + half] == 1.0


# ---------------------------------------------------------------------------------------------
# Decays


@pytest.mark.parametrize("decay", ["sigmoid", "exp"])
@pytest.mark.parametrize("floor", [0.0, 0.3])
def test_soft_decay_half_at_tau(decay: str, floor: float) -> None:
    tau = 0.7
    s = np.array([tau, tau + 1.0, tau - 1.0])
    p = MethodParams(decay=decay, floor=floor)
    out = factors_from_scores(s, np.ones(3, dtype=bool), tau, p)
    assert abs(out[0] - (1 + floor) / 2) <= TOL
    assert floor <= out[1] < out[0] < out[2] <= 1.0


def test_hard_decay_at_tau_gives_floor() -> None:
    # SPEC's hard formula: floor for the k units of E (the unit at tau is one of them).
    s = np.array([0.7, 1.7, 0.2])
    p = MethodParams(decay="hard", floor=0.3)
    out = factors_from_scores(s, np.ones(3, dtype=bool), 0.7, p)
    assert out.tolist() == [0.3, 0.3, 1.0]


def test_unit_at_tau_through_compute_scores() -> None:
    w = make_world()
    for floor in (0.0, 0.3):
        for decay in ("sigmoid", "exp"):
            res = run(w, MethodParams(ratio=0.2, decay=decay, floor=floor))
            at_tau = np.flatnonzero(res.selected & (res.S == res.tau))
            assert at_tau.size == 1
            assert abs(res.s[at_tau[0]] - (1 + floor) / 2) <= TOL


def test_snap_to_exactly_one() -> None:
    # sigmoid(4 x) = q  <=>  x = logit(q) / 4; s = 1 - q for floor 0.
    keep = math.log(2e-4 / (1 - 2e-4)) / 4  # 1 - s = 2e-4: kept
    snap = math.log(5e-5 / (1 - 5e-5)) / 4  # 1 - s = 5e-5: snapped
    s = np.array([keep, snap, 5.0])
    eligible = np.array([True, True, False])
    out = factors_from_scores(s, eligible, 0.0, MethodParams(decay="sigmoid"))
    assert abs(1 - out[0] - 2e-4) <= 1e-12
    assert out[1] == 1.0
    assert out[2] == 1.0  # not eligible: exactly 1 regardless of its score


def test_larger_ratio_never_attenuates_fewer() -> None:
    w = make_world()
    prev = None
    for ratio in (0.05, 0.1, 0.2, 0.3, 0.5, 1.0):
        res = run(w, MethodParams(ratio=ratio))
        d = res.summary()
        if prev is not None:
            assert res.k >= prev.k
            assert d["n_attenuated"] >= prev.summary()["n_attenuated"]
            assert d["n_at_most_half"] >= prev.summary()["n_at_most_half"]
            assert np.all(res.s <= prev.s)
        prev = res
    assert prev.k == 5


@pytest.mark.parametrize("decay", ["sigmoid", "exp", "hard"])
def test_floor_bounds_factor_from_below(decay: str) -> None:
    s = np.linspace(-5, 50, 23)
    for floor in (0.0, 0.3, 0.9):
        p = MethodParams(decay=decay, floor=floor, sharpness=10.0)
        out = factors_from_scores(s, np.ones(s.size, dtype=bool), 0.0, p)
        assert np.all(out >= floor) and np.all(out <= 1.0)
        assert abs(out.min() - floor) <= 1e-12


@pytest.mark.parametrize("decay", ["sigmoid", "exp"])
def test_larger_sharpness_is_steeper(decay: str) -> None:
    tau = 1.0
    s = np.array([1.5, 2.0, 0.9, 0.6])
    elig = np.ones(4, dtype=bool)
    soft = factors_from_scores(s, elig, tau, MethodParams(decay=decay, sharpness=2.0))
    sharp = factors_from_scores(s, elig, tau, MethodParams(decay=decay, sharpness=8.0))
    assert np.all(sharp[:2] < soft[:2])  # above tau: attenuated more
    assert np.all(sharp[2:] >= soft[2:])  # below tau: attenuated less (or not at all)
    assert sharp[3] > soft[3] or sharp[3] == 1.0


# ---------------------------------------------------------------------------------------------
# Parameters


def test_ratio_and_tau_are_exclusive() -> None:
    with pytest.raises(InputError, match="--ratio and --tau"):
        MethodParams(ratio=0.05, tau=0.0).validate()
    with pytest.raises(InputError, match="--ratio or --tau"):
        MethodParams(ratio=None, tau=None).validate()


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"lam": -0.1}, "--lambda"),
        ({"lam": float("nan")}, "--lambda"),
        ({"t_risk": -1.0}, "--t-risk"),
        ({"min_gap": -0.01}, "--min-gap"),
        ({"ratio": 0.0}, "--ratio"),
        ({"ratio": 1.5}, "--ratio"),
        ({"ratio": None, "tau": float("inf")}, "--tau"),
        ({"sharpness": 0.0}, "--sharpness"),
        ({"floor": 1.0}, "--floor"),
        ({"floor": -0.1}, "--floor"),
        ({"decay": "linear"}, "--decay"),
        ({"unit": "neuron"}, "--unit"),
    ],
)
def test_invalid_params_name_the_option(kwargs: dict, option: str) -> None:
    with pytest.raises(InputError, match=option):
        MethodParams(**kwargs).validate()
    with pytest.raises(InputError, match=option):
        run(make_world(), MethodParams(**kwargs))


def test_defaults_are_valid() -> None:
    # The tuned defaults (benchmarks/sweep.py; docs/method.md, "Tuned defaults (evidence)").
    p = MethodParams().validate()
    assert (p.lam, p.t_risk, p.min_gap, p.ratio, p.tau) == (0.5, 3.0, 0.05, 0.1, None)
    assert (p.decay, p.sharpness, p.floor, p.unit) == ("exp", 4.0, 0.0, "output")
    assert MethodParams(ratio=1.0, floor=0.0, sharpness=1e-3).validate().ratio == 1.0
