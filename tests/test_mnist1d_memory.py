"""The fit and the 16 GiB limits of benchmarks/mnist1d_memory.py, on synthetic rows whose
memory is a known M(K, C) = a0 + a1 C + a2 C^2 + K (b1 C + b2 C^2) (MiB)."""

import numpy as np
import pytest

from benchmarks import mnist1d_memory as bench

GROWING = [400.0, 0.1, 1e-3, 0.05, 3e-4]  # MAML-like: memory grows with every step
FLAT = [400.0, 0.1, 2e-3, 0.0, 0.0]  # first-order: the steps cost nothing
# the benchmark's default sweep: steps at 256 channels, channels at 100 steps, two anchors
CONFIGS = ([(k, 256) for k in (5, 10, 25, 50, 100)] + [(100, c) for c in (16, 32, 64, 128)]
           + [(5, 16), (5, 64)])


def rows_of(coefficients: dict, configs=CONFIGS) -> list[dict]:
    """Rows at `configs`, memory added over the peak of the benchmark's 2-step warm-up."""
    return [{"method": method, "steps": k, "channels": c,
             "peak_memory_mib": float(bench.predict(coef, k, c)),
             "peak_memory_added_mib": float(bench.predict(coef, k, c) - bench.predict(coef, 2, c))}
            for method, coef in coefficients.items() for k, c in configs]


def test_fit_recovers_the_coefficients():
    rows = rows_of({"maml": GROWING, "fomaml": FLAT})
    fitted = bench.fit(rows)
    np.testing.assert_allclose(fitted["maml"], GROWING, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(fitted["fomaml"], FLAT, rtol=1e-8, atol=1e-9)


def test_fit_refuses_rows_that_do_not_separate_the_steps():
    # every step count at one channel count: the K terms are not identified
    rows = rows_of({"maml": GROWING}, [(k, 256) for k in (5, 25, 100)]
                   + [(100, c) for c in (16, 64)])
    with pytest.raises(ValueError, match="maml"):
        bench.fit(rows)


def test_largest_network_and_step_count_within_16_gib():
    rows = rows_of({"maml": GROWING, "fomaml": FLAT})
    fitted = bench.fit(rows)
    widest = {e["method"]: e for e in bench.fits_16gib(rows, fitted, "channels")}
    # at 100 steps, 400 + 64 + 409.6 + 100 (32 + 122.88) = 16361.6 MiB at 640 channels,
    # 17086 MiB at 656 (over 16384)
    assert widest["maml"] == {"method": "maml", "steps": 100, "channels": 640,
                              "peak_memory_mib": pytest.approx(16361.6),
                              "extrapolated": True}
    # 1024 channels, the search's end, fit: 400 + 102.4 + 2097.152
    assert widest["fomaml"]["channels"] == 1024
    assert widest["fomaml"]["peak_memory_mib"] == pytest.approx(2599.552)
    most = {e["method"]: e for e in bench.fits_16gib(rows, fitted, "steps")}
    # at 256 channels: (16384 - 491.136) / 32.4608 = 489.6 steps
    assert (most["maml"]["steps"], most["maml"]["channels"]) == (489, 256)
    assert most["fomaml"]["steps"] == bench.MAX_STEPS


def test_a_measured_point_reports_its_measurement():
    rows = rows_of({"maml": GROWING}) + [
        {"method": "maml", "steps": 100, "channels": 640, "peak_memory_mib": 16000.0}]
    entry, = bench.fits_16gib(rows, bench.fit(rows_of({"maml": GROWING})), "channels")
    assert (entry["channels"], entry["peak_memory_mib"], entry["extrapolated"]) == (
        640, 16000.0, False)


def test_largest_fitting_stops_at_the_first_candidate_over_the_limit():
    candidates = np.array([16, 32, 48, 64])
    limit = bench.LIMIT_MIB
    assert bench.largest_fitting(candidates, np.array([1, limit + 1, 1, 1])) == 16
    assert bench.largest_fitting(candidates, np.array([1, 1, 1, limit])) == 64
    assert bench.largest_fitting(candidates, np.array([limit + 1, 1, 1, 1])) is None


def test_plot_writes_both_panels(tmp_path):
    rows = rows_of({"maml": GROWING, "fomaml": FLAT})
    check = {"method": "maml", "steps": 100, "channels": 352,
             "measured_peak_memory_mib": float(bench.predict(GROWING, 100, 352))}
    result = {"rows": rows, "sweep": {"steps_at": 256, "channels_at": 100}, "device": "cpu",
              "fit_check": [check, check | {"channels": 512, "measured_peak_memory_mib": None}]}
    bench.plot(result, tmp_path / "memory.png")
    assert (tmp_path / "memory.png").stat().st_size > 10_000


def test_ratios_over_the_steps_hold_first_order_methods_to_1_1x():
    rows = rows_of({"maml": GROWING, "fomaml": FLAT})
    over = bench.ratios(rows, "steps", "channels", 256)
    # 256 channels: 491.136 MiB before the steps, 32.4608 MiB per step for maml
    assert over["maml"]["peak_memory_ratio"] == pytest.approx(
        (491.136 + 100 * 32.4608) / (491.136 + 5 * 32.4608))
    assert (over["maml"]["within_1.1x"], over["fomaml"]["within_1.1x"]) == (False, True)
    assert "within_1.1x" not in bench.ratios(rows, "channels", "steps", 100)["fomaml"]
