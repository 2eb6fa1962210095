"""Module A's closed-form steps of Turbo-VBI (Xia, Tsang, Lau, IEEE TSP 2023): the rho-step and the s-step.

The three-layer prior of one weight n is

    w_n | rho_n ~ N(0, 1/rho_n),   rho_n | s_n ~ Gamma(a, b) if s_n = 1 (active) else Gamma(a_bar, b_bar),

with a binary support s_n whose prior probability pi_n = P(s_n = 1) comes from module B (the Markov random field,
:mod:`bayescomp.priors.support_mrf`). Given the weight posterior's second moment x_n = E_q[w_n²] = mu_n² + sigma_n²,
both steps are closed form. Two variational families are offered (``TurboVBIConfig.factorization``):

* ``"mean_field"``: q(rho) q(s), as in the first author's public federated-learning demo (d_turbo_vbi_demo.py):
  rho-step  a~ = pi~ a + (1 - pi~) a_bar + c1,   b~ = c2 x + pi~ b + (1 - pi~) b_bar;
  s-step    logit pi~ = logit pi + [a ln b - ln G(a) + (a - 1) E ln rho - b E rho] - [same with a_bar, b_bar].
  Its fixed points are sticky: E rho is computed under the current mixture, so a weight believed active keeps the
  active component's small precision and with it the evidence for being active.
* ``"structured"`` (default): q(rho, s) = q(s) q(rho | s), a strictly larger family. The optimal factors are
  q(rho | s) = Gamma(a_s + c1, b_s + c2 x) and logit pi~ = logit pi + ln Z_1 - ln Z_0 with the collapsed evidence
  ln Z_s = a_s ln b_s - ln G(a_s) + ln G(a_s + c1) - (a_s + c1) ln(b_s + c2 x), i.e. the Gamma-Gaussian (Student-t)
  marginal of the weight under each component. The decision no longer depends on the previous pi~.

The constants (c1, c2) are (1/2, 1/2) for a real Gaussian weight (exact VB; default) and (1, 1) for the
complex-Gaussian convention that the reference demo inherits from channel estimation (``convention="complex"``).
Which form the TSP paper prints could not be checked (UNVERIFIED); both are tested against direct
numerical optimisation of the ELBO in ``tests/test_turbo_vbi.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def convention_constants(convention: str) -> tuple[float, float]:
    """(c1, c2): the exponent of rho and the factor of rho E[w²] in ln p(w | rho), up to constants."""
    if convention == "real":
        return 0.5, 0.5
    if convention == "complex":
        return 1.0, 1.0
    raise ValueError(f"convention must be 'real' or 'complex', got {convention!r}")


@dataclass(frozen=True)
class GammaPair:
    """The precision priors of the active (a, b) and inactive (a_bar, b_bar) components, as tensors or floats."""

    a: torch.Tensor | float
    b: torch.Tensor | float
    a_bar: torch.Tensor | float
    b_bar: torch.Tensor | float


def gamma_moments(shape: torch.Tensor, rate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[rho] and E[ln rho] of Gamma(shape, rate)."""
    return shape / rate, torch.digamma(shape) - torch.log(rate)


def _as(value, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def gamma_log_normaliser(shape: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """a ln b - ln G(a), the log normalising constant of Gamma(a, b)."""
    return shape * torch.log(rate) - torch.lgamma(shape)


def mean_field_rho_step(second_moment: torch.Tensor, support: torch.Tensor, prior: GammaPair,
                        convention: str = "real") -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal q(rho) = Gamma(a~, b~) given q(w) (through E[w²]) and q(s) = Bernoulli(pi~)."""
    c1, c2 = convention_constants(convention)
    shape = support * prior.a + (1 - support) * prior.a_bar + c1
    rate = c2 * second_moment + support * prior.b + (1 - support) * prior.b_bar
    return shape, rate


def mean_field_evidence(shape: torch.Tensor, rate: torch.Tensor, prior: GammaPair) -> torch.Tensor:
    """logit pi~ - logit pi of the optimal q(s) given q(rho) = Gamma(shape, rate): what module A tells module B."""
    e_rho, e_log_rho = gamma_moments(shape, rate)
    a, b, a_bar, b_bar = (_as(v, shape) for v in (prior.a, prior.b, prior.a_bar, prior.b_bar))
    active = gamma_log_normaliser(a, b) + (a - 1) * e_log_rho - b * e_rho
    inactive = gamma_log_normaliser(a_bar, b_bar) + (a_bar - 1) * e_log_rho - b_bar * e_rho
    return active - inactive


def collapsed_log_evidence(second_moment: torch.Tensor, shape, rate, convention: str = "real") -> torch.Tensor:
    """ln Z_s = ln ∫ exp(E_q(w)[ln p(w | rho)]) Gamma(rho; shape, rate) d rho, without the constant shared by s."""
    c1, c2 = convention_constants(convention)
    shape, rate = _as(shape, second_moment), _as(rate, second_moment)
    return (gamma_log_normaliser(shape, rate) + torch.lgamma(shape + c1)
            - (shape + c1) * torch.log(rate + c2 * second_moment))


def structured_posteriors(second_moment: torch.Tensor, prior: GammaPair, convention: str = "real"
                          ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Optimal q(rho | s=1), q(rho | s=0) (shape, rate each) and the evidence ln Z_1 - ln Z_0 for module B."""
    c1, c2 = convention_constants(convention)
    active = (_as(prior.a, second_moment) + c1, prior.b + c2 * second_moment)
    inactive = (_as(prior.a_bar, second_moment) + c1, prior.b_bar + c2 * second_moment)
    evidence = (collapsed_log_evidence(second_moment, prior.a, prior.b, convention)
                - collapsed_log_evidence(second_moment, prior.a_bar, prior.b_bar, convention))
    return active, inactive, evidence


def expected_precision(support: torch.Tensor, active: tuple[torch.Tensor, torch.Tensor],
                       inactive: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """E[rho] and E[ln rho] under q(rho, s): a mixture for the structured family, one Gamma for mean field."""
    e_rho, e_log = gamma_moments(*active)
    if inactive is None:
        return e_rho, e_log
    e_rho0, e_log0 = gamma_moments(*inactive)
    return support * e_rho + (1 - support) * e_rho0, support * e_log + (1 - support) * e_log0
