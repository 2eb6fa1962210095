"""Density-propagating layers (mean + covariance instead of weight samples), after Dera et al. 2019 and
Carannante, Dera, Rasool, Bouaynaya, "Self-Compression in Bayesian Neural Networks", MLSP 2020.

Weights: each output unit / conv kernel ``k`` has an isotropic Gaussian posterior ``W_k ~ N(M_k, s_k I)``
with one variance ``s_k = softplus(rho_k)`` per kernel, independent across kernels; biases are deterministic.
The prior is ``N(0, I)``. Every layer's ``forward`` takes and returns :class:`Moments` (see
:mod:`bayescomp.selfcompress.moments` for the two covariance modes).

Exactness (input independent of the weights):

* :class:`DensityLinear`: mean and covariance are exact for any Gaussian (indeed any) input.
* :class:`DensityConv2d`: the mean is exact; the covariance is exact for a deterministic input
  (``s_k X X^T``, ``X`` = im2col of the input). For a random input it follows the authors' simplification,
  which keeps only the input *variances* in the patch terms, so it drops (a) ``M_k``-weighted input
  covariances between different patch entries, (b) the off-diagonal ``s_k * sum_o Cov(x_{p+o}, x_{q+o})``
  between overlapping patches, and (c) the output covariance between different output channels. Its
  diagonal (= diag mode) is exact when the input entries are mutually independent.
* Activations and softmax are first-order Taylor (exact only in the small-variance limit); max-pool picks
  the moments at the argmax of the mean (no extra variance for the max of random variables).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayescomp.selfcompress.moments import Moments, check_cov_size

DEFAULT_RHO_INIT = -2.2


class DensityModule(nn.Module):
    """Base: a label for error messages and a per-layer full-covariance memory ceiling."""

    def __init__(self, max_full_cov_bytes: int | None = None) -> None:
        super().__init__()
        self.max_full_cov_bytes = max_full_cov_bytes
        self.label = type(self).__name__

    def _guard(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        check_cov_size(self.label, shape, dtype, self.max_full_cov_bytes)


class _BayesWeights(DensityModule):
    """Shared weight posterior ``N(M_k, softplus(rho_k) I)`` and its KL to ``N(0, I)``."""

    weight_mu: nn.Parameter
    weight_rho: nn.Parameter

    def _init_weights(self, shape: tuple[int, ...], bias: bool, rho_init: float) -> None:
        self.weight_mu = nn.Parameter(torch.randn(shape) * 0.05)  # authors' TF2 init N(0, 0.05^2)
        self.weight_rho = nn.Parameter(torch.full((shape[0],), float(rho_init)))
        self.bias = nn.Parameter(torch.zeros(shape[0])) if bias else None

    @property
    def sigma2(self) -> Tensor:
        """Per-kernel weight variance ``softplus(rho)`` (the authors' code softplus-es to the variance)."""
        return F.softplus(self.weight_rho)

    def kl_divergence(self) -> Tensor:
        """``sum_k 0.5 (d s_k + ||M_k||^2 - d - d log s_k)``: KL(q || N(0, I)) summed, unscaled."""
        s2 = self.sigma2
        d = self.weight_mu[0].numel()
        sq = self.weight_mu.pow(2).flatten(1).sum(1)
        return 0.5 * (d * s2 + sq - d - d * torch.log(s2)).sum()


class DensityLinear(_BayesWeights):
    """Linear layer with ``h_j ~ N(m_j, s_j I)``: exact moments, ``mean = x M^T + b`` and
    ``cov = M S M^T + diag_j(s_j (tr S + mu^T mu))`` (Dera et al. 2019, Eq. for the FC layer).

    A map input ``(N, C, H, W)`` is flattened in (c, h, w) order; in full mode its block-diagonal
    covariance is used directly as ``M S M^T = sum_c M_c S_c M_c^T``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 rho_init: float = DEFAULT_RHO_INIT, max_full_cov_bytes: int | None = None) -> None:
        super().__init__(max_full_cov_bytes)
        self.in_features, self.out_features = in_features, out_features
        self._init_weights((out_features, in_features), bias, rho_init)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def forward(self, x: Moments) -> Moments:
        mu = x.mean.flatten(1)
        m, s2 = self.weight_mu, self.sigma2
        mean = F.linear(mu, m, self.bias)
        mu_sq = mu.pow(2).sum(1, keepdim=True)
        if x.mode == "diag":
            var_in = x.diagonal().flatten(1)
            var = F.linear(var_in, m.pow(2)) + s2 * (var_in.sum(1, keepdim=True) + mu_sq)
            return Moments(mean=mean, var=var)
        n, o = mu.shape[0], self.out_features
        self._guard((n, o, o), mean.dtype)
        assert x.cov is not None
        if x.is_map:
            cov = self._block_sandwich(x.cov)
        else:
            cov = m @ x.cov @ m.T
        trace = torch.diagonal(x.cov, dim1=-2, dim2=-1).flatten(1).sum(1, keepdim=True)
        cov = cov + torch.diag_embed(s2 * (trace + mu_sq))
        return Moments(mean=mean, cov=cov)

    def _block_sandwich(self, cov: Tensor) -> Tensor:
        """``sum_c M_c S_c M_c^T`` for a block-diagonal (per-channel) input covariance ``(N, C, P, P)``."""
        n, c, p, _ = cov.shape
        if c * p != self.in_features:
            raise ValueError(f"{self.label}: input has {c}x{p} features, layer expects {self.in_features}")
        self._guard((n, c, self.out_features, p), cov.dtype)
        m_c = self.weight_mu.view(self.out_features, c, p).transpose(0, 1)  # (C, O, P)
        return (m_c @ cov @ m_c.transpose(1, 2)).sum(1)


class DensityConv2d(_BayesWeights):
    """2-D convolution with one isotropic Gaussian per kernel (Dera et al. 2019, conv-layer propagation).

    mean = conv(mu, M). Diag: ``var_k = conv(var, M_k^2) + s_k conv(var + mu^2, 1)``. Full, per output
    channel over output positions: ``S_k = diag_p(conv(var, M_k^2) + s_k conv(var, 1)) + s_k G G^T`` with
    ``G = unfold(mu)``; exact for a deterministic input, the authors' approximation otherwise (module doc).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, bias: bool = True,
                 rho_init: float = DEFAULT_RHO_INIT, max_full_cov_bytes: int | None = None) -> None:
        super().__init__(max_full_cov_bytes)
        self.kernel_size = nn.modules.utils._pair(kernel_size)
        self.stride = nn.modules.utils._pair(stride)
        self.padding = nn.modules.utils._pair(padding)
        self.in_channels, self.out_channels = in_channels, out_channels
        self._init_weights((out_channels, in_channels, *self.kernel_size), bias, rho_init)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding)

    def forward(self, x: Moments, full: bool | None = None) -> Moments:
        """``full``: the output's mode (default: the input's). A full output from a diag input treats the input
        entries as independent, exact for a point mass (which then needs no ``(N, C, P, P)`` zero covariance)."""
        if not x.is_map:
            raise ValueError(f"{self.label} needs an (N, C, H, W) input, got {tuple(x.mean.shape)}")
        mu, var_in = x.mean, x.diagonal()
        s2 = self.sigma2.view(1, -1, 1, 1)
        mean = self._conv(mu, self.weight_mu, self.bias)
        if not (x.mode == "full" if full is None else full):
            var = self._conv(var_in, self.weight_mu.pow(2)) + s2 * self._conv(var_in + mu.pow(2), self._ones(mu))
            return Moments(mean=mean, var=var)
        n, o, h, w = mean.shape
        self._guard((n, o, h * w, h * w), mean.dtype)
        patches = F.unfold(mu, self.kernel_size, padding=self.padding, stride=self.stride)  # (N, d, P)
        gram = patches.transpose(1, 2) @ patches  # (N, P, P)
        diag = self._full_diagonal(var_in, s2).flatten(2)  # (N, O, P)
        cov = s2.view(1, -1, 1, 1) * gram.unsqueeze(1) + torch.diag_embed(diag)
        return Moments(mean=mean, cov=cov)

    def _ones(self, like: Tensor) -> Tensor:
        return like.new_ones((1, self.in_channels, *self.kernel_size))

    def _full_diagonal(self, var_in: Tensor, s2: Tensor) -> Tensor:
        """The diagonal part of the full-mode output covariance: ``conv(var, M_k^2) + s_k conv(var, 1)``."""
        return self._conv(var_in, self.weight_mu.pow(2)) + s2 * self._conv(var_in, self._ones(var_in))

    def forward_pooled(self, x: Moments, activation: DensityActivation, pool: DensityMaxPool2d,
                       full: bool | None = None) -> Moments:
        """``pool(activation(self(x)))`` in full mode without the ``(N, C, P, P)`` covariance of the conv output.

        The max-pool keeps the covariance only between its argmax positions, and the activation scales it
        elementwise, so the conv covariance is needed only there: ``s_k G_k^T G_k + diag`` with ``G_k`` the input
        patches at channel ``k``'s argmax positions. Same result as the three layers in turn (tested), with
        ``(N, C, Q, Q)`` tensors instead of ``(N, C, P, P)`` (``Q = P / 4`` for a 2x2 pool): the full mode of the
        self-compression CNN then trains ~15x faster (measured on 14x14 inputs, N = 25).
        """
        if not (x.mode == "full" if full is None else full):
            return pool(activation(self(x, full=False)))
        if not x.is_map:
            raise ValueError(f"{self.label} needs an (N, C, H, W) input, got {tuple(x.mean.shape)}")
        mu, var_in = x.mean, x.diagonal()
        s2 = self.sigma2.view(1, -1, 1, 1)
        pre = self._conv(mu, self.weight_mu, self.bias)
        mean, idx = F.max_pool2d(activation.fn(pre), pool.kernel_size, pool.stride, pool.padding,
                                 return_indices=True)
        n, o, q = idx.shape[0], idx.shape[1], idx.shape[2] * idx.shape[3]
        flat_idx = idx.flatten(2)  # (N, O, Q) indices into the conv output's H*W
        diag = self._full_diagonal(var_in, s2).flatten(2).gather(2, flat_idx)
        slope = activation.derivative(pre).flatten(2).gather(2, flat_idx)
        patches = F.unfold(mu, self.kernel_size, padding=self.padding, stride=self.stride)  # (N, d, P)
        self._guard((n, o, q, patches.shape[1]), mean.dtype)
        self._guard((n, o, q, q), mean.dtype)
        rows = torch.arange(n, device=mu.device).view(n, 1, 1)
        picked = patches.transpose(1, 2)[rows, flat_idx]  # (N, O, Q, d): channel k's patches at its argmaxes
        same = flat_idx.unsqueeze(-1) == flat_idx.unsqueeze(-2)  # overlapping windows can share an argmax
        cov = s2 * (picked @ picked.transpose(2, 3)) + same.to(diag.dtype) * diag.unsqueeze(-1)
        return Moments(mean=mean, cov=cov * slope.unsqueeze(-1) * slope.unsqueeze(-2))


class DensityActivation(DensityModule):
    """Elementwise ``f`` by first-order Taylor: ``mean = f(mu)``, ``var * f'(mu)^2`` or ``S * g g^T``.

    ``derivative`` maps the input mean to ``f'(mu)`` in closed form (no autograd), as in the eVI code.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], derivative: Callable[[Tensor], Tensor],
                 max_full_cov_bytes: int | None = None) -> None:
        super().__init__(max_full_cov_bytes)
        self.fn, self.derivative = fn, derivative

    def forward(self, x: Moments) -> Moments:
        mean = self.fn(x.mean)
        g = self.derivative(x.mean)
        if x.mode == "diag":
            return Moments(mean=mean, var=x.diagonal() * g.pow(2))
        assert x.cov is not None
        g = g.flatten(2) if x.is_map else g  # (N, C, P) or (N, D)
        return Moments(mean=mean, cov=x.cov * g.unsqueeze(-1) * g.unsqueeze(-2))


def _relu_derivative(m: Tensor) -> Tensor:
    return (m > 0).to(m.dtype)


class DensityReLU(DensityActivation):
    """ReLU with gradient ``1[mu > 0]`` (the eVI rule; exact when no mass crosses the kink)."""

    def __init__(self, max_full_cov_bytes: int | None = None) -> None:
        super().__init__(torch.relu, _relu_derivative, max_full_cov_bytes)


def _tanh_derivative(m: Tensor) -> Tensor:
    return 1.0 - torch.tanh(m).pow(2)


def _sigmoid_derivative(m: Tensor) -> Tensor:
    s = torch.sigmoid(m)
    return s * (1.0 - s)


class DensityTanh(DensityActivation):
    """Tanh with ``f' = 1 - tanh^2``."""

    def __init__(self, max_full_cov_bytes: int | None = None) -> None:
        super().__init__(torch.tanh, _tanh_derivative, max_full_cov_bytes)


class DensitySigmoid(DensityActivation):
    """Sigmoid with ``f' = s (1 - s)``."""

    def __init__(self, max_full_cov_bytes: int | None = None) -> None:
        super().__init__(torch.sigmoid, _sigmoid_derivative, max_full_cov_bytes)


class DensityMaxPool2d(DensityModule):
    """Max-pool of the mean; the (co)variances are gathered at the argmax positions (eVI rule)."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, max_full_cov_bytes: int | None = None) -> None:
        super().__init__(max_full_cov_bytes)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def forward(self, x: Moments) -> Moments:
        if not x.is_map:
            raise ValueError(f"{self.label} needs an (N, C, H, W) input, got {tuple(x.mean.shape)}")
        mean, idx = F.max_pool2d(x.mean, self.kernel_size, self.stride, self.padding, return_indices=True)
        flat_idx = idx.flatten(2)  # (N, C, Q) indices into H*W
        if x.mode == "diag":
            var = x.diagonal().flatten(2).gather(2, flat_idx).view_as(mean)
            return Moments(mean=mean, var=var)
        assert x.cov is not None
        n, c, q = flat_idx.shape
        p = x.cov.shape[-1]
        self._guard((n, c, q, p), x.cov.dtype)
        rows = x.cov.gather(2, flat_idx.unsqueeze(-1).expand(n, c, q, p))
        cov = rows.gather(3, flat_idx.unsqueeze(2).expand(n, c, q, q))
        return Moments(mean=mean, cov=cov)


class DensityFlatten(DensityModule):
    """``(N, C, H, W) -> (N, C*H*W)``; in full mode the per-channel blocks become one dense ``(N, D, D)``
    covariance with zeros between channels (channels are independent in the eVI propagation)."""

    def forward(self, x: Moments) -> Moments:
        if not x.is_map:
            return x
        mean = x.mean.flatten(1)
        if x.mode == "diag":
            return Moments(mean=mean, var=x.diagonal().flatten(1))
        assert x.cov is not None
        n, c, p, _ = x.cov.shape
        self._guard((n, c * p, c * p), x.cov.dtype)
        dense = x.cov.new_zeros((n, c, p, c, p))
        chan = torch.arange(c, device=x.cov.device)
        dense[:, chan, :, chan, :] = x.cov.transpose(0, 1)  # advanced indexing puts the channel axis first
        return Moments(mean=mean, cov=dense.view(n, c * p, c * p))


class DensitySoftmax(DensityModule):
    """Softmax by first-order Taylor: ``p = softmax(mu)``, ``J = diag(p) - p p^T``, ``cov = J S J^T``;
    diag mode keeps ``var_i = sum_j J_ij^2 var_j`` (the diagonal of ``J diag(var) J^T``)."""

    def forward(self, x: Moments) -> Moments:
        if x.is_map:
            raise ValueError(f"{self.label} needs an (N, D) input; add a DensityFlatten before it")
        p = torch.softmax(x.mean, dim=-1)
        jac = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
        if x.mode == "diag":
            var = (jac.pow(2) @ x.diagonal().unsqueeze(-1)).squeeze(-1)
            return Moments(mean=p, var=var)
        assert x.cov is not None
        return Moments(mean=p, cov=jac @ x.cov @ jac.transpose(1, 2))


class DensityNormalize(DensityModule):
    """The zoo models' input normalisation ``(x - mean) / std`` per channel, applied to the moments: the mean is
    normalised, variances are divided by std² (a per-channel affine map, exact)."""

    def __init__(self, mean: Tensor, std: Tensor, max_full_cov_bytes: int | None = None) -> None:
        super().__init__(max_full_cov_bytes)
        self.register_buffer("mean_", mean.detach().clone().view(1, -1, 1, 1))
        self.register_buffer("std_", std.detach().clone().view(1, -1, 1, 1))

    def forward(self, x: Moments) -> Moments:
        mean = (x.mean - self.mean_) / self.std_
        if x.var is not None:
            return Moments(mean, var=x.var / self.std_.square())
        return Moments(mean, cov=x.cov / self.std_.square())  # (N, C, P, P): per-channel blocks


class DensitySequential(nn.Sequential):
    """A chain of density layers; ``forward`` accepts a plain tensor (a point mass) or :class:`Moments`."""

    def __init__(self, *layers: nn.Module, max_full_cov_bytes: int | None = None) -> None:
        super().__init__(*layers)
        for i, layer in enumerate(self):
            if not isinstance(layer, DensityModule):
                raise TypeError(f"layer {i} ({type(layer).__name__}) is not a density layer")
            layer.label = f"layer {i} ({type(layer).__name__})"
        if max_full_cov_bytes is not None:
            self.set_max_full_cov_bytes(max_full_cov_bytes)

    def set_max_full_cov_bytes(self, limit: int | None) -> None:
        """Set the full-covariance memory ceiling of every layer (``None``: env var / module default)."""
        for layer in self:
            layer.max_full_cov_bytes = limit

    def forward(self, x: Tensor | Moments, mode: str | None = None) -> Moments:  # type: ignore[override]
        """Propagate. ``mode`` ("diag", or "full") applies to a tensor input (default: the ``default_mode``
        attribute if set, else "diag"); Moments keep theirs.

        In full mode a conv -> activation -> max-pool run goes through :meth:`DensityConv2d.forward_pooled`, and a
        flatten right before a Linear is skipped (the Linear reads the per-channel blocks): the same moments
        with far smaller covariance tensors."""
        layers = list(self)
        if isinstance(x, Tensor):
            wanted = mode or getattr(self, "default_mode", "diag")
            limit = layers[0].max_full_cov_bytes if layers else None
            # a point mass into a conv needs only its (zero) variances, not a (N, C, P, P) zero covariance
            starts_with_conv = bool(layers) and isinstance(layers[0], DensityConv2d)
            x = Moments.deterministic(x, "diag" if starts_with_conv else wanted, limit)
            full = wanted == "full"
        elif mode is not None and mode != x.mode:
            raise ValueError(f"mode={mode!r} but the input Moments are in {x.mode!r} mode")
        else:
            full = x.mode == "full"
        i = 0
        while i < len(layers):
            layer = layers[i]
            following = layers[i + 1:i + 3]
            if full and isinstance(layer, DensityConv2d) and len(following) == 2 \
                    and isinstance(following[0], DensityActivation) and isinstance(following[1], DensityMaxPool2d):
                x, i = layer.forward_pooled(x, following[0], following[1], full=True), i + 3
                continue
            if full and x.is_map and isinstance(layer, DensityFlatten) and following \
                    and isinstance(following[0], DensityLinear):
                i += 1  # the Linear reads the per-channel blocks itself: no dense (N, D, D) with zero blocks
                continue
            x, i = (layer(x, full=full) if isinstance(layer, DensityConv2d) else layer(x)), i + 1
        return x

    def kl_divergence(self) -> Tensor:
        """Sum of the layers' KL terms (the caller scales it, e.g. by the data set size)."""
        terms = [m.kl_divergence() for m in self if isinstance(m, _BayesWeights)]
        return torch.stack(terms).sum() if terms else torch.zeros(())


SUPPORTED_PLAIN = ("nn.Linear, nn.Conv2d, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.MaxPool2d, nn.Flatten, nn.Softmax, "
                   "bayescomp.modules.Normalize")


def _convert_conv(conv: nn.Conv2d, rho_init: float) -> DensityConv2d:
    numeric_padding = not isinstance(conv.padding, str)
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or not numeric_padding:
        raise TypeError(f"{conv!r}: only groups=1, dilation=1, numeric zero padding are supported")
    out = DensityConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        bias=conv.bias is not None, rho_init=rho_init)
    _copy_weights(out, conv)
    return out


def _copy_weights(dst: _BayesWeights, src: nn.Linear | nn.Conv2d) -> None:
    with torch.no_grad():
        dst.weight_mu.copy_(src.weight)
        if dst.bias is not None and src.bias is not None:
            dst.bias.copy_(src.bias)


def _convert_one(module: nn.Module, rho_init: float) -> DensityModule:
    from bayescomp.modules import Normalize

    if isinstance(module, Normalize):
        return DensityNormalize(module.mean_, module.std_)
    if isinstance(module, nn.Linear):
        out = DensityLinear(module.in_features, module.out_features, module.bias is not None, rho_init)
        _copy_weights(out, module)
        return out
    if isinstance(module, nn.Conv2d):
        return _convert_conv(module, rho_init)
    simple: dict[type, type[DensityModule]] = {nn.ReLU: DensityReLU, nn.Tanh: DensityTanh,
                                               nn.Sigmoid: DensitySigmoid}
    if type(module) in simple:
        return simple[type(module)]()
    if isinstance(module, nn.MaxPool2d):
        if module.dilation not in (1, (1, 1)) or module.ceil_mode:
            raise TypeError(f"{module!r}: only dilation=1 and ceil_mode=False are supported")
        return DensityMaxPool2d(module.kernel_size, module.stride, module.padding)
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise TypeError(f"{module!r}: only Flatten(start_dim=1, end_dim=-1) is supported")
        return DensityFlatten()
    if isinstance(module, nn.Softmax):
        if module.dim not in (-1, 1):
            raise TypeError(f"{module!r}: only softmax over the last (feature) dimension is supported")
        return DensitySoftmax()
    raise TypeError(f"density_from_plain cannot convert {type(module).__name__} ({module!r}); "
                    f"supported modules: {SUPPORTED_PLAIN}")


def density_from_plain(model: nn.Sequential, rho_init: float = DEFAULT_RHO_INIT,
                       max_full_cov_bytes: int | None = None) -> DensitySequential:
    """Density twin of a plain ``nn.Sequential``: weights copied into ``weight_mu``, ``rho`` at ``rho_init``.

    Lets a trained deterministic net (e.g. the 1-conv MNIST net of Carannante et al. 2020) start eVI training
    or be evaluated with propagated uncertainty.
    """
    layers = [_convert_one(m, rho_init) for m in model]
    return DensitySequential(*layers, max_full_cov_bytes=max_full_cov_bytes).to(
        next(model.parameters(), torch.zeros(())).dtype)
