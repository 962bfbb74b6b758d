"""The command line: options from the library, one-line errors, results.json, --out all at once."""

import dataclasses
import inspect
import json
import math
import platform
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import snnconv
from conftest import SHARED_DATA
from snnconv import ThresholdReLU, cli, options, train
from snnconv.conversion.convert import convert
from snnconv.evaluation import evaluate, report
from snnconv.evaluation.results import Results
from snnconv.exceptions import SimulationError, SnnconvError
from snnconv.kernels import backend
from snnconv.measures import cost
from snnconv.simulation import workspace


def _actions(command: str) -> dict:
    sub = next(a for a in cli.parser()._actions if a.dest == "command")
    return {a.dest: a for a in sub.choices[command]._actions}


def test_conversion_choices_and_defaults_come_from_the_library():
    defaults = {k: p.default for k, p in inspect.signature(convert).parameters.items()}
    for command in ("evaluate", "demo", "shift-scan"):
        act = _actions(command)
        assert tuple(act["threshold"].choices) == options.THRESHOLD_MODES
        assert tuple(act["shift"].choices) == options.SHIFTS
        assert tuple(act["readout"].choices) == options.READOUTS
        assert tuple(act["maxpool"].choices) == options.MAXPOOLS
        assert tuple(act["neuron"].choices) == options.NEURONS
        for name in ("threshold", "percentile", "readout", "maxpool"):
            assert act[name].default == defaults[name], (command, name)
        assert (act["e_mac"].default, act["e_ac"].default) == (options.E_MAC_PJ, options.E_AC_PJ)
    assert _actions("evaluate")["shift"].default == defaults["shift"]  # None: the library picks
    assert _actions("demo")["shift"].default == "membrane"
    assert _actions("evaluate")["neuron"].default == defaults["neuron"] == "if"
    assert _actions("demo")["neuron"].default is None  # each demo model's own (cli.DEMO_MODELS)
    assert tuple(_actions("shift-scan")["fractions"].default) == options.SHIFT_FRACTIONS
    assert (cost.E_MAC_PJ, cost.E_AC_PJ) == (options.E_MAC_PJ, options.E_AC_PJ)


def test_train_options_are_the_fields_of_trainconfig():
    act = _actions("train")
    fields = dataclasses.fields(train.TrainConfig)
    assert {f.name for f in fields} == set(act) - {"help", "quiet"}
    for f in fields:
        a = act[f.name]
        assert a.option_strings == [options.flag(f.name)]
        assert f.metadata["help"].replace("%", "%%") in a.help
        assert a.required == (f.default is dataclasses.MISSING)
        if not a.required:
            assert a.default == f.default, f.name
        assert a.choices == f.metadata["choices"], f.name
    args = cli.parser().parse_args(["train", "--out", "x", "--nesterov", "false", "--lr", "0.2"])
    assert train.config_from_args(args) == train.TrainConfig(out="x", nesterov=False, lr=0.2)


def _main(capsys, *argv) -> str:
    """stderr of ``snnconv argv`` run in this process, checked to be one error line, exit 2."""
    try:
        code = cli.main(list(argv))
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("snnconv: error: ") and len(err.strip().splitlines()) == 1, err
    return err


NOWHERE = ["--checkpoint", "no-such-model", "--data-root", "/nonexistent"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", *NOWHERE, "--out", "o", "--batch-size", "0"], "--batch-size must be an"),
        (["evaluate", *NOWHERE, "--out", "o", "--calibration-images", "0"], "--calibration-images"),
        (["evaluate", *NOWHERE, "--out", "o", "--limit", "-1"], "--limit must be an integer >= 1"),
        (["evaluate", *NOWHERE, "--out", "o", "--T", "16,0"], "--T must be an integer >= 1, got 0"),
        (["evaluate", *NOWHERE, "--out", "o", "--T", ","], "--T: give at least one"),
        (["evaluate", *NOWHERE, "--out", "o", "--e-mac", "nan"], "--e-mac must be a finite"),
        (["evaluate", *NOWHERE, "--out", "o", "--e-ac", "inf"], "--e-ac must be a finite"),
        (["evaluate", *NOWHERE, "--out", "o", "--percentile", "nan"], "--percentile must be in"),
        (["demo", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["shift-scan", *NOWHERE, "--fractions", "0.5,1"], "--fractions: shift fractions must"),
        (["shift-scan", *NOWHERE, "--fractions", "0,0.5,nan"], "must be finite numbers >= 0"),
        (["shift-scan", *NOWHERE, "--T", "0"], "--T must be an integer >= 1"),
        (["train", "--out", "o", "--limit-train", "0"], "--limit-train must be an integer >= 1"),
        (["train", "--out", "o", "--limit-train", "-5"], "--limit-train must be an integer >= 1"),
        (["train", "--out", "o", "--epochs", "0"], "--epochs must be an integer >= 1"),
        (["train", "--out", "o", "--lr", "nan"], "--lr must be a finite number >= 0"),
        (["train", "--out", "o", "--label-smoothing", "2"], "--label-smoothing must be a finite"),
        (["train", "--out", "o", "--epochs", "x"], "argument --epochs: invalid int value"),
        (["evaluate", "--checkpoint", "x"], "the following arguments are required: --out"),
    ],
)
def test_bad_options_are_one_line_errors_before_any_work(
    capsys, tmp_path, monkeypatch, argv, message
):
    """Checked before anything is loaded: the checkpoint and data root above do not exist, and
    nothing is created."""
    monkeypatch.chdir(tmp_path)
    assert message in _main(capsys, *argv)
    assert list(tmp_path.iterdir()) == []


def test_trainconfig_refuses_bad_values_itself():
    with pytest.raises(snnconv.OptionError, match="limit_train must be an integer >= 1, got 0"):
        train.TrainConfig(out="x", limit_train=0)
    with pytest.raises(snnconv.OptionError, match="schedule must be one of"):
        train.TrainConfig(out="x", schedule="linear")
    assert train.TrainConfig(out="x", limit_train=None).limit_train is None


def _relu_net(act):
    return nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 3)).eval()


@pytest.mark.parametrize("act", ["threshold", "relu", "relu6", "none"])
@pytest.mark.parametrize("threshold", options.THRESHOLD_MODES)
@pytest.mark.parametrize("readout", options.READOUTS)
def test_needs_calibration_agrees_with_convert(act, threshold, readout):
    model = _relu_net(
        {"threshold": ThresholdReLU(1.0), "relu": nn.ReLU(), "relu6": nn.ReLU6()}.get(
            act, nn.Identity()
        )
    )
    try:
        convert(model, threshold=threshold, readout=readout)
        refused = False
    except ValueError as err:
        assert "calibration data is required" in str(err)
        refused = True
    assert cli.needs_calibration(model, threshold, readout) == refused


# ----------------------------------------------------------------------------- results


def _results(e_mac: float = options.E_MAC_PJ) -> Results:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3), ThresholdReLU(1.0), nn.Flatten(), nn.Linear(3 * 4 * 4, 4), nn.ReLU()
    )
    net = nn.Sequential(*net, ThresholdReLU(1.0), nn.Linear(4, 2)).eval()
    x = torch.randn(8, 1, 6, 6)
    snn = convert(net, calibration=[x], shift="membrane")
    return evaluate.evaluate(snn, [(x, torch.arange(8) % 2)], [4, 8], progress=False, e_mac=e_mac)


def test_results_round_trip_through_strict_json():
    res = _results()
    text = res.to_json()

    def refuse(name):
        raise AssertionError(f"{name} in results.json")

    obj = json.loads(text, parse_constant=refuse)
    assert list(obj)[0] == "schema" and set(obj["snn_accuracy"]) == {"4", "8"}
    assert Results.from_json(text) == res
    assert res.steps == [4, 8] and res.layers[0].error[8].total >= 0
    env = res.environment
    assert (env.snnconv, env.torch) == (snnconv.__version__, torch.__version__)
    assert env.kernels == backend.describe("cpu") and env.threads == torch.get_num_threads()
    assert "cpu_isa" in env.kernels and "scan" in env.kernels
    with pytest.raises(SnnconvError, match="schema"):
        Results.from_json(json.dumps({**obj, "schema": "other"}))


def test_results_refuse_values_that_are_not_finite():
    res = _results()
    bad = dataclasses.replace(res.layers[1], max_activation=math.nan)
    broken = dataclasses.replace(res, layers=[res.layers[0], bad, *res.layers[2:]])
    with pytest.raises(SimulationError, match=r"results\.layers\[1\]\.max_activation is nan"):
        broken.to_json()


def test_energy_ratio_is_null_when_the_ann_costs_nothing():
    res = _results(e_mac=0.0)
    assert all(c.energy_ratio is None for c in res.cost.per_T.values())
    assert '"energy_ratio": null' in res.to_json()
    assert "n/a" in report.table(res)
    assert Results.from_json(res.to_json()) == res


def test_checkpoint_record_names_the_resolved_file(tmp_path):
    import hashlib

    from snnconv.evaluation.results import CheckpointRecord

    (tmp_path / "m.pt").write_bytes(b"weights")
    rec = CheckpointRecord.of("./m.pt", tmp_path / "m.pt")
    assert rec.file == str((tmp_path / "m.pt").resolve()) and rec.name == "./m.pt"
    assert rec.sha256 == hashlib.sha256(b"weights").hexdigest()


# ----------------------------------------------------------------------------- --out


def _snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _siblings(out) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


@pytest.mark.slow  # 1.5 s: the quick subset stays < 30 s with a margin
def test_failing_last_write_leaves_the_previous_set(tmp_path, monkeypatch):
    res = _results()
    out = tmp_path / "eval"
    report.write(res, out, plots=True)
    before = _snapshot(out)
    assert set(before) == set(report.OUTPUTS)
    real, calls = report._write_file, []

    def fail_last(path, blob):
        calls.append(path.name)
        if len(calls) == len(report.OUTPUTS):
            raise OSError(28, "No space left on device")
        real(path, blob)

    monkeypatch.setattr(report, "_write_file", fail_last)
    again = dataclasses.replace(res, seconds=res.seconds + 1)
    with pytest.raises(OSError, match="No space left"):
        report.write(again, out, plots=True)
    assert len(calls) == len(report.OUTPUTS)  # all but the last were written
    assert _snapshot(out) == before and _siblings(out) == []


@pytest.mark.slow  # two evaluations with plots: ~1.5 s
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-twice"])
def test_rerun_without_plots_leaves_none(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(report, "_exchange", lambda a, b: False)
    res = _results()
    out = tmp_path / "eval"
    report.write(res, out, plots=True)
    assert len(list(out.glob("*.png"))) == 4
    written = report.write(res, out, plots=False)
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "results.json"]
    assert sorted(written) == sorted(out / n for n in ("report.md", "results.json"))
    assert "![" not in (out / "report.md").read_text()  # no links to missing plots
    assert Results.from_json((out / "results.json").read_text()) == res
    assert _siblings(out) == []


def test_out_with_other_files_or_the_current_folder_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OSError, match="holds files snnconv did not write there"):
        report.check_writable(out)
    monkeypatch.chdir(out)
    with pytest.raises(OSError, match="not the current one"):
        report.check_writable(".")
    with pytest.raises(OSError, match="not the current one"):
        report.check_writable(tmp_path)
    assert (out / "notes.txt").read_text() == "mine"


KILLED_WRITE = """
import os, signal, sys
from snnconv.evaluation import report
real = report._write_file
def write(path, blob):
    if path.name == "b":
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, blob)
report._write_file = write
report.write_set({"a": b"new a", "b": b"new b"}, sys.argv[1])
"""


@pytest.mark.slow  # 1.5 s (a subprocess / the CIFAR-100 archive): the quick subset stays < 30 s
def test_kill_during_the_write_phase_leaves_the_previous_set(tmp_path):
    out = tmp_path / "eval"
    report.write_set({"a": b"old a", "b": b"old b"}, out)
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_WRITE), str(out)], capture_output=True
    )
    assert r.returncode == -9, r.stderr
    assert _snapshot(out) == {"a": b"old a", "b": b"old b"}
    assert len(_siblings(out)) == 1  # the dead writer's hidden folder, beside, never inside
    report.write_set({"a": b"a 3"}, out, ("a", "b"))
    assert _snapshot(out) == {"a": b"a 3"} and _siblings(out) == []  # stale folder removed


# ----------------------------------------------------------------------------- through main


@pytest.mark.slow
def test_evaluate_writes_the_set_and_records_where_it_ran(capsys, tmp_path):
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", "cnn-mnist", "--dataset", "mnist", "--T", "4,8"]
    argv += ["--limit", "64", "--data-root", str(SHARED_DATA), "--quiet", "--out", str(out)]
    assert cli.main([*argv, "--plots", "false"]) == 0, capsys.readouterr().err
    res = Results.from_json((out / "results.json").read_text())
    assert (res.dataset, res.model, res.n_images, res.steps) == ("mnist", "cnn", 64, [4, 8])
    assert res.checkpoint.name == "cnn-mnist"
    assert res.checkpoint.file.endswith("cnn-mnist.pt") and len(res.checkpoint.sha256) == 64
    assert res.environment.kernels["cpu_isa"] == backend.cpu_isa()
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "results.json"]


def test_the_command_line_keeps_freed_memory_on_glibc():
    """cli.main asks glibc's malloc to keep freed memory (workspace.keep_freed_memory); mallopt
    returns 1 for each accepted setting, so on glibc both are accepted, elsewhere nothing is
    changed."""
    assert workspace.keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
