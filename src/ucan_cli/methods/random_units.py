"""The random-units control (``--method random``): U-CAN's budget, spent on units drawn at random.

Does U-CAN's choice of units matter, or would any units given the same attenuation do? The
control answers it by changing only the choice:

1. U-CAN selects as it would (``ucan_cli.methods.ucan.method.select``, same parameters, same
   lineage): its factors s, of which n = #(s < 1) are below 1.
2. n units are drawn uniformly without replacement from the units U-CAN could have picked: the
   live units whose cumulative factor is above ``--floor`` (the floor rule; on an adapter never
   attenuated, every live unit). U-CAN's own units may be drawn too.
3. The drawn units, in flat order, receive a random permutation of U-CAN's n factors; every
   other unit keeps 1. Same count, same factor multiset, hence the same budget sum(1 - s) and
   the same #(s <= (1 + floor) / 2); only where they land differs.
4. B is scaled exactly as U-CAN's step 6 does (``ucan_cli.methods.ucan.edit.apply_factors``).

The draw is ``numpy.random.default_rng([seed, 0x5EED])``: the draw of the units, then the
permutation. Equal seeds give the same units and byte-identical adapters; independent draws on
one world use different seeds (``benchmarks/compare.py`` uses 0, 1, ...). The verdict is U-CAN's,
so a weak contrast declines here too unless ``--accept-weak``: the budget being spent is the one
U-CAN would decline to spend.

Used by ``ucan attenuate --method random``, the demo's control (``random-units/``),
``benchmarks/compare.py`` and the tests, always through this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ucan_cli.methods.base import ACTIVATIONS, Edit, Method
from ucan_cli.methods.ucan.scoring import HALF_FACTOR_TOL, MethodParams, ScoreResult

#: Second word of the RNG seed, so the control's stream never coincides with another use of --seed.
STREAM = 0x5EED


@dataclass(frozen=True, eq=False)
class RandomDraw:
    """One draw of the control.

    Attributes:
        s: the factors (flat, module order), exactly 1 off the drawn units.
        chosen: the drawn units' flat indices, ascending.
        pool: mask of the units the draw was made from (live, cumulative factor above the floor).
        ucan: U-CAN's ``ScoreResult`` whose factors were re-placed.
        seed: the seed of the draw.
    """

    s: np.ndarray
    chosen: np.ndarray
    pool: np.ndarray
    ucan: ScoreResult
    seed: int

    @property
    def overlap_with_ucan(self) -> int:
        """Drawn units that U-CAN attenuates too."""
        return int(np.intersect1d(self.chosen, np.flatnonzero(self.ucan.s < 1.0)).size)


def draw(ucan: ScoreResult, seed: int) -> RandomDraw:
    """U-CAN's factors (``ucan.s``) re-placed on as many randomly drawn eligible-pool units (pure)."""
    edited = np.flatnonzero(ucan.s < 1.0)
    pool = ucan.live & ucan.rules.above_floor
    rng = np.random.default_rng([int(seed), STREAM])
    chosen = np.sort(rng.choice(np.flatnonzero(pool), size=edited.size, replace=False))
    s = np.ones_like(ucan.s)
    s[chosen] = rng.permutation(ucan.s[edited])
    return RandomDraw(s=s, chosen=chosen, pool=pool, ucan=ucan, seed=int(seed))


def summary(d: RandomDraw) -> dict:
    """U-CAN's summary (the statistics and the selection whose budget is spent), with the budget
    counted on the control's own factors and the draw under ``random_units``."""
    half = (1.0 + d.ucan.params.floor) / 2.0
    return {
        **d.ucan.summary(),
        "n_attenuated": int((d.s < 1.0).sum()),
        "n_at_most_half": int((d.s <= half + HALF_FACTOR_TOL).sum()),
        "budget_sum_1_minus_s": float((1.0 - d.s).sum()),
        "random_units": {"seed": d.seed, "n_pool": int(d.pool.sum()), "overlap_with_ucan": d.overlap_with_ucan},
    }


class RandomUnits(Method):
    """The random-units control: U-CAN's factor multiset on randomly drawn live units."""

    name = "random"
    pretty_name = "random units"
    reference_url = None
    description = (
        "units drawn at random among the live ones, given the factors U-CAN chose for this request (the random-units "
        "control of ucan-cli, `--method random`): a control for U-CAN's choice of units, not meant to forget anything"
    )
    params_type = MethodParams
    statistics = ACTIVATIONS

    def edit(self, source, stats, params: MethodParams, *, seed: int = 0, cumulative: np.ndarray | None = None) -> Edit:
        from ucan_cli.methods.ucan.method import edit_from_selection

        def place(ucan: ScoreResult):
            d = draw(ucan, seed)
            return d.s, d, summary(d)

        return edit_from_selection(source, stats, params, cumulative, place)
