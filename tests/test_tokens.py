"""Transformer blocks: Bayesian Linear layers on token inputs [B, T, D], filter_fn / skip, the layers kept plain.

The sampling tests compare the layer's draws with a posterior sampled explicitly (z and W drawn from q, one draw
per example, shared by its tokens) and with the closed-form moments written out here, independently of the layer
code. Tolerances are standard errors estimated from the samples themselves (fourth moments for the variances),
so the heavy-tailed product z * w does not need a Gaussian assumption.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayescomp import bayesify
from bayescomp.compress import CompressConfig, compress
from bayescomp.compress.chain import UnsupportedModelError
from bayescomp.compress.graph import DependencyGraph
from bayescomp.objective import collect_kl, variational_loss
from bayescomp.priors import PRIORS, LinearGroupNJ
from bayescomp.priors.base import bayesian_layers, deterministic_mode
from bayescomp.priors.sparse_vd import LinearSparseVD

N_DRAWS = 40_000
SIGMAS = 5.0  # a test fails only beyond 5 standard errors: about 6e-7 per comparison by chance


def _tokens(seed: int = 0) -> torch.Tensor:
    """One example of T = 3 tokens, D = 4 features; tokens 0 and 1 point the same way, so they share z strongly."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, generator=g)
    x[1] = 0.8 * x[0]
    return x


def _gnj_layer() -> LinearGroupNJ:
    torch.manual_seed(0)
    layer = LinearGroupNJ(4, 3)
    with torch.no_grad():  # large group noise, moderate weight and bias noise
        layer.weight_mu.copy_(torch.tensor([[0.9, -0.6, 0.4, 0.7], [0.5, 0.8, -0.9, 0.3], [-0.4, 0.6, 0.7, -0.8]]))
        layer.weight_log_sigma2.fill_(-3.0)
        layer.z_mu.copy_(torch.tensor([1.0, 0.7, 1.2, 0.9]))
        layer.z_log_sigma2.copy_(torch.tensor([-1.0, -0.5, -1.5, -0.8]))
        layer.bias_mu.copy_(torch.tensor([0.1, -0.2, 0.3]))
        layer.bias_log_sigma2.fill_(-4.0)
    return layer


def _svd_layer() -> LinearSparseVD:
    torch.manual_seed(0)
    layer = LinearSparseVD(4, 3)
    with torch.no_grad():
        layer.weight_mu.copy_(torch.tensor([[0.9, -0.6, 0.4, 0.7], [0.5, 0.8, -0.9, 0.3], [-0.4, 0.6, 0.7, -0.8]]))
        layer.weight_log_sigma2.fill_(-2.0)  # log alpha <= 0.3 < threshold 3: every weight kept
        layer.bias_mu.copy_(torch.tensor([0.1, -0.2, 0.3]))
    assert bool(layer.weight_keep_mask().all())
    return layer


def _explicit_draws(layer: nn.Module, x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws of the layer's output on one example x (T, D), sampling from q directly: per draw one z (for the
    group prior), one weight matrix and one bias, all shared by the example's tokens. Shape (n, T, out)."""
    out_f, in_f = layer.weight_mu.shape
    w = layer.weight_mu + (0.5 * layer.weight_log_sigma2).exp() * torch.randn(n, out_f, in_f, generator=generator)
    if hasattr(layer, "z_mu"):
        z = layer.z_mu + (0.5 * layer.z_log_sigma2).exp() * torch.randn(n, 1, in_f, generator=generator)
        w = w * z
    b = layer.bias_mu.expand(n, out_f)
    if getattr(layer, "bias_log_sigma2", None) is not None:
        b = b + (0.5 * layer.bias_log_sigma2).exp() * torch.randn(n, out_f, generator=generator)
    return torch.einsum("td,nod->nto", x, w) + b[:, None, :]


def _analytic_moments(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token mean and variance (T, out) of y = sum_i x_i z_i w_oi + b_o under q, written out:
    E[y] = sum_i x_i E[z_i] mu_oi + mu_b,  Var[y] = sum_i x_i² (E[z_i²] E[w_oi²] - E[z_i]² mu_oi²) + sigma_b²."""
    mu, s2 = layer.weight_mu.double(), layer.weight_log_sigma2.double().exp()
    if hasattr(layer, "z_mu"):
        ez, ez2 = layer.z_mu.double(), layer.z_mu.double() ** 2 + layer.z_log_sigma2.double().exp()
    else:
        ez, ez2 = torch.ones(mu.shape[1], dtype=torch.float64), torch.ones(mu.shape[1], dtype=torch.float64)
    x = x.double()
    mean = x @ (mu * ez).T + layer.bias_mu.double()
    var = (x**2) @ (ez2 * (mu**2 + s2) - ez**2 * mu**2).T
    if getattr(layer, "bias_log_sigma2", None) is not None:
        var = var + layer.bias_log_sigma2.double().exp()
    return mean, var


def _moment_errors(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample mean and variance over dim 0 with their standard errors (the variance's from the fourth moment)."""
    samples = samples.double()
    n = samples.shape[0]
    mean, var = samples.mean(0), samples.var(0)
    m4 = ((samples - mean) ** 4).mean(0)
    return mean, var, (var / n).sqrt(), ((m4 - var**2) / n).sqrt()


def _layer_draws(layer: nn.Module, x: torch.Tensor, fused: bool, seed: int) -> torch.Tensor:
    """N_DRAWS examples, each the same (T, D) tokens: one independent draw of the layer per example."""
    layer.fused = fused
    torch.manual_seed(seed)
    with torch.no_grad():
        return layer(x.expand(N_DRAWS, *x.shape))


@pytest.mark.parametrize("make_layer", [_gnj_layer, _svd_layer], ids=["gnj", "svd"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_token_output_moments_match_the_posterior_sampled_explicitly(make_layer, fused):
    layer, x = make_layer(), _tokens()
    draws = _layer_draws(layer, x, fused, seed=1)
    assert draws.shape == (N_DRAWS, 3, 3)
    mean, var, se_mean, se_var = _moment_errors(draws)
    with torch.no_grad():
        explicit = _explicit_draws(layer, x, N_DRAWS, torch.Generator().manual_seed(2))
        analytic_mean, analytic_var = _analytic_moments(layer, x)
    ref_mean, ref_var, ref_se_mean, ref_se_var = _moment_errors(explicit)
    # the explicit sampler and the closed form agree (checks the reference itself)
    assert torch.all((ref_mean - analytic_mean).abs() < SIGMAS * ref_se_mean)
    assert torch.all((ref_var - analytic_var).abs() < SIGMAS * ref_se_var)
    # the layer against both
    assert torch.all((mean - analytic_mean).abs() < SIGMAS * se_mean)
    assert torch.all((var - analytic_var).abs() < SIGMAS * se_var)
    assert torch.all((mean - ref_mean).abs() < SIGMAS * (se_mean**2 + ref_se_mean**2).sqrt())
    assert torch.all((var - ref_var).abs() < SIGMAS * (se_var**2 + ref_se_var**2).sqrt())


def _token_covariance(draws: torch.Tensor, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Covariance over draws between tokens a and b of every output unit, with its standard error."""
    draws = draws.double()
    products = (draws[:, a] - draws[:, a].mean(0)) * (draws[:, b] - draws[:, b].mean(0))
    return products.mean(0), (products.var(0) / draws.shape[0]).sqrt()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_group_scale_is_shared_by_the_tokens_of_an_example(fused):
    """With z shared over tokens and output noise per element (local reparameterisation), two tokens x, x' of one
    example covary only through z: Cov(y_o, y'_o) = sum_i x_i x'_i mu_oi² Var(z_i). A z drawn per token would give
    zero; this is an independent check of the sharing."""
    layer, x = _gnj_layer(), _tokens()
    draws = _layer_draws(layer, x, fused, seed=3)
    with torch.no_grad():
        expected = (x[0] * x[1]).double() @ (layer.weight_mu.double() ** 2 * layer.z_log_sigma2.double().exp()).T
    cov, se = _token_covariance(draws, 0, 1)
    assert torch.all(expected.abs() > 20 * se)  # the set-up makes the shared-z covariance large
    assert torch.all(cov.abs() > SIGMAS * se)  # non-zero
    assert torch.all((cov - expected).abs() < SIGMAS * se)  # and the value the shared z predicts


def test_per_weight_prior_tokens_do_not_covary():
    """Sparse VD has no group scale: the output noise is per element, so tokens of one example are independent."""
    draws = _layer_draws(_svd_layer(), _tokens(), True, seed=4)
    cov, se = _token_covariance(draws, 0, 1)
    assert torch.all(cov.abs() < SIGMAS * se)


def _layer_of(prior: str) -> nn.Module:
    torch.manual_seed(5)
    return PRIORS[prior].from_linear(nn.Linear(6, 4), PRIORS[prior].config_cls())


def _step(layer: nn.Module, x: torch.Tensor, fused: bool):
    layer.fused = fused
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    torch.manual_seed(11)
    out = layer(x)
    (out.square().sum() + layer.kl_divergence()).backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("prior", sorted(PRIORS))
@pytest.mark.parametrize("shape", [(5, 3, 6), (2, 3, 2, 6)], ids=["BTD", "rank4"])
def test_fused_equals_unfused_on_token_inputs(prior, shape):
    """Same seed, same draws: outputs and all gradients agree for inputs of rank > 2 (the fused path repeats an
    example's z over its rows; the unfused path broadcasts it)."""
    layer, x = _layer_of(prior), torch.randn(*shape)
    out_f, gx_f, grads_f = _step(layer, x, fused=True)
    out_u, gx_u, grads_u = _step(layer, x, fused=False)
    assert out_f.shape == (*shape[:-1], 4)
    assert torch.allclose(out_f, out_u, rtol=1e-5, atol=1e-6)
    assert torch.allclose(gx_f, gx_u, rtol=1e-4, atol=1e-5)
    assert grads_f.keys() == grads_u.keys() and grads_f
    for name in grads_f:
        scale = grads_u[name].abs().max().clamp_min(1.0)
        assert (grads_f[name] - grads_u[name]).abs().max() <= 1e-5 * scale, name


@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_one_dimensional_input_is_one_example(prior):
    layer = _layer_of(prior)
    x = torch.randn(6)
    for fused in (True, False):
        layer.fused = fused
        assert layer(x).shape == (4,)
    with deterministic_mode(layer):
        torch.testing.assert_close(layer(x), layer(x[None])[0])


# ---------------------------------------------------------------------------------------------- filter_fn and skip
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.body = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5))
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).flatten(1)[:, :8]
        return self.head(self.body(h))


def _plain_layers_have_no_kl(model: nn.Module, plain: list[nn.Module]) -> None:
    """The model's KL is the sum of its Bayesian layers' and reaches no parameter of the plain layers."""
    model.zero_grad(set_to_none=True)
    kl = collect_kl(model)
    torch.testing.assert_close(kl, sum(layer.kl_divergence() for _, layer in bayesian_layers(model)))
    kl.backward()
    for layer in plain:
        assert all(p.grad is None for p in layer.parameters())


@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_filter_fn_leaves_the_rejected_layers_plain(prior):
    seen = []

    def keep_head_plain(module: nn.Module, name: str) -> bool:
        seen.append((name, type(module)))
        return name != "head"

    plain = _Net()
    model = bayesify(plain, prior, filter_fn=keep_head_plain)
    assert seen == [("conv", nn.Conv2d), ("body.0", nn.Linear), ("body.2", nn.Linear), ("head", nn.Linear)]
    assert type(model.head) is nn.Linear and torch.equal(model.head.weight, plain.head.weight)
    assert [name for name, _ in bayesian_layers(model)] == ["conv", "body.0", "body.2"]
    assert model(torch.rand(2, 1, 4, 4)).shape == (2, 3)
    _plain_layers_have_no_kl(model, [model.head])


def test_skip_leaves_a_subtree_untouched_and_may_hold_unknown_modules():
    plain = _Net()
    plain.body.append(nn.LSTM(5, 5))  # unknown weighted module, inside the skipped subtree: not refused
    model = bayesify(plain, "gnj", skip=["body"])
    assert [type(m) for m in model.body] == [nn.Linear, nn.ReLU, nn.Linear, nn.LSTM]
    assert [name for name, _ in bayesian_layers(model)] == ["conv", "head"]
    _plain_layers_have_no_kl(model, [model.body])
    # a skipped name covers that module and its descendants, nothing beside it
    model = bayesify(_Net(), "svd", skip=["body.0"])
    assert type(model.body[0]) is nn.Linear and type(model.body[2]) is not nn.Linear


def test_skip_and_unknown_layers_are_refused_clearly():
    with pytest.raises(ValueError, match=r"skip names \['bdy'\] match no module or parameter"):
        bayesify(_Net(), "gnj", skip=["bdy"])
    with pytest.raises(TypeError, match="skip must be a list"):
        bayesify(_Net(), "gnj", skip="body")
    with_lstm = _Net()
    with_lstm.body.append(nn.LSTM(5, 5))
    with pytest.raises(TypeError, match=r"'body.3' \(LSTM\) has parameters.*skip=\['body.3'\]"):
        bayesify(with_lstm, "gnj")


def test_skip_may_name_bare_parameters_of_a_module_whose_children_are_converted():
    """A ViT keeps cls_token / pos_embed as parameters of the model itself: skipping them by name keeps them plain
    while its Linear layers still become Bayesian (skipping the model would skip everything)."""

    class WithToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1))

    refused = r"'' \(WithToken\) has parameters \['cls_token'\].*skip=\['cls_token'\]"
    with pytest.raises(TypeError, match=refused):
        bayesify(WithToken(), "gnj")
    model = bayesify(WithToken(), "gnj", skip=["cls_token"])
    assert [name for name, _ in bayesian_layers(model)] == ["fc"]
    assert model(torch.randn(2, 3, 4)).shape == (2, 4, 2)


def test_filter_fn_may_leave_a_subclass_with_its_own_forward_plain():
    class Scaled(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    with pytest.raises(TypeError, match=r"'0' \(Scaled\) subclasses Linear"):
        bayesify(nn.Sequential(Scaled(4, 4), nn.Linear(4, 2)), "gnj")
    model = bayesify(nn.Sequential(Scaled(4, 4), nn.Linear(4, 2)), "gnj",
                     filter_fn=lambda module, name: type(module) is nn.Linear)
    assert type(model[0]) is Scaled and [name for name, _ in bayesian_layers(model)] == ["1"]


# ------------------------------------------------------------------------------------------ a transformer block
class _Block(nn.Module):
    """Embedding, pre-norm self-attention, pre-norm MLP with GELU, mean-pooled classification head."""

    def __init__(self, vocab: int = 20, width: int = 16, heads: int = 2, hidden: int = 32, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, width))
        self.head = nn.Linear(width, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


def test_transformer_block_keeps_attention_and_norms_plain():
    model = bayesify(_Block(), "gnj")
    assert [name for name, _ in bayesian_layers(model)] == ["mlp.0", "mlp.3", "head"]
    assert type(model.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear  # read by MHA itself
    assert type(model.norm1) is nn.LayerNorm and type(model.embed) is nn.Embedding


def test_transformer_block_trains_with_only_the_chosen_layers_bayesian():
    torch.manual_seed(0)
    plain = _Block()
    model = bayesify(plain, "gnj", filter_fn=lambda module, name: name.startswith("mlp."))
    assert [name for name, _ in bayesian_layers(model)] == ["mlp.0", "mlp.3"]
    assert type(model.head) is nn.Linear
    tokens, labels = torch.randint(0, 20, (8, 5)), torch.randint(0, 3, (8,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    head_before, attn_before = model.head.weight.detach().clone(), model.attn.in_proj_weight.detach().clone()
    model.train()
    for _ in range(5):
        optimizer.zero_grad()
        loss, nll, kl = variational_loss(model(tokens), labels, model, n_train=100)
        assert torch.isfinite(loss)
        torch.testing.assert_close(kl, model.mlp[0].kl_divergence() + model.mlp[3].kl_divergence())
        loss.backward()
        optimizer.step()
        for _, layer in bayesian_layers(model):
            layer.apply_constraints()
    _plain_layers_have_no_kl(model, [model.head, model.attn, model.norm1, model.norm2, model.embed])
    # the plain layers are trained as usual
    assert not torch.equal(model.head.weight, head_before)
    assert not torch.equal(model.attn.in_proj_weight, attn_before)
    with deterministic_mode(model):
        assert torch.equal(model(tokens), model(tokens))


# ------------------------------------------------------------------------------ graph compression of the block
def test_graph_compression_prunes_only_the_mlp_hidden_units_of_a_block():
    """The residual stream, the attention and the norms are kept whole; the MLP hidden units whose group scale the
    posterior calls noise are removed, and the physically smaller model computes what the masked model computes."""
    torch.manual_seed(0)
    model = bayesify(_Block(), "gnj")
    with torch.no_grad():  # hidden units 0-9 (inputs of mlp.3) carry only noise: log alpha ~ 5 > threshold 0
        model.mlp[3].z_log_sigma2[:10] = 5.0
    tokens = torch.randint(0, 20, (4, 5))
    with deterministic_mode(model):
        graph = DependencyGraph(model, tokens)
        assert [group.root for group in graph.prunable_groups] == ["mlp.0"]
        keep = graph.keep_from_thresholds([0.0])
        assert keep[0].tolist() == [False] * 10 + [True] * 22
        small = graph.prune(keep)
        with graph.masked(model, keep):
            reference = model(tokens)
        result = compress(model, None, CompressConfig(thresholds=0.0), example_input=tokens)
    assert (small.mlp[0].out_features, small.mlp[3].in_features, small.attn.embed_dim) == (22, 22, 16)
    torch.testing.assert_close(small(tokens), reference, atol=1e-5, rtol=1e-5)
    assert result.model.mlp[0].out_features == 22
    torch.testing.assert_close(result.model(tokens), reference, atol=1e-5, rtol=1e-5)


def test_graph_refuses_a_kept_plain_module_the_forward_does_not_call():
    class ReadsTheTable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.table = nn.Embedding(10, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + self.table.weight[0]

    with pytest.raises(UnsupportedModelError, match="'table' \\(Embedding\\) is not called"):
        DependencyGraph(bayesify(ReadsTheTable(), "gnj"), torch.rand(2, 4))
