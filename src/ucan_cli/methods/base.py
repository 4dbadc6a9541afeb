"""What an unlearning method is, to the rest of the house: a name, its parameters, the statistics it
needs, and one edit of a LoRA adapter.

A method is a subclass of ``Method`` (after mergekit's ``merge_methods/base.py``: a name, a pretty
name and a reference URL on the class, the work in one call). ``ucan attenuate --method NAME``
looks it up in ``ucan_cli.methods.registry`` and hands it what the flow has already checked and
loaded, so a method never reads a file, loads a model or writes anything:

* ``source``: the input adapter (``ucan_cli.io.adapter.LoraAdapter``, never modified);
* ``stats``: the statistics it declared in ``statistics``. Today there is one kind,
  ``ACTIVATIONS``: U-CAN's step-1 per-unit activation statistics
  (``ucan_cli.methods.ucan.statistics.Statistics``), from a forward pass or a score file;
* ``params``: an instance of its ``params_type`` (a frozen dataclass with a ``unit``, ``output``
  or ``rank``, and a ``floor``, the smallest factor), already validated;
* ``seed``: the run's ``--seed``, for a method that draws at random (equal seeds, equal bytes);
* ``cumulative``: the lineage's cumulative factor per unit (flat, module order, then unit index)
  from the adapter's ledger, or None for an adapter never attenuated; the floor rule reads it.

It returns an ``Edit``: the edited adapter, one factor per unit (the ledger composes them onto the
lineage), one ``ModuleChange`` per module, a JSON-safe summary (the report's ``summary``) and a
``Verdict``. The flow then declines, writes and records; the method's name goes into the report
and the ledger entry (``options.method``).

Every method in the house edits by per-unit factors on B (U-CAN's step 6,
``ucan_cli.methods.ucan.edit``): that is what the ledger can compose and what ``apply_factors``
writes byte-stably. A method that changes an adapter another way needs a ledger that records it
first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

#: The statistics kind ``ACTIVATIONS``: U-CAN's step-1 per-unit activation statistics of the forget
#: set, the retain set and the retain set's two halves (``ucan score`` computes them; a score file
#: keeps them).
ACTIVATIONS = "activations"


@dataclass(frozen=True)
class Verdict:
    """What the method concludes about the request before anyone looks at the edit.

    Attributes:
        kind: a short word (U-CAN: ``separable``, ``weak``, ``no-contrast``).
        sentence: the same in one sentence, for the report and the terminal.
        decline: None to go ahead; else why the flow should decline (exit 4, nothing written)
            unless the user passed ``--accept-weak``, in which case the report and the ledger
            record that they did.
    """

    kind: str
    sentence: str
    decline: str | None = None


@dataclass
class Edit:
    """What a method's ``edit`` returns.

    Attributes:
        adapter: the edited adapter; the very ``source`` object when no factor differs from 1
            (the flow then writes nothing and exits 4).
        factors: module name -> one factor in [0, 1] per unit of that module, every module present.
        changes: one ``ucan_cli.methods.ucan.edit.ModuleChange`` per module, in module order.
        summary: JSON-safe numbers for the report's ``summary``; must hold ``k`` (units the method
            chose to edit), ``n_attenuated`` (#(s < 1)), ``n_at_most_half`` and
            ``budget_sum_1_minus_s`` (sum(1 - s)).
        verdict: the method's ``Verdict``.
        result: the method's own record of what it computed (U-CAN: its ``ScoreResult``).
        timings: seconds per stage: ``select`` (choosing factors) and ``edit`` (applying them).
    """

    adapter: Any
    factors: dict[str, np.ndarray]
    changes: list
    summary: dict[str, Any]
    verdict: Verdict
    result: Any = None
    timings: dict[str, float] = field(default_factory=dict)


class Method(ABC):
    """An unlearning method: class attributes say what it is, ``edit`` does it.

    Class attributes:
        name: the registry key and ``--method`` value (lower case, no spaces).
        pretty_name: how reports and docs name it.
        reference_url: where it is described (a paper), or None.
        description: what the edit scaled, as the model card's sentence "ucan down-scaled n of N
            LoRA units: <description>." finishes it.
        params_type: the dataclass of its parameters.
        statistics: the statistics kind ``edit`` receives as ``stats`` (``ACTIVATIONS``).
    """

    name: ClassVar[str]
    pretty_name: ClassVar[str]
    reference_url: ClassVar[str | None] = None
    description: ClassVar[str]
    params_type: ClassVar[type]
    statistics: ClassVar[str] = ACTIVATIONS

    @abstractmethod
    def edit(self, source: Any, stats: Any, params: Any, *, seed: int = 0, cumulative: np.ndarray | None = None) -> Edit:
        """Edit ``source`` (see the module docstring for what each argument holds).

        Raises:
            NothingToDo: the method finds nothing to edit (exit 4, nothing written).
            InputError, UcanRuntimeError: as the house defines them (exit 2, exit 1).
        """

    def __repr__(self) -> str:
        return f"<method {self.name}: {self.pretty_name}>"
