"""U-CAN steps 2-5 as pure float64 math: risk, utility, fusion, eligibility, budget and decay.

This module turns per-unit activation statistics (step 1, streamed by the hooks) into one
attenuation factor per unit. It does no I/O and knows nothing of torch: every input is a NumPy
array, every output too, so the same code serves ``score`` (fresh statistics) and ``attenuate``
(statistics read back from a score file, possibly with new parameters).

Conventions (SPEC section 3):

* All units of all LoRA modules form one flat vector, in module order and then unit index. The
  flat index is therefore also the tie-break order ("module order, then index").
* ``module_ids[u]`` is the module index of unit ``u`` (non-decreasing, starting at 0).
* Dead units (zero utility, no token, or an activation that does not vary across records) are
  never eligible and are not counted in ``N_live``. Their ``Rh``, ``Uh`` and ``S`` are NaN: NaN
  cannot be mistaken for a score, survives a safetensors round trip, and ``summary()`` (the
  JSON-facing view) never carries it (it writes ``None``).

Each formula has its own function so tests and readers can map code to SPEC line by line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from ucan_cli.errors import NothingToDo, UcanRuntimeError
from ucan_cli.methods.ucan.params import MethodParams

MAD_TO_SIGMA = 1.4826
"""1.4826 * MAD estimates a normal standard deviation."""

MEAN_ABS_DEV_TO_SIGMA = 1.2533
"""sqrt(pi/2): 1.2533 * mean |x - median| estimates a normal standard deviation (MAD fallback)."""

SIGMA0_FLOOR = 1e-12
"""Smallest noise scale sigma0, so ``R / sigma0`` and the t-risk rule stay finite."""

EPS_RELATIVE = 1e-6
"""eps_l = max(EPS_RELATIVE * mean_u m1^r_u, EPS_ABSOLUTE) per module."""

EPS_ABSOLUTE = 1e-12
"""Absolute floor of eps_l (a module silent on D_r)."""

CONSTANT_RELATIVE_STD = 1e-5
"""A unit is dead when the across-record std of its record-mean |a_u| is <= this times its mean.

Relative rather than exact zero: a unit that sees the same token in every record (layer 0 at the
last prompt position) still shows a spread of about 1e-7 of its mean, from fp32 reductions whose
order depends on the batch composition. Real record-to-record variation is orders of magnitude
larger than 1e-5.
"""

SNAP_TO_ONE = 1e-4
"""A factor with 1 - s < SNAP_TO_ONE is set to exactly 1 (the tensor then stays bit-identical)."""

HALF_FACTOR_TOL = 1e-12
"""Tolerance when counting #(s <= (1 + floor) / 2), so the unit at tau (s(tau) = (1+floor)/2 up
to rounding) is counted."""


# --------------------------------------------------------------------------------------------
# Data model


@dataclass(frozen=True, eq=False)
class SetStats:
    """Streamed statistics of one data set (D_f, D_r, or one half of D_r), one entry per unit.

    Attributes:
        sum_abs: sum over scoped tokens of |a_u|.
        sum_sq: sum over scoped tokens of a_u^2.
        tokens: scoped token count per unit (equal within a module; kept per unit for
            simplicity).
        rec_sum: sum over records of the record's mean |a_u|.
        rec_sumsq: sum over records of (the record's mean |a_u|)^2.
        n_records: number of records that contributed.

    Arrays are coerced to 1-D float64 of one common length.
    """

    sum_abs: np.ndarray
    sum_sq: np.ndarray
    tokens: np.ndarray
    rec_sum: np.ndarray
    rec_sumsq: np.ndarray
    n_records: int

    def __post_init__(self) -> None:
        n = None
        for name in ("sum_abs", "sum_sq", "tokens", "rec_sum", "rec_sumsq"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.ndim != 1:
                raise ValueError(f"SetStats.{name} must be 1-D, got shape {arr.shape}")
            if n is None:
                n = arr.shape[0]
            elif arr.shape[0] != n:
                raise ValueError(f"SetStats.{name} has {arr.shape[0]} units, expected {n}")
            object.__setattr__(self, name, arr)
        if int(self.n_records) != self.n_records or self.n_records < 0:
            raise ValueError(f"SetStats.n_records must be a non-negative int, got {self.n_records}")
        object.__setattr__(self, "n_records", int(self.n_records))

    @property
    def n_units(self) -> int:
        """Number of units these statistics cover."""
        return int(self.sum_abs.shape[0])


# --------------------------------------------------------------------------------------------
# Step 2: moments, eps, risk, noise reference


def moments(stats: SetStats) -> tuple[np.ndarray, np.ndarray]:
    """Token-weighted m1 = sum|a|/tokens and m2 = sum a^2/tokens; 0 where tokens == 0."""
    has = stats.tokens > 0
    safe = np.where(has, stats.tokens, 1.0)
    m1 = np.where(has, stats.sum_abs / safe, 0.0)
    m2 = np.where(has, stats.sum_sq / safe, 0.0)
    return m1, m2


def module_eps(m1_ref: np.ndarray, module_ids: np.ndarray) -> np.ndarray:
    """eps_l = max(1e-6 * mean over the module's units of m1_ref, 1e-12), one per module.

    The mean runs over all units of the module (dead ones included: eps only keeps the log ratio
    finite, it is not a statistic of live units). Returns an array of length max(module_ids)+1.
    """
    n_modules = int(module_ids.max()) + 1 if module_ids.size else 0
    sums = np.bincount(module_ids, weights=m1_ref, minlength=n_modules)
    counts = np.bincount(module_ids, minlength=n_modules)
    means = np.divide(sums, counts, out=np.zeros(n_modules), where=counts > 0)
    return np.maximum(EPS_RELATIVE * means, EPS_ABSOLUTE)


def risk(m1_f: np.ndarray, m1_r: np.ndarray, eps_units: np.ndarray) -> np.ndarray:
    """Contrastive risk R_u = log((m1^f_u + eps_l) / (m1^r_u + eps_l)).

    ``eps_units`` is eps_l broadcast to units (``eps[module_ids]``).
    """
    return np.log((m1_f + eps_units) / (m1_r + eps_units))


def risk_no_contrast(m1_f: np.ndarray, eps_units: np.ndarray) -> np.ndarray:
    """Ablation w/o C: R_u = log(m1^f_u + eps_l) (the retain set only supplies eps)."""
    return np.log(m1_f + eps_units)


def robust_scale(x: np.ndarray) -> float:
    """1.4826 * MAD(x); when the MAD is 0, 1.2533 * mean |x - median x|; 0 for empty x.

    May return 0 (all values equal): callers decide what a zero scale means.
    """
    if x.size == 0:
        return 0.0
    med = np.median(x)
    dev = np.abs(x - med)
    mad = float(np.median(dev))
    if mad > 0:
        return MAD_TO_SIGMA * mad
    return MEAN_ABS_DEV_TO_SIGMA * float(np.mean(dev))


def noise_sigma(r0: np.ndarray, live: np.ndarray) -> float:
    """sigma0 = robust scale of the noise reference R0 over live units, floored at 1e-12."""
    return max(robust_scale(r0[live]), SIGMA0_FLOOR)


def robust_z(x: np.ndarray, live: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 * MAD) with median and MAD over live units (MAD fallback of
    ``robust_scale``); z = 0 for every live unit when the scale is 0; NaN for non-live units."""
    z = np.full(x.shape, np.nan)
    xl = x[live]
    if xl.size == 0:
        return z
    scale = robust_scale(xl)
    z[live] = (xl - np.median(xl)) / scale if scale > 0 else 0.0
    return z


# --------------------------------------------------------------------------------------------
# Step 3: utility and dead units


def utility_output(m2_r: np.ndarray) -> np.ndarray:
    """Output unit utility U_u = sqrt(m2^r_u) (a_u already includes c_l and B_l)."""
    return np.sqrt(m2_r)


def utility_rank(m2_r: np.ndarray, scaling: np.ndarray, b_col_norms: np.ndarray) -> np.ndarray:
    """Rank unit utility U_u = c_l * ||B_l[:, j]||_2 * sqrt(m2^r_u), inputs per unit."""
    return scaling * b_col_norms * np.sqrt(m2_r)


def constant_across_records(forget: SetStats, retain: SetStats) -> np.ndarray:
    """Units whose record-mean |a_u| does not vary across the records of D_f and D_r pooled.

    Pooled population variance var = sum(x^2)/n - (sum(x)/n)^2 (clipped at 0). A unit is
    constant when its mean is 0 or its std <= CONSTANT_RELATIVE_STD * mean. With no record at
    all every unit is constant.
    """
    n = forget.n_records + retain.n_records
    if n == 0:
        return np.ones(forget.n_units, dtype=bool)
    mean = (forget.rec_sum + retain.rec_sum) / n
    var = np.maximum((forget.rec_sumsq + retain.rec_sumsq) / n - mean**2, 0.0)
    return (mean == 0) | (np.sqrt(var) <= CONSTANT_RELATIVE_STD * mean)


def live_units(utility: np.ndarray, forget: SetStats, retain: SetStats) -> np.ndarray:
    """Live = U > 0, at least one token in D_f and in D_r, and not constant across records."""
    return (
        (utility > 0)
        & (forget.tokens > 0)
        & (retain.tokens > 0)
        & ~constant_across_records(forget, retain)
    )


# --------------------------------------------------------------------------------------------
# Step 4: fusion and eligibility


def fuse(rh: np.ndarray, uh: np.ndarray, lam: float) -> np.ndarray:
    """S_u = Rh_u - lambda * Uh_u (NaN stays NaN for dead units)."""
    return rh - lam * uh


@dataclass(frozen=True, eq=False)
class EligibilityRules:
    """Per-unit masks of each eligibility rule (each evaluated on its own) and their AND.

    ``min_gap`` and ``t_risk`` are all False under ``no_contrast``; ``rh`` is all False
    otherwise (the rule does not apply in that mode).
    """

    live: np.ndarray
    min_gap: np.ndarray
    t_risk: np.ndarray
    rh: np.ndarray
    above_floor: np.ndarray
    eligible: np.ndarray


def eligibility(
    r: np.ndarray,
    rh: np.ndarray,
    live: np.ndarray,
    sigma0: float,
    params: MethodParams,
    cum_factors: np.ndarray | None,
) -> EligibilityRules:
    """Eligible = live AND R >= log(1+min_gap) AND R >= t_risk*sigma0 AND cumulative factor > floor.

    Under ``no_contrast``: live AND Rh >= 1 AND cumulative factor > floor. The floor rule
    (previously attenuated adapters) holds for every unit when ``cum_factors`` is None.
    """
    n = r.shape[0]
    none = np.zeros(n, dtype=bool)
    above_floor = np.ones(n, dtype=bool) if cum_factors is None else cum_factors > params.floor
    if params.no_contrast:
        with np.errstate(invalid="ignore"):
            rh_ok = live & (rh >= 1.0)
        return EligibilityRules(live, none, none, rh_ok, above_floor, rh_ok & above_floor)
    gap_ok = r >= math.log1p(params.min_gap)
    risk_ok = r >= params.t_risk * sigma0
    eligible = live & gap_ok & risk_ok & above_floor
    return EligibilityRules(live, gap_ok, risk_ok, none, above_floor, eligible)


# --------------------------------------------------------------------------------------------
# Step 5: budget and decay


def budget_size(ratio: float, n_live: int) -> int:
    """ceil(ratio * N_live), exact for the decimal the user typed.

    The product is taken in rationals from the shortest decimal of the float (``repr``), so
    0.05 * 40 gives 2, not 3 as ``math.ceil(0.05 * 40)`` would from binary rounding.
    """
    return math.ceil(Fraction(repr(float(ratio))) * n_live)


def order_eligible(s: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """E: flat indices of eligible units by S descending; ties by flat index (module, then unit)."""
    idx = np.flatnonzero(eligible)
    return idx[np.argsort(-s[idx], kind="stable")]


def select(
    s: np.ndarray, eligible: np.ndarray, n_live: int, params: MethodParams
) -> tuple[np.ndarray, int, float | None]:
    """The budget: returns (selected mask, k, tau).

    Ratio mode: k = min(|E|, ceil(ratio * N_live)), the first k of E are selected and
    tau = S of E[k-1]. Tau mode: every eligible unit with S >= tau is selected, k is their
    count. When k = 0, tau is None in ratio mode (there is no E[k-1]).
    """
    order = order_eligible(s, eligible)
    selected = np.zeros(s.shape[0], dtype=bool)
    if params.tau is not None:
        with np.errstate(invalid="ignore"):
            selected = eligible & (s >= params.tau)
        return selected, int(selected.sum()), float(params.tau)
    assert params.ratio is not None
    k = min(order.size, budget_size(params.ratio, n_live))
    if k == 0:
        return selected, 0, None
    selected[order[:k]] = True
    return selected, k, float(s[order[k - 1]])


def stable_sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow for large |x|."""
    out = np.empty_like(x, dtype=np.float64)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def decay_sigmoid(s: np.ndarray, tau: float, gamma: float, floor: float) -> np.ndarray:
    """s = 1 - (1 - floor) * sigmoid(gamma * (S - tau)); s(tau) = (1 + floor) / 2."""
    return 1.0 - (1.0 - floor) * stable_sigmoid(gamma * (s - tau))


def decay_exp(s: np.ndarray, tau: float, gamma: float, floor: float) -> np.ndarray:
    """s = floor + (1 - floor) * exp(-gamma * max(0, S - tau + ln2/gamma)); s(tau) = (1+floor)/2."""
    return floor + (1.0 - floor) * np.exp(-gamma * np.maximum(0.0, s - tau + math.log(2) / gamma))


def factors_from_scores(
    s: np.ndarray,
    eligible: np.ndarray,
    tau: float,
    params: MethodParams,
    *,
    selected: np.ndarray | None = None,
) -> np.ndarray:
    """Per-unit factors from fused scores, so new decay parameters can be re-applied.

    Reading of SPEC step 5 ("only eligible units are edited"; the decay is a function of S):
    every eligible unit gets the decay's value at its S, including eligible units below tau in
    ratio mode (their factor is closer to 1, often snapped to 1); non-eligible units get exactly
    1. Any factor with 1 - s < 1e-4 is then set to exactly 1.

    ``hard`` gives ``floor`` to the selected units and 1 to all others. ``selected`` defaults to
    ``eligible & (S >= tau)``; pass the mask from ``select`` to keep ratio-mode ties at tau
    exactly at k units. Note that for ``hard`` the unit at tau gets ``floor``, not
    (1 + floor) / 2: the SPEC's formula for hard is taken literally.
    """
    out = np.ones(s.shape[0], dtype=np.float64)
    idx = np.flatnonzero(eligible)
    gamma, floor = float(params.sharpness), float(params.floor)
    if params.decay == "sigmoid":
        out[idx] = decay_sigmoid(s[idx], tau, gamma, floor)
    elif params.decay == "exp":
        out[idx] = decay_exp(s[idx], tau, gamma, floor)
    else:
        if selected is None:
            with np.errstate(invalid="ignore"):
                selected = eligible & (s >= tau)
        out[eligible & selected] = floor
    out[1.0 - out < SNAP_TO_ONE] = 1.0
    return out


# --------------------------------------------------------------------------------------------
# Top level


def _json_float(x: float | None) -> float | None:
    """A float for JSON: None for None, NaN or infinity."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)


@dataclass(frozen=True, eq=False)
class ScoreResult:
    """Everything steps 2-5 computed, per unit (flat order) and as scalars.

    Per-unit arrays (length N): ``m1_f``, ``m1_r``, ``m2_r``, ``R``, ``R0``, ``U``, ``Rh``,
    ``Uh``, ``S`` (NaN for dead units in ``Rh``, ``Uh``, ``S``), masks ``live``, ``eligible``,
    ``selected`` (the k units of the budget) and the factors ``s`` (exactly 1 where unedited).
    Scalars: ``sigma0``, ``n_live``, ``k``, ``tau``; per module: ``eps`` (from D_r, used by R)
    and ``eps0`` (from half b, used by R0). ``rules`` holds each eligibility rule's mask.
    """

    params: MethodParams
    m1_f: np.ndarray
    m1_r: np.ndarray
    m2_r: np.ndarray
    R: np.ndarray
    R0: np.ndarray
    U: np.ndarray
    Rh: np.ndarray
    Uh: np.ndarray
    S: np.ndarray
    live: np.ndarray
    eligible: np.ndarray
    selected: np.ndarray
    s: np.ndarray
    sigma0: float
    n_live: int
    k: int
    tau: float | None
    eps: np.ndarray
    eps0: np.ndarray
    rules: EligibilityRules
    n_constant: int

    def summary(self) -> dict[str, Any]:
        """JSON-safe diagnostics (no NaN or infinity: those become None)."""
        return diagnostics(self)


def diagnostics(res: ScoreResult) -> dict[str, Any]:
    """Counts per eligibility rule (over live units, each rule on its own), the largest R among
    live units and its ratio to sigma0, and the budget: #(s < 1), #(s <= (1+floor)/2), sum(1-s).
    """
    p = res.params
    live = res.live
    max_r = float(res.R[live].max()) if res.n_live else None
    half = (1.0 + p.floor) / 2.0
    return {
        "n_units": int(res.R.shape[0]),
        "n_live": int(res.n_live),
        "n_dead": int((~live).sum()),
        "n_dead_zero_utility": int((res.U <= 0).sum()),
        "n_dead_constant": int(res.n_constant),
        "sigma0": _json_float(res.sigma0),
        "max_R": _json_float(max_r),
        "max_R_over_sigma0": _json_float(max_r / res.sigma0) if max_r is not None else None,
        "min_gap_threshold": math.log1p(p.min_gap),
        "t_risk_threshold": _json_float(p.t_risk * res.sigma0),
        "n_pass_min_gap": int((live & res.rules.min_gap).sum()),
        "n_pass_t_risk": int((live & res.rules.t_risk).sum()),
        "n_pass_rh": int((live & res.rules.rh).sum()),
        "n_pass_floor": int((live & res.rules.above_floor).sum()),
        "n_eligible": int(res.eligible.sum()),
        "k": int(res.k),
        "tau": _json_float(res.tau),
        "lambda_effective": p.effective_lambda,
        "n_attenuated": int((res.s < 1.0).sum()),
        "n_at_most_half": int((res.s <= half + HALF_FACTOR_TOL).sum()),
        "budget_sum_1_minus_s": float((1.0 - res.s).sum()),
    }


def _nothing_to_do(res: ScoreResult) -> NothingToDo:
    """The exit-4 error, with the numbers that say why nothing is eligible."""
    d = diagnostics(res)
    p = res.params
    if d["n_live"] == 0:
        msg = (
            f"nothing to do: no live unit among {d['n_units']} "
            "(all dead: zero utility, no token, or constant across records)"
        )
        return NothingToDo(msg, d, res)

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4g}"

    head = (
        f"nothing to do: largest R = {num(d['max_R'])} = {num(d['max_R_over_sigma0'])} x sigma0 "
        f"(sigma0 = {num(d['sigma0'])}) over {d['n_live']} live units"
    )
    if p.no_contrast:
        rules = f"Rh >= 1: {d['n_pass_rh']}"
    else:
        rules = (
            f"R >= log(1+min_gap) = {num(d['min_gap_threshold'])}: {d['n_pass_min_gap']}, "
            f"R >= t_risk*sigma0 = {num(d['t_risk_threshold'])}: {d['n_pass_t_risk']}"
        )
    rules += f", cumulative factor above floor: {d['n_pass_floor']}, eligible: {d['n_eligible']}"
    tail = ""
    if p.tau is not None and d["n_eligible"] > 0:
        tail = f"; no eligible unit has S >= tau = {num(p.tau)}"
    return NothingToDo(f"{head}; units passing {rules}{tail}", d, res)


def _check_finite(stats: SetStats, name: str) -> None:
    for attr in ("sum_abs", "sum_sq", "tokens", "rec_sum", "rec_sumsq"):
        if not np.all(np.isfinite(getattr(stats, attr))):
            raise UcanRuntimeError(f"non-finite activation statistics ({attr}) in the {name} set")


def compute_scores(
    forget: SetStats,
    retain: SetStats,
    half_a: SetStats,
    half_b: SetStats,
    module_ids: np.ndarray,
    params: MethodParams,
    *,
    scaling: np.ndarray | None = None,
    b_col_norms: np.ndarray | None = None,
    cum_factors: np.ndarray | None = None,
) -> ScoreResult:
    """Steps 2-5: per-unit risk, utility, fused score, eligibility, budget and factors.

    Args:
        forget, retain: statistics of D_f and D_r.
        half_a, half_b: statistics of the two seeded halves of D_r (noise reference R0, with
            half a in the role of D_f and half b in the role of D_r, eps from half b).
        module_ids: (N,) non-decreasing module index per unit.
        params: the method options (validated here).
        scaling, b_col_norms: (N,) per-unit c_l and ||B_l[:, j]||_2; required for rank units,
            ignored for output units.
        cum_factors: (N,) cumulative factors of a previously attenuated adapter, or None.

    Raises:
        InputError: an option is out of range.
        UcanRuntimeError: a statistic is NaN or infinite.
        NothingToDo: k = 0; ``details`` holds ``diagnostics`` numbers.
        ValueError: inconsistent shapes (a programming error, not user input).
    """
    params.validate()
    module_ids = np.asarray(module_ids)
    n = module_ids.shape[0]
    if module_ids.ndim != 1 or not np.issubdtype(module_ids.dtype, np.integer):
        raise ValueError("module_ids must be a 1-D integer array")
    if n and (module_ids[0] < 0 or np.any(np.diff(module_ids) < 0)):
        raise ValueError("module_ids must be non-negative and non-decreasing (module order)")
    sets = (("forget", forget), ("retain", retain), ("retain half a", half_a),
            ("retain half b", half_b))
    for name, st in sets:
        if st.n_units != n:
            raise ValueError(f"{name} statistics cover {st.n_units} units, module_ids {n}")
        _check_finite(st, name)

    # Step 2: risk and the noise reference.
    m1_f, _ = moments(forget)
    m1_r, m2_r = moments(retain)
    m1_a, _ = moments(half_a)
    m1_b, _ = moments(half_b)
    eps = module_eps(m1_r, module_ids)
    eps0 = module_eps(m1_b, module_ids)
    if params.no_contrast:
        r = risk_no_contrast(m1_f, eps[module_ids])
    else:
        r = risk(m1_f, m1_r, eps[module_ids])
    r0 = risk(m1_a, m1_b, eps0[module_ids])

    # Step 3: utility and dead units.
    if params.unit == "rank":
        if scaling is None or b_col_norms is None:
            raise ValueError("rank units need per-unit scaling and b_col_norms")
        scaling = np.asarray(scaling, dtype=np.float64)
        b_col_norms = np.asarray(b_col_norms, dtype=np.float64)
        if scaling.shape != (n,) or b_col_norms.shape != (n,):
            raise ValueError("scaling and b_col_norms must have shape (N,)")
        u = utility_rank(m2_r, scaling, b_col_norms)
    else:
        u = utility_output(m2_r)
    constant = constant_across_records(forget, retain)
    live = live_units(u, forget, retain)
    n_live = int(live.sum())
    sigma0 = noise_sigma(r0, live)

    # Step 4: fusion and eligibility.
    rh = robust_z(r, live)
    log_u = np.full(n, np.nan)
    log_u[live] = np.log(u[live])
    uh = robust_z(log_u, live)
    s_fused = fuse(rh, uh, params.effective_lambda)
    if cum_factors is not None:
        cum_factors = np.asarray(cum_factors, dtype=np.float64)
        if cum_factors.shape != (n,):
            raise ValueError("cum_factors must have shape (N,)")
    rules = eligibility(r, rh, live, sigma0, params, cum_factors)

    # Step 5: budget and decay.
    selected, k, tau = select(s_fused, rules.eligible, n_live, params)
    factors = np.ones(n)
    if k > 0:
        assert tau is not None
        factors = factors_from_scores(s_fused, rules.eligible, tau, params, selected=selected)
    res = ScoreResult(
        params=params, m1_f=m1_f, m1_r=m1_r, m2_r=m2_r, R=r, R0=r0, U=u, Rh=rh, Uh=uh,
        S=s_fused, live=live, eligible=rules.eligible, selected=selected, s=factors,
        sigma0=sigma0, n_live=n_live, k=k, tau=tau, eps=eps, eps0=eps0, rules=rules,
        n_constant=int(constant.sum()),
    )
    if k == 0:
        raise _nothing_to_do(res)
    return res
