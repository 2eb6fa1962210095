"""Turbo-VBI module B: grid BP against brute-force enumeration, an independent loop implementation of the same
flooding schedule, and a planted block structure."""

from __future__ import annotations

import math

import pytest
import torch

from bayescomp.priors.support_mrf import (
    MarkovGridPrior,
    exact_grid_marginals,
    exact_neuron_marginals,
    grid_bp,
    logaddexp_message,
)

PRIORS = [
    MarkovGridPrior(),
    MarkovGridPrior(p01=0.3, p11=0.6, p_start=0.4),
    MarkovGridPrior(p01=0.2, p11=0.7, p_start=0.3, p01_vertical=0.9, p11_vertical=0.05),  # anti-correlated
    MarkovGridPrior(p01=1e-8, p11=1 - 1e-8, p_start=0.5),  # so strong that the logaddexp fallback runs
]


def _evidence(shape: tuple[int, ...], seed: int, std: float = 2.0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return std * torch.randn(*shape, generator=g, dtype=dtype)


def _naive_bp(evidence: torch.Tensor, prior: MarkovGridPrior, sweeps: int) -> torch.Tensor:
    """Probability-domain flooding BP written with Python loops over nodes: an independent reference."""
    rows, cols = evidence.shape
    t_h, t_v = (t.exp().tolist() for t in prior.log_tables())
    start = [1 - prior.p_start, prior.p_start]
    unary = {}
    for r in range(rows):
        for c in range(cols):
            unary[r, c] = [1.0, math.exp(evidence[r, c].item())]
            for _ in range((c == 0) + (r == 0)):
                unary[r, c] = [unary[r, c][s] * start[s] for s in (0, 1)]

    def pair(u, v, su, sv):  # factor value on edge (u, v) with u's state su and v's state sv
        if u[0] == v[0]:
            return t_h[su][sv] if u[1] < v[1] else t_h[sv][su]
        return t_v[su][sv] if u[0] < v[0] else t_v[sv][su]

    def neighbours(n):
        r, c = n
        return [(r + dr, c + dc) for dr, dc in ((0, -1), (0, 1), (-1, 0), (1, 0))
                if 0 <= r + dr < rows and 0 <= c + dc < cols]

    msg = {(u, v): [0.5, 0.5] for u in unary for v in neighbours(u)}
    for _ in range(sweeps):
        new = {}
        for u, v in msg:
            local = [unary[u][s] * math.prod(msg[w, u][s] for w in neighbours(u) if w != v) for s in (0, 1)]
            out = [sum(local[s] * pair(u, v, s, t) for s in (0, 1)) for t in (0, 1)]
            new[u, v] = [x / sum(out) for x in out]
        msg = new
    belief = torch.zeros(rows, cols, dtype=torch.float64)
    for n in unary:
        b = [unary[n][s] * math.prod(msg[w, n][s] for w in neighbours(n)) for s in (0, 1)]
        belief[n] = b[1] / (b[0] + b[1])
    return belief


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("shape", [(1, 7), (6, 1)])
def test_chain_bp_is_exact(shape, prior):
    """A chain is a tree: BP gives the exact marginals after at most its length in sweeps."""
    for seed in range(3):
        evidence = _evidence(shape, seed)
        result = grid_bp(evidence, prior, iterations=max(shape) + 2, tol=1e-12)
        exact = exact_grid_marginals(evidence, prior)
        assert result.max_change < 1e-12
        assert torch.allclose(torch.sigmoid(result.marginal_log_odds), exact, atol=1e-6, rtol=0)


def test_extrinsic_excludes_the_evidence():
    """marginal = evidence + extrinsic exactly; on a chain a node's extrinsic ignores its own evidence; with
    no evidence the extrinsic output is the exact prior marginal."""
    prior = MarkovGridPrior(p01=0.2, p11=0.8, p_start=0.3)
    evidence = _evidence((1, 6), 0)
    result = grid_bp(evidence, prior, iterations=10, tol=1e-12)
    assert torch.equal(result.marginal_log_odds, evidence + result.extrinsic_log_odds)
    moved = evidence.clone()
    moved[0, 3] += 5.0
    again = grid_bp(moved, prior, iterations=10, tol=1e-12)
    own = result.extrinsic_log_odds[0, 3].item()
    assert again.extrinsic_log_odds[0, 3].item() == pytest.approx(own, abs=1e-12)
    assert abs(again.extrinsic_log_odds[0, 2] - result.extrinsic_log_odds[0, 2]) > 0.1  # neighbours do see it
    zero = torch.zeros(1, 6, dtype=torch.float64)
    prior_only = grid_bp(zero, prior, iterations=10, tol=1e-12)
    exact = exact_grid_marginals(zero, prior)
    assert torch.allclose(torch.sigmoid(prior_only.extrinsic_log_odds), exact, atol=1e-9, rtol=0)


@pytest.mark.parametrize("prior", PRIORS[:3])
def test_loopy_bp_matches_an_independent_loop_implementation(prior):
    """Same flooding schedule, same number of sweeps: the vectorised result equals a per-node Python one."""
    evidence = _evidence((3, 4), 1)
    for sweeps in (1, 2, 7):
        result = grid_bp(evidence, prior, iterations=sweeps, tol=0.0)
        assert result.iterations == sweeps
        reference = _naive_bp(evidence, prior, sweeps)
        assert torch.allclose(torch.sigmoid(result.marginal_log_odds), reference, atol=1e-10, rtol=0)


@pytest.mark.parametrize("shape", [(3, 3), (4, 4)])
def test_loopy_bp_weak_coupling_is_close_to_exact(shape):
    """Loopy BP is approximate; with weak coupling (p01=0.4, p11=0.6) it is close. Largest error measured on
    these 20 draws of N(0, 2^2) evidence: 0.0006 (3 x 3) and 0.0011 (4 x 4), at most 0.0018 on 100 draws."""
    prior = MarkovGridPrior(p01=0.4, p11=0.6)
    evidence = _evidence((20, *shape), 0)
    result = grid_bp(evidence, prior, iterations=100, tol=1e-8)
    assert result.max_change < 1e-8
    exact = exact_grid_marginals(evidence, prior)
    assert (torch.sigmoid(result.marginal_log_odds) - exact).abs().max().item() < 0.02


@pytest.mark.parametrize("shape", [(3, 3), (4, 4)])
def test_loopy_bp_strong_coupling(shape):
    """Strong coupling (p01=0.05, p11=0.9; log odds ratio 5.1 per edge, far beyond the Ising critical point):
    damped BP converges, and is usually but not always close to exact. Measured on these 100 draws of
    N(0, 2^2) evidence: 3 x 3: median error 9e-5, 3 draws over 0.15 (0.23, 0.34, 0.40), none on the wrong side
    of 0.5 where the exact marginal is outside [0.3, 0.7]; 4 x 4: median 1.3e-4, 2 draws over 0.15 (0.30,
    0.92), 1 on the wrong side. The bad draws have near-bimodal posteriors (a block 'on' vs 'off', exact
    marginals near 0.5 or one mode at ~10%): there loopy BP is overconfident (Bethe error; the per-node loop
    implementation reaches the same fixed point) or has several fixed points and commits to one mode, which
    is how the 0.92 draw flips. Asserted: convergence, >= 90 of 100 draws within 0.15 and on the right side,
    median error < 0.002, and every wrong-side draw has several BP fixed points."""
    prior = MarkovGridPrior(p01=0.05, p11=0.9)
    evidence = _evidence((100, *shape), 0)
    result = grid_bp(evidence, prior, iterations=300, damping=0.5, tol=1e-4)
    assert result.max_change < 1e-4
    exact = exact_grid_marginals(evidence, prior)
    bp = torch.sigmoid(result.marginal_log_odds)
    error = (bp - exact).abs().flatten(1).amax(1)
    decided = (exact < 0.3) | (exact > 0.7)
    wrong_side = (decided & ((bp > 0.5) != (exact > 0.5))).flatten(1).any(1)
    good = (error <= 0.15) & ~wrong_side
    assert good.sum().item() >= 90
    assert error.median().item() < 0.002
    if wrong_side.any():
        bad = evidence[wrong_side]
        ends = [grid_bp(bad, prior, iterations=500, damping=0.5, tol=1e-8,
                        messages=torch.full((4, *bad.shape), init, dtype=bad.dtype)) for init in (6.0, -6.0)]
        spread = (torch.sigmoid(ends[0].marginal_log_odds) - torch.sigmoid(ends[1].marginal_log_odds)).abs()
        assert (spread.flatten(1).amax(1) > 0.5).all()


def test_planted_blocks_are_recovered():
    """Two dense blocks of 1s in a 32 x 48 grid, evidence +-1.5 plus N(0, 1.5^2) noise, default prior.
    Measured (seed 0): converged in 31 undamped sweeps; 255 nodes wrong by the sign of the evidence, 9 by the
    BP marginal (28x fewer). Over seeds 0-29 the factor was 13x-118x and 27 of 30 converged within 50 sweeps
    (the others in <= 85), so asserting convergence within 50 and a factor >= 5 leaves a wide margin."""
    truth = torch.zeros(32, 48, dtype=torch.bool)
    truth[4:14, 6:22] = True
    truth[18:28, 28:44] = True
    g = torch.Generator().manual_seed(0)
    evidence = torch.where(truth, 1.5, -1.5) + 1.5 * torch.randn(32, 48, generator=g)
    result = grid_bp(evidence, MarkovGridPrior(), iterations=50, tol=1e-4)
    assert result.max_change < 1e-4
    wrong_evidence = ((evidence > 0) != truth).sum().item()
    wrong_bp = ((result.marginal_log_odds > 0) != truth).sum().item()
    assert 5 * wrong_bp <= wrong_evidence


def test_batched_grids_equal_separate_runs():
    prior = MarkovGridPrior(p01=0.1, p11=0.8, p01_vertical=0.2)
    evidence = _evidence((3, 5, 6), 2)
    batched = grid_bp(evidence, prior, iterations=15, tol=0.0)
    for i in range(3):
        alone = grid_bp(evidence[i], prior, iterations=15, tol=0.0)
        assert torch.allclose(batched.marginal_log_odds[i], alone.marginal_log_odds, atol=1e-12, rtol=0)
        assert torch.allclose(batched.messages[:, i], alone.messages, atol=1e-12, rtol=0)
    nested = grid_bp(evidence.view(1, 3, 5, 6), prior, iterations=15, tol=0.0)
    assert torch.allclose(nested.marginal_log_odds[0], batched.marginal_log_odds, atol=1e-12, rtol=0)


def test_warm_start_from_converged_messages():
    prior = MarkovGridPrior()
    evidence = _evidence((12, 20), 3, std=1.5)
    cold = grid_bp(evidence, prior, iterations=1, tol=1e-6)
    assert cold.max_change > 1e-6
    first = grid_bp(evidence, prior, iterations=200, tol=1e-6)
    assert first.max_change < 1e-6
    kept = first.messages.clone()
    second = grid_bp(evidence, prior, iterations=200, tol=1e-6, messages=first.messages)
    assert second.iterations == 1 and second.max_change < 1e-6
    assert torch.equal(first.messages, kept)  # the caller's tensor is not modified
    assert torch.allclose(second.marginal_log_odds, first.marginal_log_odds, atol=1e-5, rtol=0)
    untouched = grid_bp(evidence, prior, iterations=0, messages=first.messages)
    assert untouched.iterations == 0 and torch.equal(untouched.marginal_log_odds, first.marginal_log_odds)


def test_damping_mixes_new_and_old_messages():
    """One damped sweep is (1 - damping) * undamped sweep + damping * old; border messages passed in are
    ignored (there is no neighbour to send them)."""
    prior = MarkovGridPrior(p01=0.1, p11=0.8)
    evidence = _evidence((4, 5), 5)
    old = grid_bp(evidence, prior, iterations=3, tol=0.0).messages
    plain = grid_bp(evidence, prior, iterations=1, tol=0.0, messages=old)
    damped = grid_bp(evidence, prior, iterations=1, damping=0.3, tol=0.0, messages=old)
    assert torch.allclose(damped.messages, 0.7 * plain.messages + 0.3 * old, atol=1e-12, rtol=0)
    noisy = old + 3.0 * (old == 0)  # garbage exactly where the borders are
    again = grid_bp(evidence, prior, iterations=1, tol=0.0, messages=noisy)
    assert torch.equal(again.messages, plain.messages)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("prior", PRIORS)
def test_messages_equal_the_logaddexp_formula(prior, dtype):
    """On 1 x 2 grids the message into each node is one application of the logaddexp formula to the other
    node's evidence plus start factors; infinite evidence gives the finite limiting message."""
    infinities = torch.tensor([-math.inf, math.inf], dtype=dtype)
    h = torch.cat([torch.linspace(-60, 60, 241, dtype=dtype), infinities])
    start = prior.start_log_odds()
    log_h, _ = prior.log_tables()
    evidence = torch.stack([h - 2 * start, h - start], dim=1).view(-1, 1, 2)  # node 0 has two start factors
    result = grid_bp(evidence, prior, iterations=3, tol=0.0)
    clip = h.clamp(-1e3, 1e3)  # the reference formula is nan at +-inf; its limit is reached long before
    expected_right = logaddexp_message(clip.double(), log_h)
    expected_left = logaddexp_message(clip.double(), log_h.T)
    atol = 1e-4 if dtype == torch.float32 else 1e-9
    assert torch.isfinite(result.messages).all()
    assert torch.allclose(result.messages[0, :, 0, 1].double(), expected_right, atol=atol, rtol=0)
    assert torch.allclose(result.messages[1, :, 0, 0].double(), expected_left, atol=atol, rtol=0)


def test_float32_agrees_with_float64():
    prior = MarkovGridPrior()
    evidence = _evidence((20, 30), 4)
    wide = grid_bp(evidence, prior, iterations=30, tol=0.0)
    narrow = grid_bp(evidence.float(), prior, iterations=30, tol=0.0)
    assert narrow.marginal_log_odds.dtype == torch.float32
    assert torch.allclose(narrow.marginal_log_odds.double(), wide.marginal_log_odds, atol=1e-3, rtol=0)


def test_prior_helpers():
    prior = MarkovGridPrior(p01=0.1, p11=0.7, p_start=0.2, p11_vertical=0.95)
    log_h, log_v = prior.log_tables()
    assert torch.allclose(log_h.exp(), torch.tensor([[0.9, 0.1], [0.3, 0.7]], dtype=torch.float64))
    assert torch.allclose(log_v.exp(), torch.tensor([[0.9, 0.1], [0.05, 0.95]], dtype=torch.float64))
    assert prior.start_log_odds() == pytest.approx(math.log(0.2 / 0.8))
    assert prior.stationary_active() == pytest.approx(0.1 / 0.4)


@pytest.mark.parametrize("name,value", [("p01", 0.0), ("p11", 1.0), ("p_start", -0.1), ("p01_vertical", 1.0),
                                        ("p11_vertical", 0.0), ("p_start", math.nan), ("p11", 1.5)])
def test_invalid_priors_raise(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a probability in the open interval"):
        MarkovGridPrior(**{name: value})


def test_invalid_calls_raise():
    prior = MarkovGridPrior()
    with pytest.raises(ValueError, match="16 nodes"):
        exact_grid_marginals(torch.zeros(4, 5), prior)
    exact_grid_marginals(torch.zeros(4, 4), prior)  # 16 nodes is fine
    with pytest.raises(ValueError, match="shape"):
        grid_bp(torch.zeros(3, 4), prior, messages=torch.zeros(4, 4, 3))
    with pytest.raises(ValueError, match="damping"):
        grid_bp(torch.zeros(3, 4), prior, damping=1.0)
    with pytest.raises(ValueError, match="floating"):
        grid_bp(torch.zeros(4, dtype=torch.float32), prior)


# --- the neuron level (one variable per row, hard-coupled to its row) -------------------------------------------
def _brute_force_with_neurons(evidence: torch.Tensor, prior: MarkovGridPrior,
                              row_evidence: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Marginals by enumerating supports *and* neuron states explicitly (no neuron summed out analytically);
    ``row_evidence`` is a unary log-odds factor on each row's neuron."""
    rows, cols = evidence.shape
    log_h, log_v = (t.tolist() for t in prior.log_tables())
    start = math.log(prior.p_start) - math.log1p(-prior.p_start)
    # the neuron's prior, its per-weight cost applied here from the fields (independently of neuron_log_odds)
    log_odds = math.log(prior.p_neuron) - math.log1p(-prior.p_neuron) - prior.neuron_cost * cols
    row_evidence = row_evidence or [0.0] * rows
    log_p = [(0.0, log_odds + e) for e in row_evidence]  # unnormalised: the total divides it out
    total, node_on, neuron_on = 0.0, torch.zeros(rows, cols, dtype=torch.float64), torch.zeros(rows, dtype=torch.float64)
    for s_bits in range(2 ** (rows * cols)):
        s = [[(s_bits >> (r * cols + c)) & 1 for c in range(cols)] for r in range(rows)]
        log_s = sum(s[r][c] * (evidence[r, c].item() + start * ((r == 0) + (c == 0)))
                    for r in range(rows) for c in range(cols))
        log_s += sum(log_h[s[r][c]][s[r][c + 1]] for r in range(rows) for c in range(cols - 1))
        log_s += sum(log_v[s[r][c]][s[r + 1][c]] for r in range(rows - 1) for c in range(cols))
        for t_bits in range(2 ** rows):
            t = [(t_bits >> r) & 1 for r in range(rows)]
            if any(s[r][c] and not t[r] for r in range(rows) for c in range(cols)):
                continue  # phi(t = 0, s = 1) = 0
            weight = math.exp(log_s + sum(log_p[r][t[r]] for r in range(rows)))
            total += weight
            node_on += weight * torch.tensor(s, dtype=torch.float64)
            neuron_on += weight * torch.tensor(t, dtype=torch.float64)
    return node_on / total, neuron_on / total


@pytest.mark.parametrize("shape", [(2, 3), (3, 2), (1, 5)])
@pytest.mark.parametrize("cost", [0.0, 0.7])
def test_exact_enumeration_with_neurons_matches_explicit_neuron_states(shape, cost):
    """Summing each neuron out (factor p + (1 - p) [row empty]) equals enumerating the neurons, with and without
    a per-weight neuron cost."""
    prior = MarkovGridPrior(p01=0.2, p11=0.7, p_start=0.4, p_neuron=0.15, neuron_cost=cost)
    evidence = _evidence(shape, 3)
    nodes, neurons = _brute_force_with_neurons(evidence, prior)
    assert torch.allclose(exact_grid_marginals(evidence, prior), nodes, atol=1e-12, rtol=0)
    assert torch.allclose(exact_neuron_marginals(evidence, prior), neurons, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(3, 5), (4, 4), (1, 9)])
@pytest.mark.parametrize("p_neuron, cost", [(0.01, 0.0), (0.3, 0.0), (0.9, 0.0), (0.5, 0.4)])
def test_neuron_bp_is_exact_when_the_rows_are_stars(shape, p_neuron, cost):
    """With p01 = p11 in both directions every chain factor is a unary one, so each row with its neuron is a
    star (a tree) and BP must equal exact enumeration, for the nodes and the neurons."""
    prior = MarkovGridPrior(p01=0.3, p11=0.3, p_start=0.4, p01_vertical=0.6, p11_vertical=0.6, p_neuron=p_neuron,
                            neuron_cost=cost)
    evidence = _evidence((5, *shape), 4)
    result = grid_bp(evidence, prior, iterations=50, tol=1e-12)
    assert result.messages.shape == (5, 5, *shape) and result.max_change < 1e-12
    assert torch.allclose(torch.sigmoid(result.marginal_log_odds), exact_grid_marginals(evidence, prior),
                          atol=1e-8, rtol=0)
    assert torch.allclose(torch.sigmoid(result.neuron_log_odds), exact_neuron_marginals(evidence, prior),
                          atol=1e-8, rtol=0)


@pytest.mark.parametrize("shape", [(2, 3), (3, 2)])
def test_neuron_evidence_is_a_unary_factor_on_each_neuron(shape):
    """Evidence on the neurons themselves (``grid_bp(neuron_evidence=...)``, the data's evidence of
    ``TurboVBIConfig(neuron_evidence="fisher")``): the enumeration that sums the neurons out equals the one that
    enumerates them with a unary factor exp(e_r t_r), and BP is exact on star rows with it, as without it."""
    prior = MarkovGridPrior(p01=0.2, p11=0.7, p_start=0.4, p_neuron=0.15, neuron_cost=0.3)
    evidence = _evidence(shape, 5)
    row_evidence = [3.0, -2.0, 0.5][:shape[0]]
    nodes, neurons = _brute_force_with_neurons(evidence, prior, row_evidence)
    e = torch.tensor(row_evidence, dtype=torch.float64)
    assert torch.allclose(exact_grid_marginals(evidence, prior, e), nodes, atol=1e-12, rtol=0)
    assert torch.allclose(exact_neuron_marginals(evidence, prior, e), neurons, atol=1e-12, rtol=0)
    assert not torch.allclose(exact_neuron_marginals(evidence, prior), neurons, atol=1e-3, rtol=0)
    star = MarkovGridPrior(p01=0.3, p11=0.3, p_start=0.4, p01_vertical=0.6, p11_vertical=0.6, p_neuron=0.3,
                           neuron_cost=0.2)
    result = grid_bp(evidence, star, iterations=50, tol=1e-12, neuron_evidence=e)
    assert torch.allclose(torch.sigmoid(result.marginal_log_odds), exact_grid_marginals(evidence, star, e),
                          atol=1e-8, rtol=0)
    assert torch.allclose(torch.sigmoid(result.neuron_log_odds), exact_neuron_marginals(evidence, star, e),
                          atol=1e-8, rtol=0)
    with pytest.raises(ValueError, match="shape"):
        grid_bp(evidence, star, neuron_evidence=e[:1])
    with pytest.raises(ValueError, match="neuron level"):
        grid_bp(evidence, MarkovGridPrior(p01=0.3, p11=0.3), neuron_evidence=e)


@pytest.mark.parametrize("shape", [(3, 3), (4, 4), (2, 7)])
def test_neuron_bp_weak_coupling_is_near_exact(shape):
    """With chain coupling the neuron edges close loops: BP is a Bethe approximation. Largest errors measured on
    100 draws of N(0, 2^2) evidence (p01=0.4, p11=0.6): 0.08-0.10 at p_neuron = 0.05 and 0.03-0.06 at 0.3
    (nodes and neurons); the hard neuron factor makes it looser than the plain grid's 0.002."""
    for p_neuron, bound in ((0.05, 0.15), (0.3, 0.1)):
        prior = MarkovGridPrior(p01=0.4, p11=0.6, p_neuron=p_neuron)
        evidence = _evidence((100, *shape), 0)
        result = grid_bp(evidence, prior, iterations=200, damping=0.3, tol=1e-9)
        assert result.max_change < 1e-9
        nodes = (torch.sigmoid(result.marginal_log_odds) - exact_grid_marginals(evidence, prior)).abs()
        neurons = (torch.sigmoid(result.neuron_log_odds) - exact_neuron_marginals(evidence, prior)).abs()
        assert nodes.max().item() < bound and neurons.max().item() < bound
        assert nodes.median().item() < 0.01


def test_a_row_with_weak_evidence_switches_off_as_a_whole():
    """Row 0 strong evidence, row 1 weak positive evidence (+0.5 per node), row 2 negative. Without the neuron
    level the chains keep all of row 1 (every exact marginal > 0.5); with p_neuron = 0.05 all of row 1 goes
    below 0.5 (exact and BP) and its neuron is off, while row 0 and its neuron stay on."""
    evidence = torch.tensor([[3.0] * 5, [0.5] * 5, [-3.0] * 5], dtype=torch.float64)
    plain = MarkovGridPrior(p01=0.3, p11=0.6, p_start=0.4)
    assert (exact_grid_marginals(evidence, plain)[1] > 0.5).all()
    assert (torch.sigmoid(grid_bp(evidence, plain, 200, 0.3, 1e-10).marginal_log_odds)[1] > 0.5).all()
    neuron = MarkovGridPrior(p01=0.3, p11=0.6, p_start=0.4, p_neuron=0.05)
    result = grid_bp(evidence, neuron, 200, 0.3, 1e-10)
    for nodes, neurons in ((exact_grid_marginals(evidence, neuron), exact_neuron_marginals(evidence, neuron)),
                           (torch.sigmoid(result.marginal_log_odds), torch.sigmoid(result.neuron_log_odds))):
        assert (nodes[0] > 0.9).all() and (nodes[1] < 0.5).all() and (nodes[2] < 0.01).all()
        assert neurons[0] > 0.99 and neurons[1] < 0.5
    # a node's marginal can never exceed its neuron's (s = 1 needs t = 1), exactly
    exact_nodes, exact_neurons = exact_grid_marginals(evidence, neuron), exact_neuron_marginals(evidence, neuron)
    assert (exact_nodes <= exact_neurons[:, None] + 1e-12).all()


def test_the_neuron_cost_switches_off_a_sparse_row_that_a_fixed_prior_keeps():
    """Two rows of 12 weights: a dense row (all +5) and a sparse one (two strong weights, +6, the rest -4). With
    p_neuron = 0.05 alone both neurons stay on (the two strong weights outweigh log 19); a cost of 1.5 nats per
    weight (18 nats for each row) switches the sparse row off, strong weights included, and keeps the dense row, exactly
    and in BP. The cost enters only through the row length: the same rows in a wider grid pay more."""
    sparse = [6.0, 6.0] + [-4.0] * 10
    evidence = torch.tensor([[5.0] * 12, sparse], dtype=torch.float64)
    uncoupled = dict(p01=0.3, p11=0.3, p_start=0.3, p01_vertical=0.5, p11_vertical=0.5)  # rows are stars: BP exact
    fixed = MarkovGridPrior(**uncoupled, p_neuron=0.05)
    costly = MarkovGridPrior(**uncoupled, p_neuron=0.05, neuron_cost=1.5)
    assert costly.neuron_log_odds(12) == pytest.approx(fixed.neuron_log_odds() - 18.0)
    assert costly.neuron_log_odds(24) == pytest.approx(fixed.neuron_log_odds() - 36.0)
    on_fixed = torch.sigmoid(grid_bp(evidence, fixed, 50, 0.0, 1e-12).neuron_log_odds)
    assert (on_fixed > 0.9).all()
    result = grid_bp(evidence, costly, 50, 0.0, 1e-12)
    on_costly = torch.sigmoid(result.neuron_log_odds)
    assert on_costly[0] > 0.99 and on_costly[1] < 0.01
    assert (torch.sigmoid(result.marginal_log_odds)[1] < 0.01).all()
    small = evidence[:, :4].contiguous()  # 2 x 4 grids are small enough to enumerate
    assert torch.allclose(torch.sigmoid(grid_bp(small, costly, 50, 0.0, 1e-12).neuron_log_odds),
                          exact_neuron_marginals(small, costly), atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="neuron_cost"):
        MarkovGridPrior(p_neuron=0.5, neuron_cost=-1.0)


def test_a_neuron_that_is_almost_surely_on_changes_nothing():
    """p_neuron -> 1: the neuron's messages vanish and the result equals the plain grid's."""
    evidence = _evidence((4, 4), 5)
    plain = grid_bp(evidence, MarkovGridPrior(), 30, 0.3, 0.0)
    almost = grid_bp(evidence, MarkovGridPrior(p_neuron=1 - 1e-12), 30, 0.3, 0.0)
    assert torch.allclose(almost.marginal_log_odds, plain.marginal_log_odds, atol=1e-9, rtol=0)
    assert plain.neuron_log_odds is None and plain.messages.shape[0] == 4


def test_neuron_warm_start_and_invalid_calls():
    prior = MarkovGridPrior(p_neuron=0.2)
    evidence = _evidence((3, 4), 6)
    first = grid_bp(evidence, prior, 200, 0.3, 1e-10)
    again = grid_bp(evidence, prior, 5, 0.3, 1e-8, messages=first.messages)
    assert again.iterations == 1
    assert torch.allclose(again.marginal_log_odds, first.marginal_log_odds, atol=1e-8, rtol=0)
    with pytest.raises(ValueError, match="shape"):
        grid_bp(evidence, prior, messages=torch.zeros(4, 3, 4))
    with pytest.raises(ValueError, match="p_neuron"):
        exact_neuron_marginals(evidence, MarkovGridPrior())
    with pytest.raises(ValueError, match="p_neuron must be a probability"):
        MarkovGridPrior(p_neuron=1.0)
    with pytest.raises(ValueError, match="no neuron level"):
        MarkovGridPrior().neuron_log_odds()
