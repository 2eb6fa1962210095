"""Fused kernels of the Bayesian layers' training step: local reparameterisation with hand-written gradients.

Local reparameterisation (Kingma, Salimans, Welling, NIPS 2015, Sec. 2.3; used by Louizos et al. 2017, Sec. 3 and
Molchanov et al. 2017, Sec. 2.2) samples the pre-activation b = x W^T from its Gaussian marginal:
mean m = x mu^T + bias, variance v = x² sigma²^T + bias variance, b = m + sqrt(v + eps) noise. Written with
autograd ops this is a dozen small elementwise passes per layer, each saving its inputs; on a small network those
passes, not the two matrix products, dominate the step (profiled on LeNet-300-100's BC-GNJ step). The
Functions below do the same arithmetic with one saved ratio noise / (2 sqrt(v + eps)) and the gradients in closed
form:

    dL/dm = g,   dL/dv = g * noise / (2 sqrt(v + eps)),   dL/dlog sigma² = (dL/dv)^T x² * sigma²

``exp(log sigma²)`` is passed in detached, so the layer computes it once per step and the KL reuses it
(:class:`VarianceCache`). Under autocast the products run in the autocast dtype (bfloat16 on CPU) and everything
returned to the parameters is float32, as with :class:`bayescomp.train.AutocastForward`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

EPS = 1e-8


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the layer products run in: the autocast dtype when autocast is on for x's device (and x is a
    float32 or lower-precision input), else x's own dtype."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type) and x.dtype != torch.float64:
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


class _LinearLRT(torch.autograd.Function):
    """Linear layer under local reparameterisation with an optional group scale z on the inputs.

    ``z`` is ``None`` (no group scale), shaped (B, in) (one z per example: the inputs are scaled, x * z) or (in,)
    (one z per mini-batch: folded into the weight columns, mu * z and sigma² * z², so no input gradient is needed
    where x needs none, e.g. the first layer).
    """

    @staticmethod
    def forward(ctx, x, z, weight_mu, weight_log_sigma2, weight_sigma2, bias_mu, bias_log_sigma2, bias_sigma2,
                noise):
        dtype = compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            per_batch = z is not None and z.dim() == 1
            xs = x * z if (z is not None and not per_batch) else x
            mean_w, var_w = weight_mu, weight_sigma2
            if per_batch:
                mean_w, var_w = weight_mu * z, weight_sigma2 * z.square()
            xs_c, xs2_c = xs.to(dtype), xs.square().to(dtype)
            mean_w_c, var_w_c = mean_w.to(dtype), var_w.to(dtype)
            mean = F.linear(xs_c, mean_w_c, _cast(bias_mu, dtype))
            var = F.linear(xs2_c, var_w_c, _cast(bias_sigma2, dtype))
            std = var.add_(EPS).sqrt_()
            noise = noise.to(dtype)
            out = torch.addcmul(mean, std, noise)
            ratio = torch.div(noise, std).mul_(0.5)
        ctx.per_batch = per_batch
        ctx.save_for_backward(x, z, xs_c, xs2_c, mean_w_c, var_w_c, weight_mu, weight_sigma2, bias_sigma2, ratio)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, z, xs, xs2, mean_w, var_w, weight_mu, weight_sigma2, bias_sigma2, ratio = ctx.saved_tensors
        need = ctx.needs_input_grad
        with torch.autocast(grad.device.type, enabled=False):
            g, out_dtype = grad.to(xs.dtype), weight_mu.dtype
            g_var = g * ratio
            grads = [None] * 9
            if need[5]:
                grads[5] = g.sum(0).to(out_dtype)
            if need[6]:
                grads[6] = g_var.sum(0).to(out_dtype) * bias_sigma2
            if need[2] or need[3] or (ctx.per_batch and need[1]):
                g_mean_w = g.t().mm(xs).to(out_dtype)
                g_var_w = g_var.t().mm(xs2).to(out_dtype)
                if ctx.per_batch:
                    grads[2] = g_mean_w * z if need[2] else None
                    g_var_w_raw = g_var_w * weight_sigma2
                    grads[3] = g_var_w_raw * z.square() if need[3] else None
                    if need[1]:
                        grads[1] = (g_mean_w * weight_mu).sum(0) + 2.0 * z * g_var_w_raw.sum(0)
                else:
                    grads[2] = g_mean_w
                    grads[3] = g_var_w.mul_(weight_sigma2)
            example_z = z is not None and not ctx.per_batch
            if need[0] or (example_z and need[1]):
                g_xs = g.mm(mean_w).to(out_dtype)
                g_xs.addcmul_(xs.to(out_dtype), g_var.mm(var_w).to(out_dtype), value=2.0)
                if example_z:
                    grads[1] = g_xs * x if need[1] else None
                    grads[0] = g_xs.mul_(z) if need[0] else None
                else:
                    grads[0] = g_xs
        return tuple(grads)


def linear_lrt(x: torch.Tensor, z: torch.Tensor | None, weight_mu: torch.Tensor, weight_log_sigma2: torch.Tensor,
               weight_sigma2: torch.Tensor, bias_mu: torch.Tensor | None, bias_log_sigma2: torch.Tensor | None,
               bias_sigma2: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
    """Sampled pre-activation m + sqrt(v + eps) * noise of a Bayesian Linear layer (see the module docstring).

    ``weight_sigma2`` / ``bias_sigma2`` are ``exp`` of the log-variances, detached (gradients reach the
    log-variances through the hand-written backward); ``noise`` is standard normal, shaped like the output.
    """
    return _LinearLRT.apply(x, z, weight_mu, weight_log_sigma2, weight_sigma2.detach(), bias_mu, bias_log_sigma2,
                            None if bias_sigma2 is None else bias_sigma2.detach(), noise)


def memory_format_of(weight: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` if a conv weight was put in the NHWC layout (``module.to(memory_format=...)``), else
    ``torch.contiguous_format``. Read from the strides, so a first layer with one input channel, whose tensors are
    contiguous in both layouts, still knows which one the model uses."""
    if weight.dim() != 4:
        return torch.contiguous_format
    _, c, h, w = weight.shape
    nhwc, nchw = (h * w * c, 1, w * c, c), (c * h * w, h * w, w, 1)
    return torch.channels_last if weight.stride() == nhwc and nhwc != nchw else torch.contiguous_format


def in_layout(fmt: torch.memory_format, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` in memory format ``fmt`` (no copy for those already in it). The mean and variance products of a
    conv layer can come out in different layouts (an input with one channel is ambiguous); every elementwise op
    between mixed layouts then runs strided, measured 3-8x slower on LeNet-5's first layer."""
    return tuple(t.contiguous(memory_format=fmt) for t in tensors)


class _SampleLRT(torch.autograd.Function):
    """b = (m + sqrt(v + eps) noise) * z from the two products' outputs, for layers whose products autograd keeps
    (convolutions); ``z`` is ``None`` or broadcastable to ``m`` (per example (B, C, 1, 1) or per batch (1, C, 1, 1))."""

    @staticmethod
    def forward(ctx, mean, var, noise, z):
        std = var.add(EPS).sqrt_()
        noise = noise.to(std.dtype)
        pre = torch.addcmul(mean, std, noise)
        ratio = noise.div(std).mul_(0.5)
        ctx.z_shape = None if z is None else z.shape
        ctx.save_for_backward(ratio, z, pre if (z is not None and z.requires_grad) else None)
        return pre if z is None else pre * z.to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        ratio, z, pre = ctx.saved_tensors
        g = grad if z is None else grad * z.to(grad.dtype)
        g_z = None
        if z is not None and ctx.needs_input_grad[3]:
            dims = [i for i, (a, b) in enumerate(zip(ctx.z_shape, grad.shape)) if a == 1 and b != 1]
            g_z = (grad * pre).sum(dims, keepdim=True).to(z.dtype)
        g_mean = g if ctx.needs_input_grad[0] else None
        g_var = g * ratio if ctx.needs_input_grad[1] else None
        return g_mean, g_var, None, g_z


def sample_lrt(mean: torch.Tensor, var: torch.Tensor, noise: torch.Tensor,
               z: torch.Tensor | None = None) -> torch.Tensor:
    """(mean + sqrt(var + eps) * noise) * z with one saved ratio instead of autograd's chain of saved tensors."""
    return _SampleLRT.apply(mean, var, noise, z)


class _WeightDraw(torch.autograd.Function):
    """w = mu + sqrt(sigma²) eps, one draw of a weight tensor, with the gradient in closed form:
    dL/dmu = g, dL/dlog sigma² = g * sigma eps / 2 (one saved tensor, sigma eps)."""

    @staticmethod
    def forward(ctx, mu, log_sigma2, sigma2, eps):
        spread = sigma2.sqrt().mul_(eps)
        ctx.save_for_backward(spread)
        return mu + spread

    @staticmethod
    def backward(ctx, grad):
        (spread,) = ctx.saved_tensors
        g_log_sigma2 = grad * spread * 0.5 if ctx.needs_input_grad[1] else None
        return (grad if ctx.needs_input_grad[0] else None), g_log_sigma2, None, None


def draw_weights(mu: torch.Tensor, log_sigma2: torch.Tensor, sigma2: torch.Tensor,
                 eps: torch.Tensor) -> torch.Tensor:
    """One sample mu + sqrt(sigma²) eps of a Gaussian weight posterior (``sigma2`` = exp(log_sigma2), detached;
    the gradient reaches ``log_sigma2`` through the hand-written backward). Used by ``weight_sampling="batch"``,
    where a mini-batch shares one draw of the weights instead of sampling its pre-activations."""
    return _WeightDraw.apply(mu, log_sigma2, sigma2.detach(), eps)


K1, K2, K3 = 0.63576, 1.87320, 1.48695


class _LogUniformKL(torch.autograd.Function):
    """Sum over weights of the approximate KL to the log-uniform prior (Molchanov et al. 2017, Eq. 14, C = -k1) at
    log alpha = log sigma² - log(mu² + eps) clipped to [low, high], with the gradient in closed form:

        dKL/dlog alpha = -(k1 k3 s (1 - s) + sigmoid(-log alpha) / 2),  s = sigmoid(k2 + k3 log alpha),

    zero where the clip is active; dlog alpha/dlog sigma² = 1, dlog alpha/dmu = -2 mu / (mu² + eps). One saved
    tensor instead of autograd's chain through log, clamp, sigmoid and softplus.
    """

    @staticmethod
    def forward(ctx, mu, log_sigma2, log_theta2, low: float, high: float):
        log_alpha = log_sigma2 - log_theta2
        clipped = log_alpha.clamp(low, high)
        s = torch.sigmoid(clipped.mul(K3).add_(K2))
        kl = K1 * clipped.numel() - K1 * s.sum() + 0.5 * F.softplus(-clipped).sum()
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            slope = s.mul_(s.neg().add_(1.0)).mul_(K1 * K3).add_(torch.sigmoid(clipped.neg_()), alpha=0.5).neg_()
            slope.mul_((log_alpha >= low) & (log_alpha <= high))
            ctx.save_for_backward(slope, mu)
        return kl

    @staticmethod
    def backward(ctx, grad):
        slope, mu = ctx.saved_tensors
        grad_log_sigma2 = slope * grad if ctx.needs_input_grad[1] else None
        grad_mu = None
        if ctx.needs_input_grad[0]:
            grad_mu = mu.square().add_(EPS).reciprocal_().mul_(mu).mul_(slope).mul_(-2.0 * grad)
        return grad_mu, grad_log_sigma2, None, None, None


def kl_log_uniform_clipped(mu: torch.Tensor, log_sigma2: torch.Tensor, log_theta2: torch.Tensor, low: float,
                           high: float) -> torch.Tensor:
    """See :class:`_LogUniformKL`; ``log_theta2`` = log(mu² + eps), detached (the forward's value is reused)."""
    return _LogUniformKL.apply(mu, log_sigma2, log_theta2.detach(), low, high)


def log_theta2(mu: torch.Tensor) -> torch.Tensor:
    """log(mu² + eps), the denominator of log alpha (detached helper for :class:`VarianceCache`)."""
    return mu.square().add_(EPS).log_()


_OPTIMIZER_STEPS = [0]


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    _OPTIMIZER_STEPS[0] += 1


# fused optimisers update parameters without bumping their version counters, so the cache also keys on a count of
# optimiser steps (a global post-step hook, registered once)
register_optimizer_step_post_hook(_count_optimizer_step)


class VarianceCache:
    """exp(log sigma²) (or another elementwise function of a parameter, ``fn``) computed once per step: the
    training forward computes it, the KL after it reuses it.

    Keyed by the parameter's storage, its in-place version counter and the number of optimiser steps taken so far
    (``torch.optim`` post-step hook; the fused Adam kernel does not bump version counters), so an optimiser step, a
    clamp or a ``load_state_dict`` invalidates the entry. The training forward always recomputes it (``fresh``).
    The cached value is detached: the gradients reach the log-variance through the fused Functions, which need the
    value only.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[int, int, int, int], torch.Tensor]] = {}

    @staticmethod
    def _key(log_sigma2: torch.Tensor) -> tuple[int, int, int, int]:
        return log_sigma2.data_ptr(), log_sigma2._version, log_sigma2.numel(), _OPTIMIZER_STEPS[0]

    def get(self, name: str, log_sigma2: torch.Tensor, fresh: bool = False, fn=torch.exp) -> torch.Tensor:
        if torch.compiler.is_compiling():  # a compiled step computes it in its own fused passes, uncached
            with torch.no_grad():
                return fn(log_sigma2.detach())
        key = self._key(log_sigma2)
        entry = self._entries.get(name)
        if not fresh and entry is not None and entry[0] == key:
            return entry[1]
        with torch.no_grad():
            value = fn(log_sigma2.detach())
        self._entries[name] = (key, value)
        return value

    def put(self, name: str, log_sigma2: torch.Tensor, value: torch.Tensor) -> None:
        """Store exp(log_sigma2) that a forward computed anyway (detached)."""
        if torch.compiler.is_compiling():
            return
        self._entries[name] = (self._key(log_sigma2), value.detach())

    def __deepcopy__(self, memo) -> VarianceCache:
        return VarianceCache()
