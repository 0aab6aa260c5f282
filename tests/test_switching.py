"""EMA, running peak and α (docs/method.md §2.3–2.4) against hand-computed sequences."""
from __future__ import annotations

import pytest
import torch

from vreason.switching import EntropySwitch, switch_trace

# β = 0.5 keeps every value exact in binary floating point, so the expectations are exact.
H = [1.0, 2.0, 1.5, 3.0, 0.5, 4.0]
# E_0 = H_0; E_k = 0.5 E_{k-1} + 0.5 H_k
E = [1.0, 1.5, 1.5, 2.25, 1.375, 2.6875]
P = [1.0, 1.5, 1.5, 2.25, 2.25, 2.6875]
# α = -1 iff E_k < P_k: only at k = 4; equality (k = 2: E stays at the peak) gives +1.
ALPHA_SWITCH = [1, 1, 1, 1, -1, 1]


def test_switch_follows_hand_computed_ema_peak_alpha():
    ema, peak, alpha = switch_trace(H, "switch", beta=0.5)
    assert ema.tolist() == E
    assert peak.tolist() == P
    assert alpha.tolist() == ALPHA_SWITCH


def test_beta_point_nine_sequence():
    h = [2.0, 3.0, 1.0, 1.0, 5.0]
    ema, peak, alpha = switch_trace(h, "switch", beta=0.9)
    e = [2.0]
    for x in h[1:]:
        e.append(0.9 * e[-1] + 0.1 * x)
    # 2.0, 2.1, 1.99, 1.891, 2.2019
    p = [max(e[: i + 1]) for i in range(len(e))]
    assert torch.allclose(ema, torch.tensor(e), atol=1e-6)
    assert torch.allclose(peak, torch.tensor(p), atol=1e-6)
    assert alpha.tolist() == [1, 1, -1, -1, 1]


def test_macro_exploitation_after_the_peak():
    # A rise then a long fall: once the EMA has passed its peak, α stays −1.
    h = [1.0, 2.0, 3.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.5]
    _, _, alpha = switch_trace(h, "switch", beta=0.5)
    assert alpha.tolist() == [1, 1, 1, 1, -1, -1, -1, -1, -1]


@pytest.mark.parametrize("mode, value", [("minimize", -1), ("maximize", 1)])
def test_fixed_modes(mode, value):
    ema, _, alpha = switch_trace(H, mode, beta=0.5)
    assert alpha.tolist() == [value] * len(H)
    assert ema.tolist() == E  # the EMA is still traced


def test_off_reports_the_switch_rule():
    assert switch_trace(H, "off", beta=0.5)[2].tolist() == ALPHA_SWITCH


def test_beta_zero_is_the_raw_entropy():
    ema, peak, alpha = switch_trace(H, "switch", beta=0.0)
    assert ema.tolist() == H
    assert alpha.tolist() == [1, 1, -1, 1, -1, 1]


def test_state_is_device_tensors_and_input_shapes():
    s = EntropySwitch("switch", 0.9)
    ema, alpha = s.update(torch.tensor([3.0]))
    assert ema.shape == () and alpha.shape == () and alpha.dtype == torch.float32
    assert switch_trace([], "switch")[0].numel() == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        EntropySwitch("explore", 0.9)
    with pytest.raises(ValueError, match="beta"):
        EntropySwitch("switch", 1.0)
