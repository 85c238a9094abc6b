from __future__ import annotations

import math

import numpy as np
import pytest

from tuner.lr_suggestion import (
    DEFAULT_BETA,
    RULES,
    smooth_losses,
    suggest_lr,
    suggestion_spread,
)


def _u_curve(n: int = 101, low: float = -5.0, high: float = 1.0, minimum: float = -2.0):
    """A parabola in log10(lr) with its minimum on the grid point 10**minimum."""
    log_lrs = np.linspace(low, high, n)
    return 10.0**log_lrs, (log_lrs - minimum) ** 2 + 1.0


def test_rules_are_the_three_documented_ones() -> None:
    assert RULES == ("min_div_10", "steepest", "valley")


def test_smoothing_is_bias_corrected() -> None:
    # beta 0.5: averages 0.5 and 1.25, divided by 1 - 0.5 and 1 - 0.25.
    np.testing.assert_allclose(smooth_losses([1.0, 2.0], beta=0.5), [1.0, 1.25 / 0.75])


def test_smoothing_keeps_the_first_loss_and_constant_curves(rng: np.random.Generator) -> None:
    losses = rng.uniform(1, 10, size=50)
    assert smooth_losses(losses)[0] == pytest.approx(losses[0], rel=1e-12)
    np.testing.assert_allclose(smooth_losses(np.full(200, 3.5)), 3.5, rtol=1e-12)


def test_smoothing_with_beta_zero_is_the_identity(rng: np.random.Generator) -> None:
    losses = rng.uniform(1, 10, size=20)
    np.testing.assert_allclose(smooth_losses(losses, beta=0.0), losses)


@pytest.mark.parametrize("beta", [-0.1, 1.0])
def test_smoothing_rejects_beta_outside_0_1(beta: float) -> None:
    with pytest.raises(ValueError, match="beta="):
        smooth_losses([1.0, 2.0], beta=beta)


def test_min_div_10_is_the_lr_at_the_lowest_loss_over_10() -> None:
    lrs, losses = _u_curve(minimum=-2.0)
    suggestion = suggest_lr(lrs, losses, "min_div_10")
    step = lrs[1] / lrs[0]
    assert 1e-3 / step <= suggestion <= 1e-3 * step
    assert suggestion == pytest.approx(1e-3, rel=1e-9)


def test_min_div_10_is_the_default_rule() -> None:
    lrs, losses = _u_curve(minimum=-3.0)
    assert suggest_lr(lrs, losses) == suggest_lr(lrs, losses, "min_div_10")


def test_steepest_finds_the_steepest_descent_of_a_sine() -> None:
    # Lightning's check, in log10(lr): loss = sin(u) with u from 0 to 2 pi across the
    # sweep falls fastest at u = pi, i.e. at log10(lr) = -2. The smoothing (an EMA with
    # beta 0.98) delays a sine by its phase lag; at this frequency that is ~49 points.
    n, low, high = 2001, -4.0, 0.0
    log_lrs = np.linspace(low, high, n)
    u = (log_lrs - low) / (high - low) * 2 * math.pi
    omega = u[1] - u[0]
    lag_points = (
        math.atan2(DEFAULT_BETA * math.sin(omega), 1 - DEFAULT_BETA * math.cos(omega)) / omega
    )
    spacing = log_lrs[1] - log_lrs[0]
    expected = -2.0 + lag_points * spacing
    suggestion = suggest_lr(10.0**log_lrs, np.sin(u), "steepest")
    assert 45 < lag_points < 50
    assert abs(math.log10(suggestion) - expected) <= 2 * spacing


def test_steepest_on_a_sine_is_within_1e_2_of_pi_when_the_lag_is_removed() -> None:
    # The same curve, read in Lightning's units: u of the suggestion, minus the lag, is pi.
    n = 4001
    u = np.linspace(0, 2 * math.pi, n)
    lrs = 10.0 ** (u - 5.0)
    omega = u[1] - u[0]
    lag = math.atan2(DEFAULT_BETA * math.sin(omega), 1 - DEFAULT_BETA * math.cos(omega))
    suggested_u = math.log10(suggest_lr(lrs, np.sin(u), "steepest")) + 5.0
    assert abs(suggested_u - lag - math.pi) < 1e-2


def test_steepest_on_a_linear_ramp_picks_the_steep_segment() -> None:
    # Flat, then falling steeply from 1e-4 to 1e-3, then gently. The smoothed slope keeps
    # steepening through the steep segment (the EMA catches up), so it is steepest at its end.
    log_lrs = np.linspace(-6.0, 0.0, 601)
    losses = np.interp(log_lrs, [-6, -4, -3, 0], [10, 10, 2, 1])
    suggestion = math.log10(suggest_lr(10.0**log_lrs, losses, "steepest"))
    assert suggestion == pytest.approx(-3.0, abs=0.02)


def test_valley_is_inside_the_longest_decreasing_run_before_the_minimum() -> None:
    # Rises for 30 points, falls for 120 (to the minimum at index 150), rises again.
    log_lrs = np.linspace(-6.0, 1.0, 200)
    index = np.arange(200)
    losses = np.where(index < 30, 5 + index / 30, np.where(index < 150, 6 - (index - 30) / 24, 1))
    losses = losses + np.where(index >= 150, (index - 150) / 10, 0)
    lrs = 10.0**log_lrs
    suggestion = suggest_lr(lrs, losses, "valley")
    assert lrs[30] < suggestion < lrs[150]
    # Not at an edge of the run: fastai's point about halfway down.
    assert lrs[60] < suggestion < lrs[120]


def test_valley_on_a_u_curve_is_before_the_minimum() -> None:
    lrs, losses = _u_curve(n=200, minimum=-1.0)
    suggestion = suggest_lr(lrs, losses, "valley")
    assert lrs[10] < suggestion < 10.0**-1.0


def test_skip_start_drops_the_settling_points() -> None:
    lrs, losses = _u_curve(minimum=-0.2)
    assert int(np.argmin(losses)) == 80
    losses[2] = 0.0  # a lucky early batch
    assert suggest_lr(lrs, losses, skip_start=0) == pytest.approx(lrs[2] / 10)
    assert suggest_lr(lrs, losses, skip_start=3) == pytest.approx(lrs[80] / 10)


def test_skip_end_drops_the_last_points() -> None:
    lrs, losses = _u_curve(minimum=-0.2)
    losses[-2] = 0.0  # the last batches are often noise
    assert suggest_lr(lrs, losses, skip_end=0) == pytest.approx(lrs[-2] / 10)
    assert suggest_lr(lrs, losses, skip_end=2) == pytest.approx(lrs[80] / 10)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_tail_is_ignored(rule: str, bad: float) -> None:
    lrs, losses = _u_curve()
    tail = losses.copy()
    tail[80:] = bad
    assert suggest_lr(lrs, tail, rule) == suggest_lr(lrs[:80], losses[:80], rule)


def test_non_finite_tail_is_not_brought_back_by_the_skips() -> None:
    # 3 finite points cannot spare 5 at the end; the NaNs after them must not be used.
    lrs = np.logspace(-5, 1, 100)
    losses = np.full(100, math.nan)
    losses[:3] = [3.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="3 finite points"):
        suggest_lr(lrs, losses, skip_start=0, skip_end=5)


@pytest.mark.parametrize("n", [0, 1, 16])
def test_too_few_points_raise(n: int) -> None:
    # The default skips drop 10 + 5 points, leaving fewer than 2 of 16.
    lrs = np.logspace(-5, 1, n)
    with pytest.raises(ValueError, match="too few"):
        suggest_lr(lrs, np.ones(n))


def test_two_points_after_the_skips_are_enough() -> None:
    lrs = np.logspace(-5, 1, 17)
    losses = np.linspace(2.0, 1.0, 17)
    assert suggest_lr(lrs, losses) == pytest.approx(lrs[11] / 10)


def test_unknown_rule_raises_naming_it() -> None:
    lrs, losses = _u_curve()
    with pytest.raises(ValueError, match="rule='fastest'"):
        suggest_lr(lrs, losses, "fastest")


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="same length"):
        suggest_lr(np.logspace(-5, 1, 30), np.ones(29))


def test_negative_skips_raise() -> None:
    lrs, losses = _u_curve()
    with pytest.raises(ValueError, match="skip_start=-1"):
        suggest_lr(lrs, losses, skip_start=-1)


def test_spread_is_in_decades() -> None:
    spread = suggestion_spread({"min_div_10": 1e-3, "steepest": 1e-1, "valley": 1e-2})
    assert spread == pytest.approx(2.0)
    assert suggestion_spread({"valley": 3e-2}) == 0.0
    assert suggestion_spread({}) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_steepest_is_not_fooled_by_a_noisy_plateau_before_the_descent(seed: int) -> None:
    # The shape of a real sweep (tuner lr-find on California housing): a plateau near 6 with
    # batch-to-batch noise, the descent from 1e-3 to 2e-2, then the explosion. Smoothed from
    # the window's start instead of the sweep's, the average's first steps won here for 16
    # of 20 seeds, at 2e-5.
    rng = np.random.default_rng(seed)
    log_lrs = np.linspace(-5.0, -1.3, 125)
    clean = np.interp(log_lrs, [-5, -3, -1.7, -1.3], [6, 6, 1.5, 8])
    losses = clean + rng.normal(0, 0.5, size=log_lrs.size)
    suggestion = math.log10(suggest_lr(10.0**log_lrs, losses, "steepest"))
    assert -3.0 < suggestion < -1.7
