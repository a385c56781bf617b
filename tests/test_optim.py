"""RMSpropTF against a direct NumPy transcription of TensorFlow's ApplyRMSProp equations."""

from __future__ import annotations

import numpy as np
import torch

from mbv2_search.arch import build_spec
from mbv2_search.knobs import Knobs
from mbv2_search.model import build_model
from mbv2_search.optim import RMSpropTF, l2_groups


def tf_rmsprop(w, grad_fn, lrs, *, rho, momentum, eps, weight_decay):
    """TensorFlow's training_ops ApplyRMSProp, transcribed: ms starts at ones, eps inside the sqrt."""
    ms, mom = np.ones_like(w), np.zeros_like(w)
    for lr in lrs:
        g = grad_fn(w) + weight_decay * w
        ms = ms + (g * g - ms) * (1 - rho)
        mom = mom * momentum + lr * g / np.sqrt(ms + eps)
        w = w - mom
    return w


def test_rmsprop_tf_follows_tensorflow_over_60_steps_with_a_changing_learning_rate():
    rng = np.random.default_rng(0)
    curvature, shift, start = rng.uniform(0.5, 3, 50), rng.normal(size=50), rng.normal(size=50)
    lrs = [0.045 * 0.98 ** (step // 7) * (1 + 0.5 * np.sin(step)) for step in range(60)]  # changes every step

    def grad_fn(w):  # of sum(curvature * w^2 / 2 + shift * w)
        return curvature * w + shift

    for eps, weight_decay in ((1.0, 4e-5), (1e-3, 0.0)):
        expected = tf_rmsprop(start.copy(), grad_fn, lrs, rho=0.9, momentum=0.9, eps=eps, weight_decay=weight_decay)
        param = torch.tensor(start.copy(), dtype=torch.float64, requires_grad=True)
        optimizer = RMSpropTF([param], lr=lrs[0], rho=0.9, momentum=0.9, eps=eps, weight_decay=weight_decay)
        c, s = torch.tensor(curvature), torch.tensor(shift)
        for lr in lrs:
            for group in optimizer.param_groups:
                group["lr"] = lr  # as a scheduler does between steps
            optimizer.zero_grad()
            (c * param**2 / 2 + s * param).sum().backward()
            optimizer.step()
        got = param.detach().numpy()
        assert np.max(np.abs(got - expected) / np.maximum(np.abs(expected), 1e-12)) <= 1e-6
        assert not np.allclose(got, start)  # it moved


def test_l2_groups_regularise_conv_and_classifier_weights_but_not_depthwise_batchnorm_or_biases():
    model = build_model(build_spec(Knobs(width=0.35, resolution=32, num_classes=10)))
    decayed, plain = (group["params"] for group in l2_groups(model, 4e-5))
    named = {id(p): n for n, p in model.named_parameters()}
    assert "classifier.1.weight" in {named[id(p)] for p in decayed}
    assert "features.1.conv.0.0.weight" in {named[id(p)] for p in plain}  # block 1's depthwise (t = 1)
    assert all(p.dim() > 1 for p in decayed) and all(p.dim() == 1 or p.shape[1] == 1 for p in plain)
    assert len(decayed) + len(plain) == len(list(model.parameters()))
