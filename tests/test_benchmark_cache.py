"""The accuracy cache that benchmarks/low_latency.py writes and benchmarks/time_to_accuracy.py
reads: which saved rows answer for which settings, and how T* is read from a row."""

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _benchmark(name: str):
    """benchmarks/NAME.py as a module (they import each other from their own folder)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


low_latency = _benchmark("low_latency")
time_to_accuracy = _benchmark("time_to_accuracy")

COARSE = {"images": 10000, "calibration_images": 1024, "steps": [1, 2, 4, 8, 16], "batch": 250}
FINE = {**COARSE, "steps": [1, 2, 4, 8, 12, 16, 24]}


def test_a_finer_grid_answers_for_a_coarser_one_and_not_the_other_way():
    assert low_latency.covers(FINE, COARSE)
    assert low_latency.covers(COARSE, COARSE)
    assert not low_latency.covers(COARSE, FINE)  # T=12 and T=24 were never run
    assert not low_latency.covers({**FINE, "calibration_images": 50000}, COARSE)
    assert not low_latency.covers({**FINE, "images": 1000}, COARSE)


def test_the_last_row_that_answers_wins(tmp_path):
    cache = tmp_path / "cache.jsonl"
    rows = [
        {"model": "m", "method": "a", "accuracy": {"8": 0.5}, "settings": COARSE},
        {"model": "m", "method": "a", "accuracy": {"8": 0.6, "12": 0.7}, "settings": FINE},
        {"model": "m", "method": "a", "accuracy": {"8": 0.1}, "settings": {**COARSE, "images": 9}},
    ]
    cache.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = low_latency.load_cache(cache, lambda r: low_latency.covers(r["settings"], COARSE))
    assert done[("m", "a")]["accuracy"] == {8: 0.6, 12: 0.7}  # keys back to ints


def test_t_star_is_the_smallest_t_of_the_row_grid_that_reaches_the_target():
    acc = {8: 0.866, 12: 0.893, 16: 0.898, 32: 0.904}
    assert time_to_accuracy.first_t(acc, 0.8937) == 16  # 0.893 misses by 0.0007
    assert time_to_accuracy.first_t(acc, 0.8930) == 12
    assert time_to_accuracy.first_t(acc, 0.95) is None


def test_a_delayed_readout_is_timed_as_its_plain_row():
    """The delayed readout runs the same network for the same T steps: one timing for both."""
    row = {"tool": "spikingjelly 2.0.0", "model": "m", "method": "spikingjelly ltb+delay"}
    plain = {**row, "method": "spikingjelly ltb"}
    assert time_to_accuracy.Timer.key(row, 24) == time_to_accuracy.Timer.key(plain, 24)
    assert time_to_accuracy.Timer.key(row, 24) != time_to_accuracy.Timer.key(plain, 32)


def test_only_rows_measured_as_they_are_timed_enter_the_table():
    args = time_to_accuracy.parse_args([])
    snn = {"method": "percentile+signed", "settings": COARSE}
    sj = {"method": "spikingjelly ltb+delay", "settings": {**COARSE, "calibration_images": 50000}}
    old_sj = {"method": "spikingjelly max", "settings": COARSE}  # calibrated on 1,024
    assert time_to_accuracy.as_timed(snn, args) and time_to_accuracy.as_timed(sj, args)
    assert not time_to_accuracy.as_timed(old_sj, args)
    assert not time_to_accuracy.as_timed({**snn, "settings": {**COARSE, "images": 1000}}, args)


def test_a_method_names_its_percentile_and_bad_ones_are_refused():
    assert low_latency.parse_method("percentile99.9+signed+mse") == (
        "percentile99.9",
        {"signed", "mse"},
    )
    assert low_latency.percentile_of("percentile99.9") == 99.9
    assert low_latency.percentile_of("percentile") == 99.99  # snnconv's default
    assert low_latency.calibration_of("percentile99.9+signed+threshold") == "threshold"
    assert low_latency.calibration_of("percentile+mse") == "mse"
    assert low_latency.calibration_of("membrane+signed") is None
    for bad in (
        "percentile101",
        "percentile0",
        "percentileX",
        "percentile99.9+delay",
        "percentile+mse+threshold",  # one calibration at most
    ):
        try:
            low_latency.parse_method(bad)
        except ValueError as e:
            assert bad.split("+")[0] in str(e) or "delay" in bad
        else:
            raise AssertionError(f"{bad!r} was accepted")
    # the timing of a calibrated row is its uncalibrated network's, percentile kept
    row = {"tool": "snnconv", "model": "m", "method": "percentile99.9+signed+mse"}
    assert time_to_accuracy.Timer.key(row, 12) == ("snnconv", "m", "percentile99.9+signed", 12)
    # a "+threshold" row's thresholds change the spikes: timed calibrated, its own key
    row = {**row, "method": "percentile99.9+signed+threshold"}
    key = ("snnconv", "m", "percentile99.9+signed+threshold", 12)
    assert time_to_accuracy.Timer.key(row, 12) == key


def test_the_percentile_chosen_is_the_one_that_gets_there_first():
    choose = _benchmark("percentile_choice").choose
    rows = [
        {"percentile": 99.99, "accuracy": {8: 86.6, 12: 89.1, 16: 90.2}},
        {"percentile": 99.9, "accuracy": {8: 86.7, 12: 89.4, 16: 90.1}},
        {"percentile": 99.8, "accuracy": {8: 86.8, 12: 90.0, 16: 89.9}},
    ]
    assert choose(rows, ann=91.0, within=1.0)["percentile"] == 99.8  # T=12
    assert choose(rows, ann=91.0, within=0.85)["percentile"] == 99.99  # T=16, 90.2 > 90.1
    assert choose(rows, ann=92.0, within=1.0) is None


def test_a_bad_method_is_a_one_line_usage_error_before_any_data_is_read(tmp_path):
    import pytest

    with pytest.raises(SystemExit) as e:  # the data root does not exist: never reached
        low_latency.main(["--rows", "m:percentile101+signed", "--data-root", str(tmp_path / "no")])
    assert "percentile101" in str(e.value.code) and "(0, 100]" in str(e.value.code)
