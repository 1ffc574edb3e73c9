"""Optimizers (one kernel over the flat parameter buffer) and learning-rate schedules."""

import math

import numpy as np

from . import _checks, _config
from .errors import Unsupported
from .kernels import engine as KE
from .kernels import optim as KO


class Schedule:
    """A learning-rate schedule: ``factor(epoch)`` multiplies the optimizer's base lr."""

    def factor(self, epoch):
        raise NotImplementedError

    def config(self):
        return dict(vars(self))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class StepLR(Schedule):
    """lr * gamma ** (epoch // step_size)."""

    def __init__(self, step_size, gamma=0.1):
        self.step_size, self.gamma = int(step_size), float(gamma)
        if self.step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")

    def factor(self, epoch):
        return self.gamma ** (epoch // self.step_size)


class ExponentialLR(Schedule):
    """lr * gamma ** epoch."""

    def __init__(self, gamma):
        self.gamma = float(gamma)

    def factor(self, epoch):
        return self.gamma ** epoch


class CosineLR(Schedule):
    """Cosine annealing from lr to lr * min_factor over ``T_max`` epochs, then constant."""

    def __init__(self, T_max, min_factor=0.0):
        self.T_max, self.min_factor = int(T_max), float(min_factor)
        if self.T_max < 1:
            raise ValueError(f"T_max must be >= 1, got {T_max}")

    def factor(self, epoch):
        e = min(epoch, self.T_max)
        return self.min_factor + (1 - self.min_factor) * (1 + math.cos(math.pi * e / self.T_max)) / 2


def _positive(v, name, allow_zero=False):
    v = float(v)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {v}")
    return v


class Optimizer:
    """Base class. ``step(net)`` updates ``net.flat_params`` from ``net.flat_grads``.

    ``clip_norm``: before each step, clip the gradient by its global norm over every parameter
    of the network, g *= min(1, clip_norm / (||g|| + 1e-6)) (PyTorch's ``clip_grad_norm_``,
    which scales ``net.flat_grads`` in place); None: no clipping. ``last_grad_norm`` holds the
    norm before clipping of the last step the optimizer took in Python (None otherwise)."""

    def __init__(self, lr, schedule=None, clip_norm=None):
        self.lr = _positive(lr, "lr")
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a fastbp Schedule, got {schedule!r}")
        self.schedule = schedule
        self.clip_norm = None if clip_norm is None else _positive(clip_norm, "clip_norm")
        self.last_grad_norm = None
        self.epoch = 0
        self.t = 0
        self.state = {}

    def current_lr(self):
        return self.lr * (self.schedule.factor(self.epoch) if self.schedule else 1.0)

    @property
    def learning_rate(self):
        """The current learning rate (``current_lr()``), under scikit-learn's optimizers'
        name for it: code written for scikit-learn reads ``est._optimizer.learning_rate``."""
        return self.current_lr()

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def _buffers(self, net, names):
        p = net.flat_params
        _checks.writable(p, "net.flat_params")  # before any step writes into it
        if self.state.get("size") != p.size or self.state.get("dtype") != p.dtype.str:
            self.state = {"size": p.size, "dtype": p.dtype.str}
            for n in names:
                self.state[n] = np.zeros_like(p)
        return [self.state[n] for n in names]

    def engine_update(self, net):
        """The engine's update step: ((op function, leaf kernel), hyper-parameters, state
        buffers (up to three)), the kernel ``step`` calls; ``Unsupported`` for an optimizer
        that steps otherwise (a user's subclass)."""
        raise Unsupported(f"{type(self).__name__} is not a built-in optimizer")

    def _own_step(self, cls):
        if type(self).step is not cls.step:
            raise Unsupported(f"{type(self).__name__} steps otherwise than {cls.__name__}")

    def _hyper(self, *values):
        """The engine's hyper-parameters (``kernels.engine.N_HYPER``): the optimizer's own,
        then at ``kernels.engine.CLIP`` clip_norm (0: none). The same array while the values
        hold: the engine keeps a training call prepared while its arrays are the same."""
        key = values + (self.clip_norm or 0.0,)
        held = self.__dict__.get("_held_hyper")
        if held is None or held[0] != key:
            h = np.zeros(KE.N_HYPER)
            h[:len(values)] = values
            h[KE.CLIP] = key[-1]
            held = self._held_hyper = (key, h)
        return held[1]

    def _clip(self, net):
        """Clip ``net.flat_grads`` by its global norm, if ``clip_norm`` is set (the engine's
        update runs the same kernel)."""
        if self.clip_norm is None:
            return
        g = net.flat_grads
        partial = np.empty(-(-g.size // KO.FINITE_BLOCK), np.float64)
        clip = KO.clip_by_norm if g.size >= KE.PAR_MIN_WORK else KO.clip_by_norm_serial
        self.last_grad_norm = float(clip(g, self.clip_norm, partial))

    def _clip_config(self):
        return {} if self.clip_norm is None else dict(clip_norm=self.clip_norm)

    def state_dict(self):
        """Arrays and counters needed to resume bit-identically."""
        out = {k: v for k, v in self.state.items() if isinstance(v, np.ndarray)}
        return dict(out, t=self.t, epoch=self.epoch)

    def load_state_dict(self, sd, net):
        self.t, self.epoch = int(sd["t"]), int(sd["epoch"])
        names = [k for k in sd if k not in ("t", "epoch")]
        for n, buf in zip(names, self._buffers(net, names)):
            buf[...] = sd[n]

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Gradient descent, with optional (Nesterov) momentum and L2 weight decay.

    Update as PyTorch's SGD: g <- g + weight_decay p; v <- momentum v + g;
    p <- p - lr (g + momentum v if nesterov else v). With momentum 0: p <- p - lr g, the seed's
    update W <- W - eta dLoss/dW.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> net = fb.Sequential(fb.Linear(2, 1), seed=0)
    >>> X, d = np.array([[1.0, 2.0]]), np.array([[1.0]])
    >>> before = net.loss_and_grad(X, d, fb.L2())
    >>> fb.SGD(lr=0.1).step(net)
    >>> net.loss_and_grad(X, d, fb.L2()) < before
    True
    """

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, schedule=None,
                 clip_norm=None):
        super().__init__(lr, schedule, clip_norm)
        self.momentum = _positive(momentum, "momentum", allow_zero=True)
        self.nesterov = bool(nesterov)
        self.weight_decay = _positive(weight_decay, "weight_decay", allow_zero=True)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")

    def step(self, net):
        (v,) = self._buffers(net, ["v"])
        self.t += 1
        _config.use_num_threads()
        self._clip(net)
        KO.sgd_step(net.flat_params, net.flat_grads, v, self.current_lr(), self.momentum,
                    self.nesterov, self.weight_decay)

    def engine_update(self, net):
        self._own_step(SGD)
        (v,) = self._buffers(net, ["v"])
        return (KE.sgd, KO.sgd_step), self._hyper(self.momentum, float(self.nesterov),
                                                  self.weight_decay), (v,)

    def config(self):
        return dict(lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                    weight_decay=self.weight_decay, **self._clip_config())


class Adam(Optimizer):
    """Adam with decoupled weight decay (AdamW when ``weight_decay`` > 0).

    Examples
    --------
    >>> import fastbp as fb
    >>> fb.Adam(lr=1e-3)
    Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0)
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, schedule=None,
                 clip_norm=None):
        super().__init__(lr, schedule, clip_norm)
        b1, b2 = (float(b) for b in betas)
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.betas = (b1, b2)
        self.eps = _positive(eps, "eps")
        self.weight_decay = _positive(weight_decay, "weight_decay", allow_zero=True)

    def step(self, net):
        m, v = self._buffers(net, ["m", "v"])
        self.t += 1
        _config.use_num_threads()
        self._clip(net)
        KO.adam_step(net.flat_params, net.flat_grads, m, v, self.current_lr(), self.betas[0],
                     self.betas[1], self.eps, self.weight_decay, self.t)

    def engine_update(self, net):
        self._own_step(Adam)
        m, v = self._buffers(net, ["m", "v"])
        return (KE.adam, KO.adam_step), self._hyper(*self.betas, self.eps, self.weight_decay), \
            (m, v)

    def config(self):
        return dict(lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay,
                    **self._clip_config())


class RMSprop(Optimizer):
    """RMSprop as PyTorch's: g <- g + weight_decay p; v <- alpha v + (1 - alpha) g^2;
    with ``centered``, the mean gradient a <- alpha a + (1 - alpha) g and v - a^2 in place of
    v; step = g / (sqrt(v) + eps); with momentum, b <- momentum b + step and p -= lr b, else
    p -= lr step.

    Examples
    --------
    >>> import numpy as np, fastbp as fb
    >>> X, d = fb.datasets.xor(200, seed=0)
    >>> net = fb.Sequential(fb.Linear(2, 8), fb.Tanh(), fb.Linear(8, 1), fb.Sigmoid(), seed=0)
    >>> h = fb.fit(net, X, d, fb.BinaryKL(), fb.RMSprop(lr=0.01), batch_size=32, epochs=60,
    ...            progress=False)
    >>> bool(h.accuracy[-1] > 0.95)
    True
    """

    def __init__(self, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, schedule=None, clip_norm=None):
        super().__init__(lr, schedule, clip_norm)
        self.alpha = float(alpha)
        if not 0 <= self.alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.eps = _positive(eps, "eps")
        self.weight_decay = _positive(weight_decay, "weight_decay", allow_zero=True)
        self.momentum = _positive(momentum, "momentum", allow_zero=True)
        self.centered = bool(centered)

    def _state(self, net):
        """v (the mean square), b (the momentum buffer, if momentum) and a (the mean gradient,
        if centered); v stands in for the ones not kept (the kernel does not touch them)."""
        names = ["v"] + ["b"] * (self.momentum != 0) + ["a"] * self.centered
        bufs = dict(zip(names, self._buffers(net, names)))
        return bufs["v"], bufs.get("b", bufs["v"]), bufs.get("a", bufs["v"])

    def step(self, net):
        v, b, a = self._state(net)
        self.t += 1
        _config.use_num_threads()
        self._clip(net)
        KO.rmsprop_step(net.flat_params, net.flat_grads, v, b, a, self.current_lr(), self.alpha,
                        self.eps, self.weight_decay, self.momentum, self.centered)

    def engine_update(self, net):
        self._own_step(RMSprop)
        return (KE.rmsprop, KO.rmsprop_step), self._hyper(
            self.alpha, self.eps, self.weight_decay, self.momentum, float(self.centered)), \
            self._state(net)

    def config(self):
        return dict(lr=self.lr, alpha=self.alpha, eps=self.eps, weight_decay=self.weight_decay,
                    momentum=self.momentum, centered=self.centered, **self._clip_config())
