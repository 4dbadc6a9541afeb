"""Direction units (SPEC section 3b), the pure maths: second moments in, an edited A out.

A direction unit of LoRA module l is an input direction v (d_in), not a coordinate. Given the
second moments of the module's input x over the token scope (what ``lora_A`` reads),

    S^f = mean over forget tokens of x x^T,   S^r = the same over retain tokens,
    delta = max(alpha * trace(S^r) / d_in, 1e-12)     (alpha = ``--shrinkage``, default 1e-6),

the units are the generalized eigenvectors of S^f v = lambda (S^r + delta I) v, normalized so
that V^T (S^r + delta I) V = I: lambda_i is the forget energy along v_i per unit of retain energy.
They are found by whitening (no triangular solve, no inverse of a product): with
S^r + delta I = Q D Q^T, W = Q D^-1/2, the symmetric C = W^T S^f W = E diag(lambda) E^T gives
V = W E and its dual U = (S^r + delta I) V = Q D^1/2 E, with U^T V = I. Eigenvalues are sorted
in descending order; lambda_i >= 0 up to rounding (S^f is a sum of outer products).

Noise reference (``noise_level``): lambda0 = the largest generalized eigenvalue of one retain
half against the other, S^{r1} v = lambda (S^{r2} + delta I) v (same delta), a "forget set" with
nothing to forget. The verdict also needs to know how many directions noise alone puts above
lambda0: the reverse problem, S^{r2} against S^{r1} + delta I, is a second draw of the same
noise, and its eigenvalues above lambda0 are counted (``n0_above``).

Edit of A only (B, the lora bias, the config untouched): A' = A V^-T diag(s) V^T = A U diag(s) V^T,
computed as A' = A + (A U) diag(s - 1) V^T, so a direction with s = 1 adds exactly nothing;

    s_i = 1 / (1 + mu * lambda_i)                        gate ``none``
    s_i = 1 / (1 + mu * max(0, lambda_i - lambda0))      gate ``noise`` (default)

with mu = ``--strength``. Under gate ``none`` this is the closed form
A' = A (S^r + delta I)(S^r + mu S^f + delta I)^-1 (``closed_form``), the minimizer of
E_r ||B (A' - A) x||^2 + mu E_f ||B A' x||^2: keep what the retain set uses, remove what only the
forget set uses. Nothing here depends on A's basis: for A -> Q^T A, B -> B Q (the same dW), A'
becomes Q^T A' and dW' = c B A' is unchanged.

NumPy float64 only; no I/O, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GATES = ("noise", "none")
#: A direction counts as edited when its factor is below this (SPEC 3b's report).
EDITED_BELOW = 0.999
DELTA_FLOOR = 1e-12


@dataclass(frozen=True)
class Directions:
    """The generalized eigen-solution of one module.

    Attributes:
        lam: (d,) generalized eigenvalues, descending.
        V: (d, d) eigenvectors in columns, V^T (S^r + delta I) V = I.
        U: (d, d) the dual basis (S^r + delta I) V, so that U^T V = I and A = A U V^T.
        delta: the ridge used.
    """

    lam: np.ndarray
    V: np.ndarray
    U: np.ndarray
    delta: float


def ridge(retain: np.ndarray, shrinkage: float) -> float:
    """delta = max(shrinkage * trace(S^r) / d_in, 1e-12)."""
    d = retain.shape[0]
    return max(float(shrinkage) * float(np.trace(retain)) / d, DELTA_FLOOR) if d else DELTA_FLOOR


def _sym(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return (m + m.T) / 2.0


def generalized_eigh(forget: np.ndarray, retain: np.ndarray, delta: float) -> Directions:
    """Solve forget v = lambda (retain + delta I) v by whitening (see the module docstring)."""
    f, r = _sym(forget), _sym(retain)
    d = r.shape[0]
    dvals, q = np.linalg.eigh(r + delta * np.eye(d))
    dvals = np.maximum(dvals, delta)  # rounding may push the smallest below the ridge; never below it
    w = q / np.sqrt(dvals)[None, :]
    lam, e = np.linalg.eigh(_sym(w.T @ f @ w))
    order = np.argsort(-lam, kind="stable")
    lam, e = lam[order], e[:, order]
    return Directions(lam=lam, V=w @ e, U=(q * np.sqrt(dvals)[None, :]) @ e, delta=float(delta))


def noise_level(half_a: np.ndarray, half_b: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """(lambda0, the reverse problem's eigenvalues): the largest generalized eigenvalue of
    ``half_a`` against ``half_b + delta I``, and every eigenvalue of ``half_b`` against
    ``half_a + delta I`` (the second draw of the noise that ``n0_above`` counts)."""
    lam0 = generalized_eigh(half_a, half_b, delta).lam
    reverse = generalized_eigh(half_b, half_a, delta).lam
    return (float(lam0[0]) if lam0.size else 0.0), reverse


def factors(lam: np.ndarray, *, strength: float, gate: str, lambda0: float = 0.0) -> np.ndarray:
    """s_i per direction: 1 / (1 + mu lambda_i) (gate none) or 1 / (1 + mu max(0, lambda_i -
    lambda0)) (gate noise). Gate none keeps lambda_i as solved (a rounding-negative lambda gives
    s a hair above 1), so that the edit equals the closed form exactly."""
    lam = np.asarray(lam, dtype=np.float64)
    if gate == "none":
        return 1.0 / (1.0 + strength * lam)
    if gate == "noise":
        return 1.0 / (1.0 + strength * np.maximum(0.0, lam - lambda0))
    raise ValueError(f"gate must be one of {GATES}, got {gate!r}")


def edit_a(A: np.ndarray, directions: Directions, s: np.ndarray) -> np.ndarray:
    """A' = A + (A U) diag(s - 1) V^T over the directions with s != 1 (float64)."""
    A = np.asarray(A, dtype=np.float64)
    idx = np.flatnonzero(s != 1.0)
    if idx.size == 0:
        return A.copy()
    return A + ((A @ directions.U[:, idx]) * (s[idx] - 1.0)[None, :]) @ directions.V[:, idx].T


def closed_form(A: np.ndarray, forget: np.ndarray, retain: np.ndarray, *, delta: float, strength: float) -> np.ndarray:
    """A (S^r + delta I)(S^r + mu S^f + delta I)^-1: gate none's edit, by one linear solve."""
    A = np.asarray(A, dtype=np.float64)
    r = _sym(retain) + delta * np.eye(retain.shape[0])
    m = r + strength * _sym(forget)
    # X = A r m^-1  <=>  m^T X^T = r^T A^T (m and r symmetric)
    return np.linalg.solve(m, r @ A.T).T


__all__ = ["Directions", "EDITED_BELOW", "GATES", "closed_form", "edit_a", "factors", "generalized_eigh", "noise_level", "ridge"]
