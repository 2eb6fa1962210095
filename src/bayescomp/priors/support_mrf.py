"""Module B of Turbo-VBI (Xia, Tsang, Lau, IEEE TSP 2023): a Markov-random-field prior on weight supports.

Every weight n of a layer has a binary support variable s_n (1 = active, 0 = inactive); the weights are
laid out as a 2-D grid (rows = output neurons, columns = inputs). The support prior is the normalised product
of one Markov chain per row (left to right) and one per column (top to bottom)::

    p(s) ∝ Π_rows MarkovChain_h(row) × Π_columns MarkovChain_v(column)

Each chain starts with P(active) = ``p_start`` and moves with T[s, s'] = P(s' | s): T[1, 1] = p11,
T[1, 0] = 1 - p11, T[0, 1] = p01, T[0, 0] = 1 - p01 (``p01_vertical`` / ``p11_vertical`` set the column
chains). As a factor graph: a unary start factor on every node of column 0 and another on every node of row 0
(node (0, 0) gets two, interior nodes none), T_h(s_left, s_right) on every horizontal edge and
T_v(s_up, s_down) on every vertical edge. The tables are not symmetric, so messages against the chain
direction use T transposed. A 1 x C grid is one Markov chain whose every node also carries the start factor of
its length-1 column (likewise an R x 1 grid).

Module A (variational inference) sends the evidence log-odds e_n = logit(pi~_n) - logit(pi_n) of every node;
:func:`grid_bp` runs sum-product loopy belief propagation and returns the extrinsic log-odds (start factors
plus all incoming messages, the node's own evidence excluded) that becomes module A's new prior
pi_n = sigmoid(extrinsic_n).

Messages are log-odds (log m(1) - log m(0)); the four directional message tensors (incoming from the left,
right, upper, lower neighbour) are updated in parallel (flooding schedule) with optional damping. Chains are
trees, so BP is exact on 1 x C and R x 1 grids. On larger grids it is the usual loopy (Bethe) approximation:
close for weak coupling, but with strong coupling (default prior) a posterior with two competing modes (e.g.
a region all on vs all off) gives BP several fixed points and BP commits to one of them, so a marginal can be
far from exact. :func:`exact_grid_marginals` enumerates all supports of small grids: the tests' reference.

**Neuron level** (``MarkovGridPrior.p_neuron``; our reconstruction of the paper's neuron-level structure, whose
text could not be read here: UNVERIFIED). Every row r (an output neuron or filter) gets one more binary variable
t_r with prior P(t_r = 1) = p_neuron, joined to every node of its row by the hard factor phi(t, s) = 0 iff t = 0 and
s = 1: a neuron that is off has all its weights off, a neuron that is on leaves its row to the Markov chains.
Summing t_r out multiplies the prior of a support by p_neuron + (1 - p_neuron) [row r empty], i.e. an empty row
is 1/p_neuron times more likely a priori, so a row whose weights have only weak evidence switches off as a
whole while a row with a few strong weights is untouched. In log-odds, node (r, c) sends its neuron
softplus(h) (h: its belief without the neuron's message), and the neuron sends back logsigmoid(logit p_neuron +
the other nodes' messages). The neuron edges close loops with the row chain, so BP is approximate even on a
1 x C grid; with uncoupled chains (p01 = p11 both ways) every row is a star and BP is exact.

``MarkovGridPrior.neuron_cost`` (nats per weight, default 0) makes a neuron's prior depend on its fan-in:
logit P(t_r = 1) = logit p_neuron - neuron_cost * C for a row of C weights, a description-length prior in which
a neuron pays for every weight it could keep. A fixed p_neuron is negligible against the summed evidence of a row
of hundreds of weights; with the cost, a row stays on only while its weights' combined evidence for being active
exceeds neuron_cost per weight of the row, so sparse rows (few, weak active weights) switch off as a whole.
Our choice (UNVERIFIED, like the neuron level itself).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "GridBPResult", "MarkovGridPrior", "exact_grid_marginals", "exact_neuron_marginals", "grid_bp",
    "logaddexp_message",
]

_MAX_EXACT_NODES = 16
_SATURATION = 40.0  # see the logaddexp fallback in _message_fn
_MAX_FAST_COUPLING = 30.0  # |log odds ratio| of a table up to which the sigmoid/log1p message form is used


@dataclass(frozen=True)
class MarkovGridPrior:
    """Row and column Markov chains over a support grid (the module docstring gives the factor graph)."""

    p01: float = 0.05  # P(next active | previous inactive)
    p11: float = 0.9  # P(next active | previous active)
    p_start: float = 0.1  # P(active) of a chain's first node
    p01_vertical: float | None = None  # None: same as p01
    p11_vertical: float | None = None  # None: same as p11
    p_neuron: float | None = None  # P(row's neuron on); None: no neuron level (module docstring)
    neuron_cost: float = 0.0  # nats per weight of a row subtracted from its neuron's prior log-odds (docstring)

    def __post_init__(self) -> None:
        if not isinstance(self.neuron_cost, numbers.Real) or not 0.0 <= float(self.neuron_cost) < math.inf:
            raise ValueError(f"MarkovGridPrior.neuron_cost must be a finite number >= 0, got {self.neuron_cost!r}")
        for name in ("p01", "p11", "p_start", "p01_vertical", "p11_vertical", "p_neuron"):
            value = getattr(self, name)
            if value is None and name in ("p01_vertical", "p11_vertical", "p_neuron"):
                continue
            if not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
                raise ValueError(f"MarkovGridPrior.{name} must be a probability in the open interval (0, 1),"
                                 f" got {value!r}")

    def log_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(log T_h, log T_v), float64 2 x 2, indexed [previous state, next state]."""
        p01_v = self.p01 if self.p01_vertical is None else self.p01_vertical
        p11_v = self.p11 if self.p11_vertical is None else self.p11_vertical
        return _log_table(self.p01, self.p11), _log_table(p01_v, p11_v)

    def start_log_odds(self) -> float:
        """log(p_start / (1 - p_start)): the log-odds a start factor adds to its node."""
        return math.log(self.p_start) - math.log1p(-self.p_start)

    @property
    def message_count(self) -> int:
        """Incoming message tensors per node: four grid neighbours, plus the row's neuron when it has one."""
        return 4 if self.p_neuron is None else 5

    def neuron_log_odds(self, row_length: int = 0) -> float:
        """Prior log-odds of a neuron whose row has ``row_length`` weights: log(p_neuron / (1 - p_neuron)) -
        neuron_cost * row_length; only meaningful when the prior has a neuron level."""
        if self.p_neuron is None:
            raise ValueError("this MarkovGridPrior has no neuron level (p_neuron is None)")
        return math.log(self.p_neuron) - math.log1p(-self.p_neuron) - self.neuron_cost * row_length

    def stationary_active(self) -> float:
        """Stationary P(active) of the horizontal chain, p01 / (1 - p11 + p01); meant for initialising pi."""
        return self.p01 / (1.0 - self.p11 + self.p01)


def _log_table(p01: float, p11: float) -> torch.Tensor:
    """log T with T[0] = (1 - p01, p01), T[1] = (1 - p11, p11); log1p keeps tiny p precise."""
    rows = [[math.log1p(-p01), math.log(p01)], [math.log1p(-p11), math.log(p11)]]
    return torch.tensor(rows, dtype=torch.float64)


@dataclass
class GridBPResult:
    """Output of :func:`grid_bp`; ``messages`` can warm-start the next call."""

    marginal_log_odds: torch.Tensor  # evidence + extrinsic, shape like the evidence
    extrinsic_log_odds: torch.Tensor  # start factors + incoming messages: all but the node's own evidence
    messages: torch.Tensor  # (4 or 5, *evidence.shape): incoming log-odds from left, right, up, down (, neuron)
    iterations: int  # sweeps run
    max_change: float  # largest |change| of any message in the last sweep (inf if no sweep ran)
    neuron_log_odds: torch.Tensor | None = None  # (..., R): log-odds P(t_r = 1) of each row's neuron, if any


def _direction_tables(prior: MarkovGridPrior) -> torch.Tensor:
    """Float64 log tables of the four directions, indexed [s_sender, s_receiver], shape (4, 2, 2).

    Direction k is the message *into* a node from its left (0), right (1), upper (2) and lower (3) neighbour;
    messages against the chain direction (1, 3) use the transposed table.
    """
    log_h, log_v = prior.log_tables()
    return torch.stack([log_h, log_h.T, log_v, log_v.T])


def logaddexp_message(h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Reference message log-odds for sender log-odds ``h`` over a 2 x 2 log table L[s_sender, s_receiver].

    lambda = logaddexp(L[0,1], L[1,1] + h) - logaddexp(L[0,0], L[1,0] + h); stable for every finite h.
    """
    l00, l01, l10, l11 = table.reshape(-1).to(h).unbind()
    return torch.logaddexp(l01, h + l11) - torch.logaddexp(l00, h + l10)


def _message_fn(prior: MarkovGridPrior, like: torch.Tensor) -> MessageFn:
    """In-place map from sender log-odds h of shape (4, ...) to the four directions' message log-odds.

    Writing L[s, t] = L00 + a s + b t + g s t, the logaddexp message equals
    b + log1p(expm1(g) sigmoid(h + a)), or b - log1p(expm1(-g) sigmoid(h + a + g)) for g < 0. That form is
    exact, needs one sigmoid and one log1p of a non-negative argument (no cancellation; h = +-inf is fine) and
    is ~4x faster than a broadcast logaddexp on CPU. Tables with |g| > 30 (odds ratio > 1e13), where
    expm1(|g|) sigmoid(.) would approach float32's range, fall back to the logaddexp formula (h clamped
    where it no longer moves a message).
    """
    tables = _direction_tables(prior)
    alpha = tables[:, 1, 0] - tables[:, 0, 0]
    beta = tables[:, 0, 1] - tables[:, 0, 0]
    gamma = tables[:, 1, 1] - tables[:, 1, 0] - tables[:, 0, 1] + tables[:, 0, 0]
    view = (4,) + (1,) * (like.dim())
    if gamma.abs().max().item() > _MAX_FAST_COUPLING:
        bound = _SATURATION + 2.0 * tables.abs().max().item()  # h beyond it moves a message by < exp(-40)

        def slow(h: torch.Tensor) -> torch.Tensor:
            h = h.clamp_(-bound, bound)
            return torch.stack([logaddexp_message(h[k], tables[k]) for k in range(4)])

        return slow
    positive = gamma >= 0
    offset = torch.where(positive, alpha, alpha + gamma).to(like).view(view)
    scale = torch.expm1(gamma.abs()).to(like).view(view)
    sign = torch.where(positive, 1.0, -1.0).to(like).view(view)
    shift = beta.to(like).view(view)

    def fast(h: torch.Tensor) -> torch.Tensor:
        return h.add_(offset).sigmoid_().mul_(scale).log1p_().mul_(sign).add_(shift)

    return fast


def _start_log_odds_field(evidence: torch.Tensor, prior: MarkovGridPrior) -> torch.Tensor:
    """Start-factor log-odds of every node: one at column 0, one at row 0 (two at node (0, 0))."""
    field = torch.zeros(evidence.shape[-2:], dtype=evidence.dtype, device=evidence.device)
    start = prior.start_log_odds()
    field[:, 0] += start
    field[0, :] += start
    return field


def _zero_borders(messages: torch.Tensor) -> torch.Tensor:
    """Messages from missing neighbours (outside the grid) are uniform, i.e. 0 in the log-odds domain."""
    messages[0, ..., :, 0], messages[1, ..., :, -1] = 0.0, 0.0
    messages[2, ..., 0, :], messages[3, ..., -1, :] = 0.0, 0.0
    return messages


MessageFn = Callable[[torch.Tensor], torch.Tensor]


def _neuron_inputs(belief: torch.Tensor, messages: torch.Tensor) -> torch.Tensor:
    """Node -> neuron log-odds softplus(h), h = the node's belief without the neuron's own message (hard factor)."""
    return torch.nn.functional.softplus(belief - messages[4])


def _neuron_log_odds(unary: torch.Tensor, messages: torch.Tensor, neuron_prior: float | torch.Tensor
                     ) -> torch.Tensor:
    """Each row's neuron belief: its prior log-odds (a number, or per row shaped (..., R, 1)) plus every node's
    message, shape (..., R)."""
    if isinstance(neuron_prior, torch.Tensor):
        neuron_prior = neuron_prior.squeeze(-1)
    return neuron_prior + _neuron_inputs(unary + messages.sum(0), messages).sum(-1)


def _sweep(messages: torch.Tensor, unary: torch.Tensor, message_fn: MessageFn,
           neuron_prior: float | torch.Tensor | None = None) -> torch.Tensor:
    """One flooding update: all new message tensors from the old ones (no damping).

    The sender's h is its unary log-odds plus all its incoming messages except the one from the receiver.
    With a neuron level, the neuron's message to node (r, c) is logsigmoid of its prior plus the other nodes'
    softplus messages (module docstring).
    """
    belief = unary + messages.sum(0)
    new = torch.empty_like(messages)
    if neuron_prior is not None:
        into_neuron = _neuron_inputs(belief, messages)
        cavity = into_neuron.sum(-1, keepdim=True) + neuron_prior - into_neuron
        new[4] = torch.nn.functional.logsigmoid(cavity)
    h = torch.empty_like(messages[:4])
    for k, back in enumerate((1, 0, 3, 2)):  # the receiver of direction k is the sender's neighbour `back`
        torch.sub(belief, messages[back], out=h[k])
    out = message_fn(h)  # at the sender's position; shift each direction onto its receiver
    new[0, ..., :, 1:], new[0, ..., :, 0] = out[0, ..., :, :-1], 0.0
    new[1, ..., :, :-1], new[1, ..., :, -1] = out[1, ..., :, 1:], 0.0
    new[2, ..., 1:, :], new[2, ..., 0, :] = out[2, ..., :-1, :], 0.0
    new[3, ..., :-1, :], new[3, ..., -1, :] = out[3, ..., 1:, :], 0.0
    return new


def _largest_change(new: torch.Tensor, old: torch.Tensor) -> float:
    """max |new - old| with one host sync (aminmax is faster than abs().max() on CPU)."""
    if new.numel() == 0:
        return 0.0
    low, high = torch.aminmax(new - old)
    return torch.maximum(high, -low).item()


def grid_bp(evidence_log_odds: torch.Tensor, prior: MarkovGridPrior, iterations: int = 10,
            damping: float = 0.0, tol: float = 1e-4, messages: torch.Tensor | None = None,
            neuron_evidence: torch.Tensor | None = None) -> GridBPResult:
    """Loopy sum-product BP of the support MRF given per-node evidence log-odds of shape (..., R, C).

    Leading dimensions are independent grids. Runs at most ``iterations`` parallel sweeps, each damped as
    ``(1 - damping) * new + damping * old``, and stops early once the largest message change is below
    ``tol``. ``messages`` (shape (``prior.message_count``, *evidence.shape)) warm-starts from a previous result;
    None = zeros. With ``prior.p_neuron`` set, the result also carries each row's neuron log-odds, and
    ``neuron_evidence`` (shape (..., R), log-odds) adds evidence on each row's neuron itself: a unary factor on
    t_r, e.g. what the data lose without the neuron (``TurboVBIConfig.neuron_evidence``).
    """
    if evidence_log_odds.dim() < 2 or not evidence_log_odds.is_floating_point():
        raise ValueError("evidence_log_odds must be a floating tensor of shape (..., R, C)")
    if not 0.0 <= damping < 1.0:
        raise ValueError(f"damping must be in [0, 1), got {damping}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    with torch.no_grad():
        evidence = evidence_log_odds.detach()
        shape = (prior.message_count, *evidence.shape)
        if messages is None:
            msgs = evidence.new_zeros(shape)
        elif tuple(messages.shape) != shape:
            raise ValueError(f"messages must have shape {shape}, got {tuple(messages.shape)}")
        else:
            msgs = messages.detach().to(dtype=evidence.dtype, device=evidence.device, copy=True)
            msgs = _zero_borders(msgs)
        start = _start_log_odds_field(evidence, prior)
        unary, message_fn = evidence + start, _message_fn(prior, evidence)
        neuron_prior = None if prior.p_neuron is None else prior.neuron_log_odds(evidence.shape[-1])
        if neuron_evidence is not None:
            if neuron_prior is None:
                raise ValueError("neuron_evidence needs a MarkovGridPrior with a neuron level (p_neuron set)")
            if tuple(neuron_evidence.shape) != tuple(evidence.shape[:-1]):
                raise ValueError(f"neuron_evidence must have shape {tuple(evidence.shape[:-1])}, "
                                 f"got {tuple(neuron_evidence.shape)}")
            neuron_prior = (neuron_prior + neuron_evidence.detach().to(evidence)).unsqueeze(-1)
        sweeps, max_change = 0, math.inf
        for _ in range(iterations):
            new = _sweep(msgs, unary, message_fn, neuron_prior)
            if damping > 0.0:
                new.mul_(1.0 - damping).add_(msgs, alpha=damping)
            max_change = _largest_change(new, msgs)
            msgs, sweeps = new, sweeps + 1
            if max_change < tol:
                break
        extrinsic = start + msgs.sum(0)
        neurons = None if neuron_prior is None else _neuron_log_odds(unary, msgs, neuron_prior)
        return GridBPResult(marginal_log_odds=evidence + extrinsic, extrinsic_log_odds=extrinsic,
                            messages=msgs, iterations=sweeps, max_change=max_change, neuron_log_odds=neurons)


def exact_grid_marginals(evidence_log_odds: torch.Tensor, prior: MarkovGridPrior,
                         neuron_evidence: torch.Tensor | None = None) -> torch.Tensor:
    """P(s_n = 1) of every node by enumerating all 2^(R*C) supports (R*C <= 16): the reference for grid_bp.

    The log joint of a support s is sum_n s_n (e_n + start terms) plus the log tables of every horizontal and
    vertical edge, exactly the factor graph of the module docstring; with a neuron level, each row adds
    log(p + (1 - p) [row empty]) (its neuron summed out; p = the neuron's prior, ``neuron_cost`` included).
    Leading batch dimensions are allowed; ``neuron_evidence`` (shape (R,)) adds to each row's neuron log-odds.
    """
    return _exact_marginals(evidence_log_odds, prior, neuron_evidence)[0]


def exact_neuron_marginals(evidence_log_odds: torch.Tensor, prior: MarkovGridPrior,
                           neuron_evidence: torch.Tensor | None = None) -> torch.Tensor:
    """P(t_r = 1) of every row's neuron by the same enumeration, shape (..., R); needs ``prior.p_neuron``.

    Given a support s, P(t_r = 1 | s) = p / (p + (1 - p) [row r empty]), p the neuron's prior (cost included,
    and ``neuron_evidence``, shape (R,), added to its log-odds row by row).
    """
    if prior.p_neuron is None:
        raise ValueError("exact_neuron_marginals needs a MarkovGridPrior with p_neuron set")
    return _exact_marginals(evidence_log_odds, prior, neuron_evidence)[1]


def _exact_marginals(evidence_log_odds: torch.Tensor, prior: MarkovGridPrior,
                     neuron_evidence: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if evidence_log_odds.dim() < 2:
        raise ValueError("evidence_log_odds must have shape (..., R, C)")
    rows, cols = evidence_log_odds.shape[-2:]
    n = rows * cols
    if n > _MAX_EXACT_NODES:
        raise ValueError(f"exact enumeration is limited to {_MAX_EXACT_NODES} nodes, the grid has {n}")
    evidence = evidence_log_odds.detach().to(torch.float64)
    unary = (evidence + _start_log_odds_field(evidence, prior)).reshape(-1, n)  # (B, n)
    configs = (torch.arange(2**n)[:, None] >> torch.arange(n)) & 1  # (2^n, n), node index r * C + c
    log_joint = configs.to(torch.float64) @ unary.T  # (2^n, B)
    index = torch.arange(n).view(rows, cols)
    log_h, log_v = prior.log_tables()
    edges = ((log_h, index[:, :-1], index[:, 1:]), (log_v, index[:-1, :], index[1:, :]))
    for table, first, second in edges:
        pair = 2 * configs[:, first.reshape(-1)] + configs[:, second.reshape(-1)]
        log_joint = log_joint + table.reshape(-1)[pair].sum(1, keepdim=True)
    neuron_on = None
    if prior.p_neuron is not None:
        empty = (configs.view(-1, rows, cols).sum(-1) == 0).to(torch.float64)  # (2^n, R)
        log_odds = torch.tensor(prior.neuron_log_odds(cols), dtype=torch.float64)
        if neuron_evidence is not None:  # one value per row, shared by the leading grids
            log_odds = log_odds + neuron_evidence.detach().to(torch.float64).reshape(rows)
        p_on = torch.sigmoid(log_odds)
        row_factor = p_on + (1.0 - p_on) * empty
        log_joint = log_joint + row_factor.log().sum(1, keepdim=True)
        neuron_on = p_on / row_factor  # P(t_r = 1 | s)
    weights = torch.softmax(log_joint, dim=0)
    marginals = (configs.to(torch.float64).T @ weights).T.reshape(evidence.shape).to(evidence_log_odds.dtype)
    if neuron_on is None:
        return marginals, None
    neurons = (neuron_on.T @ weights).T.reshape(*evidence.shape[:-1]).to(evidence_log_odds.dtype)
    return marginals, neurons
