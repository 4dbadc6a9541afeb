"""U-CAN's verdict on a request: how far the forget/retain contrast stands above the noise reference.

Step 2 also scores a noise reference, R0: one seeded half of the retain set against the other, a
"forget set" that by construction has nothing to forget. ``contrast_overview`` counts how many live
units reach R >= t_risk * sigma0 for the real request and how many reach |R0| >= t_risk * sigma0
for the noise one, and names the outcome: ``separable`` (more units stand out than noise gives),
``weak`` (units pass every rule, but no more than noise), ``noise`` (nothing eligible), ``dead``
(no live unit) or ``no-contrast`` (the w/o C ablation, where there is nothing to compare).

``ucan score`` reports the verdict; ``ucan attenuate`` declines a request whose verdict is in
``DECLINED_VERDICTS`` (exit 4, nothing written) unless ``--accept-weak``, with ``decline_message``
as the reason. Pure: a ``ScoreResult`` in, a dict and sentences out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ucan_cli.methods.ucan.scoring import ScoreResult

NOISE_SENTENCE = (
    "the contrast is at noise level: no unit is forget-specific; U-CAN would edit noise. This happens when "
    "the forget set is a random sample of the same users as the retain set; consider retraining without them"
)

#: Verdicts on which attenuate declines (exit 4, nothing written) unless ``accept_weak``. ``noise``
#: has no eligible unit at all (steps 2-5 already raise NothingToDo); ``no-contrast`` (the w/o C
#: ablation) has no noise comparison to decline on.
DECLINED_VERDICTS = ("weak", "noise")


def contrast_overview(result: ScoreResult) -> dict[str, Any]:
    """How far the forget/retain contrast stands above the noise reference, and the verdict.

    ``result`` may be a k = 0 result (the one ``NothingToDo.result`` carries). JSON-safe (no
    NaN) except ``arrays``. Keys: ``n_live``,
    ``sigma0``, ``max_R``, ``max_R_over_sigma0``, ``threshold`` (t_risk * sigma0),
    ``n_R_above`` (live units with R >= threshold), ``n_R0_above`` (live units with
    |R0| >= threshold: what a noise-only forget set reaches, both tails), ``n_eligible``,
    ``k``, ``verdict`` (``separable``, ``weak``, ``noise``, ``dead`` or ``no-contrast``),
    ``sentence``, and the per-unit ``R``, ``R0``, ``U``, ``S``, ``live``, ``eligible`` under
    ``arrays`` (NumPy, not JSON).

    Verdict rule: ``noise`` when no unit is eligible; ``weak`` when units are eligible but no
    more units reach the threshold than noise does (n_R_above <= n_R0_above); else
    ``separable``. Under ``no_contrast`` R is not a contrast, so no noise comparison is made.
    """
    params = result.params
    r, r0, u, live, sigma0, s_fused, eligible = (
        result.R, result.R0, result.U, result.live, result.sigma0, result.S, result.eligible
    )
    k = int(result.k)
    n_live = int(live.sum())
    thr = params.t_risk * sigma0
    max_r = float(r[live].max()) if n_live else None
    n_r_above = int((live & (r >= thr)).sum())
    n_r0_above = int((live & (np.abs(r0) >= thr)).sum())
    n_eligible = int(eligible.sum())
    if n_live == 0:
        verdict = "dead"
        sentence = (
            "no live unit: every unit is dead (zero utility, no token in a set, or constant across records); "
            "nothing can be scored"
        )
    elif params.no_contrast:
        verdict = "no-contrast"
        sentence = (
            f"contrast disabled (--no-contrast, the w/o C ablation): {n_eligible} units have Rh >= 1 on the forget "
            "set alone, with no reference to the retain set or to noise"
        )
    elif n_eligible == 0:
        verdict = "noise"
        sentence = NOISE_SENTENCE
    elif n_r_above <= n_r0_above:
        verdict = "weak"
        sentence = (
            f"the contrast is weak: {n_eligible} units pass every rule, but only {n_r_above} units reach "
            f"R >= t_risk*sigma0 where the noise reference reaches {n_r0_above}; the selection may be noise"
        )
    else:
        verdict = "separable"
        sentence = f"the forget set is separable from the retain set on {n_eligible} units"
    return {
        "n_units": int(r.shape[0]),
        "n_live": n_live,
        "sigma0": _finite(sigma0),
        "max_R": _finite(max_r),
        "max_R_over_sigma0": _finite(max_r / sigma0) if max_r is not None and sigma0 > 0 else None,
        "t_risk": float(params.t_risk),
        "threshold": _finite(thr),
        "n_R_above": n_r_above,
        "n_R0_above": n_r0_above,
        "n_eligible": n_eligible,
        "k": k,
        "verdict": verdict,
        "sentence": sentence,
        "arrays": {"R": r, "R0": r0, "U": u, "S": s_fused, "live": live, "eligible": eligible},
    }


def decline_message(overview: Mapping[str, Any]) -> str:
    """Why attenuate declines a weak contrast, and what the user can do instead (one line)."""
    return (
        f"declined: {overview['sentence']}. An edit of these units would move the retain users as much as the "
        "forget users, so nothing was written. To honour the request, retrain the adapter without these users, "
        "or run a gradient method (`ucan attenuate --method graddiff`, docs/methods.md) and check it with `ucan eval`; "
        "pass --accept-weak to edit these units anyway (the report and ledger record it)"
    )


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
