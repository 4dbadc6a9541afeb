"""What an unlearning method is, to the rest of the house: a name, its parameters, what it needs,
and one call that returns an edited LoRA adapter.

A method is a subclass of ``Method`` (after mergekit's ``merge_methods/base.py``: a name, a pretty
name and a reference URL on the class, the work in one call). ``ucan attenuate --method NAME``
looks it up in ``ucan_cli.methods.registry`` and hands it what the flow has already checked and
loaded, so a method never reads a file, loads a model or writes anything. What it is handed
depends on its ``statistics`` kind:

* ``ACTIVATIONS`` (U-CAN, the random control): ``edit(source, stats, params, *, seed, cumulative)``
  with U-CAN's step-1 per-unit activation statistics (``ucan_cli.methods.ucan.statistics.Statistics``,
  from a forward pass or a score file) and the lineage's cumulative factor per unit (flat, module
  order, then unit index; None for an adapter never attenuated; the floor rule reads it);
* ``MODEL`` (the gradient family, ``retrain``, ``prune``): ``run(source, inputs, params, *, seed)``
  with a ``ModelInputs``: the base model with the input adapter attached and its LoRA parameters
  trainable, the tokenizer, the forget and retain sets tokenized, and the flow's measurements
  (``probe``: forget-set ranking metrics of the model as it is now; ``utility``: the same on the
  retain set; for a method that ``takes_train`` (``retrain``), ``train``: the training file's
  records tokenized, those of the forget users already removed). No statistics pass runs for such
  a method, and it declares no verdict the flow could decline on;
* ``ADAPTER`` (``negate``): ``apply(source, params, *, seed)`` with nothing but the adapter: no
  model loads and no statistics are computed (the forget file is still read, for the ledger's
  receipt of the request).

In every kind, ``source`` is the input adapter (``ucan_cli.io.adapter.LoraAdapter``, never modified),
``params`` an instance of its ``params_type`` (a frozen dataclass whose fields carry their
``OptionSpec``, ``ucan_cli.methods.params``), already validated, and ``seed`` the run's ``--seed``
(equal seeds, equal bytes).

It returns an ``Edit``: the edited adapter, per-unit factors (the ledger composes them onto the
lineage; a training method returns none: its edit is not a per-unit scaling, and the lineage's
factors are carried unchanged, or restart for a ``fresh_adapter`` method; ``prune``, a model
method whose edit is per-unit, returns its 0/1 factors like U-CAN), one ``ModuleChange`` per module, a JSON-safe summary, a
``Verdict`` and, for a model method, ``training`` (what ran: steps, stop reason, cost). The flow
then declines, writes and records; the method's name goes into the report and the ledger entry
(``options.method``).

Before any model loads the flow calls ``check(source, params)``, where a method refuses an
adapter it cannot honestly edit (``InputError``, exit 2).
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

#: The statistics kind ``ACTIVATIONS``: U-CAN's step-1 per-unit activation statistics of the forget
#: set, the retain set and the retain set's two halves (``ucan score`` computes them; a score file
#: keeps them).
ACTIVATIONS = "activations"
#: The kind ``MODEL``: the method runs the model itself (forward and backward passes on the forget
#: and retain sets); the flow loads the base with the adapter attached and hands it a ``ModelInputs``.
MODEL = "model"
#: The kind ``ADAPTER``: the method edits the adapter's tensors alone (no model, no statistics).
ADAPTER = "adapter"
KINDS = (ACTIVATIONS, MODEL, ADAPTER)
#: The call each kind implements.
CALLS = {ACTIVATIONS: "edit", MODEL: "run", ADAPTER: "apply"}


@dataclass
class ModelInputs:
    """What the flow hands a ``MODEL`` method.

    Attributes:
        model: a PeftModel: the base with the input adapter attached as ``default``, in eval mode
            (dropout off), LoRA parameters requiring grad, everything else frozen.
        tokenizer: the base's tokenizer.
        forget, retain: the forget and retain records, tokenized with the run's template and
            max length (``ucan_cli.io.tokenize.Encoded``, labels on the response tokens).
        pad_id: the padding token id.
        batch_size: records per step and per measurement batch (``--batch-size``).
        probe: ``probe()`` -> (the forget set's ranking metrics of the model now, ``"recall@5"``,
            ``"ndcg@10"``, ... and ``"nll"``, the token-mean response NLL; forward-pass equivalents
            it cost). The target of ``--until`` reads it.
        utility: ``utility()`` -> the same on the retain set (measured at the stop).
        progress: a progress factory, or None.
        train: for a method that ``takes_train``: the records of ``--train`` left after removing
            every forget user's record, tokenized like forget and retain; else None.
    """

    model: Any
    tokenizer: Any
    forget: list
    retain: list
    pad_id: int
    batch_size: int
    probe: Any = None
    utility: Any = None
    progress: Any = None
    train: list | None = None


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
        timings: seconds per stage: ``select`` (choosing factors) and ``edit`` (applying them);
            a model method: ``train``.
        training: a model method's record of the run (the report's ``training`` block: steps,
            stop reason, checks, cost in forward-pass equivalents and seconds); None otherwise.
    """

    adapter: Any
    factors: dict[str, np.ndarray]
    changes: list
    summary: dict[str, Any]
    verdict: Verdict
    result: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] | None = None


class Method(ABC):
    """An unlearning method: class attributes say what it is, ``edit`` or ``run`` does it.

    Class attributes:
        name: the registry key and ``--method`` value (lower case, no spaces).
        pretty_name: how reports and docs name it.
        reference_url: where it is described (a paper), or None.
        description: what the edit did, finishing the model card's sentence about the edit.
        params_type: the dataclass of its parameters.
        statistics: what it needs: ``ACTIVATIONS`` (``edit`` is called), ``MODEL`` (``run``) or
            ``ADAPTER`` (``apply``).
        takes_train: a ``MODEL`` method that trains on ``--train`` (``ModelInputs.train``); the
            flow refuses ``--train`` for every other method.
        fresh_adapter: the edit replaces every LoRA weight by newly trained ones, so the lineage's
            cumulative per-unit factors restart (the ledger entry lists none).
        dry_run_verdict: what a ``MODEL`` method's ``--dry-run`` report says of its verdict (it has
            not run); None: the gradient family's sentence.

    A subclass implements the call of its kind; the others raise ``NotImplementedError``.
    """

    name: ClassVar[str]
    pretty_name: ClassVar[str]
    reference_url: ClassVar[str | None] = None
    description: ClassVar[str]
    params_type: ClassVar[type]
    statistics: ClassVar[str] = ACTIVATIONS
    takes_train: ClassVar[bool] = False
    fresh_adapter: ClassVar[bool] = False
    dry_run_verdict: ClassVar[Verdict | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.statistics not in KINDS:
            raise TypeError(f"{cls.__name__}.statistics must be one of {KINDS}, got {cls.statistics!r}")
        needed = CALLS[cls.statistics]
        if getattr(cls, needed) is getattr(Method, needed) and not getattr(cls, "__abstractmethods__", None):
            raise TypeError(f"{cls.__name__} needs {cls.statistics} and must implement {needed}()")

    def edit(self, source: Any, stats: Any, params: Any, *, seed: int = 0, cumulative: np.ndarray | None = None) -> Edit:
        """An ``ACTIVATIONS`` method: edit ``source`` from ``stats`` (see the module docstring).

        Raises:
            NothingToDo: the method finds nothing to edit (exit 4, nothing written).
            InputError, UcanRuntimeError: as the house defines them (exit 2, exit 1).
        """
        raise NotImplementedError(f"{self.name} is a {self.statistics} method; it has no edit()")

    def run(self, source: Any, inputs: ModelInputs, params: Any, *, seed: int = 0) -> Edit:
        """A ``MODEL`` method: edit ``source`` by running ``inputs.model`` (see the module docstring).

        Raises as ``edit`` does.
        """
        raise NotImplementedError(f"{self.name} is a {self.statistics} method; it has no run()")

    def apply(self, source: Any, params: Any, *, seed: int = 0) -> Edit:
        """An ``ADAPTER`` method: edit ``source``'s tensors alone (see the module docstring).

        Raises as ``edit`` does.
        """
        raise NotImplementedError(f"{self.name} is a {self.statistics} method; it has no apply()")

    def check(self, source: Any, params: Any) -> None:
        """Raise ``InputError`` for an adapter this method cannot edit honestly; called before any
        model loads. The default accepts every adapter the flow accepts."""

    def estimate(self, params: Any, *, n_forget: int, n_retain: int, batch_size: int, **counts: int) -> dict[str, Any] | None:
        """A model method's cost before it runs (``--dry-run``): forward-pass equivalents, or None.
        A method that ``takes_train`` also gets ``n_train`` (the records left to train on)."""
        return None

    def __repr__(self) -> str:
        return f"<method {self.name}: {self.pretty_name}>"
