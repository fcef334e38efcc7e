"""Language models (kdx's `lm` modality): token-level losses against an independent numpy computation,
the `lm_text` corpus (split by document, BPE cached, named errors), the `gpt` models, every LM source's
batches, the LM eval rows, and tiny runs end to end from YAML, the Python API and the `kdx` command."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax as np_log_softmax
from scipy.special import rel_entr

from kdx.distill.losses import TOKEN_LOSSES
from kdx.registry import LOSSES


# ---------------------------------------------------------------------------------------------- losses
def _random_logits(seed: int, n: int = 3, length: int = 7, vocab: int = 11):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, length, vocab, generator=g, dtype=torch.float64) * 2
    t = torch.randn(n, length, vocab, generator=g, dtype=torch.float64) * 2
    mask = torch.rand(n, length, generator=g) < 0.7
    mask[0, 0] = True
    return s, t, mask


def _numpy_reference(name: str, s, t, mask, temperature: float, **args) -> float:
    """Each loss written out directly in numpy on probabilities, mean over masked positions."""
    ps = np.exp(np_log_softmax(s.numpy() / temperature, -1))
    pt = np.exp(np_log_softmax(t.numpy() / temperature, -1))
    kl = lambda p, q: rel_entr(p, q).sum(-1)  # noqa: E731
    if name == "forward_kl":
        per = kl(pt, ps)
    elif name == "reverse_kl":
        per = kl(ps, pt)
    elif name == "jsd":
        b = args["beta"]
        m = b * pt + (1 - b) * ps
        per = b * kl(pt, m) + (1 - b) * kl(ps, m)
    elif name == "skew_kl":
        a = args["skew"]
        per = kl(pt, a * pt + (1 - a) * ps)
    elif name == "skew_reverse_kl":
        a = args["skew"]
        per = kl(ps, a * ps + (1 - a) * pt)
    elif name == "tv":
        return float((0.5 * np.abs(pt - ps).sum(-1))[mask.numpy()].mean())
    return float(per[mask.numpy()].mean() * temperature ** 2)


@pytest.mark.parametrize("name,args", [("forward_kl", {}), ("reverse_kl", {}), ("jsd", {"beta": 0.5}),
                                       ("jsd", {"beta": 0.1}), ("jsd", {"beta": 0.9}), ("skew_kl", {"skew": 0.1}),
                                       ("skew_reverse_kl", {"skew": 0.3}), ("tv", {})])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_token_losses_equal_an_independent_computation(name, args, temperature, monkeypatch):
    import kdx.distill.losses as losses

    monkeypatch.setattr(losses, "TOKEN_CHUNK", 4)  # several chunks, one ragged: chunking changes nothing
    s, t, mask = _random_logits(len(name) * 10 + int(temperature * 3) + int(10 * sum(args.values())))
    got = LOSSES.get(name).fn(s, t, None, temperature, mask, **args)
    assert got.item() == pytest.approx(_numpy_reference(name, s, t, mask, temperature, **args), rel=1e-9, abs=1e-12)
    assert name in TOKEN_LOSSES


def test_jsd_ends_are_the_two_kls_and_mixes_probabilities():
    s, t, mask = _random_logits(3)
    fwd, rev = (LOSSES.get(n).fn(s, t, None, 1.0, mask) for n in ("forward_kl", "reverse_kl"))
    jsd = LOSSES.get("jsd").fn
    assert abs(jsd(s, t, None, 1.0, mask, beta=0.0) - fwd) < 1e-6
    assert abs(jsd(s, t, None, 1.0, mask, beta=1.0) - rev) < 1e-6
    assert fwd > 0.1 and rev > 0.1 and abs(fwd - rev) > 1e-3  # the two ends really differ
    # the known peer bug: a mixture of log-probabilities is not the mixture of probabilities
    ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    wrong_m = torch.softmax(0.5 * lt + 0.5 * ls, -1)
    m = 0.5 * lt.exp() + 0.5 * ls.exp()
    assert not torch.allclose(wrong_m, m, atol=1e-3)
    # and the interior goes to 0 at the ends, so the ends must be special-cased (not the limit)
    assert jsd(s, t, None, 1.0, mask, beta=1e-4) < 0.01 * fwd


def test_token_losses_backpropagate_through_chunks(monkeypatch):
    import kdx.distill.losses as losses

    s, t, mask = _random_logits(5)
    grads = []
    for chunk in (4, 10_000):
        monkeypatch.setattr(losses, "TOKEN_CHUNK", chunk)
        x = s.clone().requires_grad_(True)
        LOSSES.get("jsd").fn(x, t, None, 1.0, mask, beta=0.3).backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-12)
    assert grads[0][~mask].abs().max() == 0 and grads[0][mask].abs().max() > 0  # masked positions get no gradient


def test_next_token_cross_entropy_counts_masked_positions_only():
    s, _, mask = _random_logits(6)
    y = torch.randint(0, s.shape[-1], mask.shape, generator=torch.Generator().manual_seed(0))
    got = LOSSES.get("onehot").fn(s, None, y, 1.0, mask)
    ls = np_log_softmax(s.numpy(), -1)
    ref = -np.take_along_axis(ls, y.numpy()[..., None], -1)[..., 0][mask.numpy()].mean()
    assert got.item() == pytest.approx(ref, rel=1e-9)


def test_token_loss_arguments_out_of_range_are_named():
    from kdx.errors import KdxError

    s, t, mask = _random_logits(7)
    with pytest.raises(KdxError, match="beta=1.5"):
        LOSSES.get("jsd").fn(s, t, None, 1.0, mask, beta=1.5)
    with pytest.raises(KdxError, match="skew=1.0"):
        LOSSES.get("skew_kl").fn(s, t, None, 1.0, mask, skew=1.0)
