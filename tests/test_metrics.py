"""The training loop's interval metrics: throughput, MFU only on known chips, time left, loss spikes."""

import math

import pytest

from pretrain.evaluation.validation import perplexity
from pretrain.train.metrics import IntervalMeter, format_duration, spike_ratio


def test_interval_metrics_from_step_times():
    meter = IntervalMeter(tokens_per_step=1000, flops_per_token=10**6, device_name="cpu", devices=2, spike_factor=3)
    for seconds in (0.1, 0.3):
        meter.add_step(seconds)
    metrics = meter.metrics(loss=4.0, lr=1e-3, step=20, max_steps=120)
    assert metrics["step_time_s"] == pytest.approx(0.2)
    assert metrics["tokens_per_s"] == pytest.approx(5000)
    assert metrics["eta_s"] == pytest.approx(100 * 0.2)
    assert "mfu" not in metrics  # a CPU's peak is unknown: no MFU rather than a wrong one
    meter.add_step(0.5)  # the next interval starts afresh
    assert meter.metrics(4.0, 1e-3, 21, 120)["step_time_s"] == pytest.approx(0.5)


def test_mfu_on_a_known_chip():
    meter = IntervalMeter(
        tokens_per_step=989_000, flops_per_token=10**6, device_name="NVIDIA H100 80GB HBM3", devices=2, spike_factor=3
    )
    meter.add_step(1.0)
    assert meter.metrics(3.0, 1e-3, 1, 10)["mfu"] == pytest.approx(0.0005)


def test_a_loss_far_above_the_recent_median_is_a_spike():
    meter = IntervalMeter(1000, 1, "cpu", 1, spike_factor=3.0)
    for loss in (3.0, 2.9, 2.8, 2.7, 2.6, 2.5):
        meter.add_step(0.1)
        assert "loss_spike" not in meter.metrics(loss, 1e-3, 1, 10)
    meter.add_step(0.1)
    assert meter.metrics(9.0, 1e-3, 7, 10)["loss_spike"] == pytest.approx(9.0 / 2.75)
    assert spike_ratio(float("nan"), [2.0] * 5, 3.0) == math.inf
    assert spike_ratio(100.0, [2.0] * 4, 3.0) is None  # too little history to call anything a spike
    assert spike_ratio(5.9, [2.0] * 5, 3.0) is None  # below 3x
    assert spike_ratio(5.9, [2.0] * 5, 2.0) == pytest.approx(2.95)  # train.spike.factor sets the bar


def test_durations_and_perplexity():
    assert [format_duration(s) for s in (42, 185, 3720)] == ["42s", "3m05s", "1h02m"]
    assert perplexity(math.log(50)) == pytest.approx(50)
    assert math.isfinite(perplexity(10_000))
