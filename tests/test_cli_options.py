"""Every option of every subcommand reaches the configuration it is meant for: none is accepted and then dropped.

Each option is set, alone, to a value other than its default, and the subcommand's configuration (the dataclass
saved beside its output) must change. The few options that steer a run rather than define what it computes are
listed with the reason."""
import argparse
import json
from dataclasses import asdict

import pytest

from dsco import cli

# a valid non-default value for string options that are checked by name
STRINGS = {
    "dataset": "mnist", "method": "random", "schedule": "reference", "loss": "mmd", "optimizer": "sgd", "target_offset": "1",
    "feature_space": "pixels", "selector": "random", "d4m_sampler": "ancestral", "d4m_kmeans": "lloyd",
    "minimax_trainable": "all", "d3hr_inversion_eps": "source", "doping_protocol": "imagenet-subset",
    "protocol": "cpu-resnet18", "arch": "convnet6", "ipc": "2", "methods": "random", "budgets": "0.3",
    "curve_labels": "hard", "cross_protocol": "cpu-resnet18", "cross_methods": "random", "bn_protocol": "none",
    "on_bad_image": "skip", "device": "cpu", "anchor": "real",
}
# options that steer a run (whether to continue it, where to report) rather than what it computes
RUN_FLAGS = {"resume", "help", "version"}


SUBCOMMANDS = {
    "train-model": (["--out", "o"], cli._train_model_config),
    "concentrate": (["--out", "o"], cli._concentrate_config),
    "sample": (["--out", "o"], cli._sample_config),
    "bench": (["--out", "o"], cli._bench_config),
    "evaluate": (["s"], cli._protocol),
    "train-teacher": (["--out", "o"], cli._protocol),
}
# evaluate's and train-teacher's run parameters other than the protocol are checked where they are used
NOT_IN_PROTOCOL = {"evaluate": {"runs", "labels", "teacher", "class_map", "first_seed", "full", "json", "dataset", "data_root",
                                "download", "test_dataset", "on_bad_image"},
                   "train-teacher": {"seed", "out", "dataset", "data_root", "download", "test_dataset", "on_bad_image"}}


def other_value(action: argparse.Action) -> list[str]:
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        return []  # a BooleanOptionalAction is called by its last name, --no-...
    if action.dest in STRINGS:  # the mnist5k preset's own value would not show a change
        return [STRINGS[action.dest]]
    if action.choices:
        return [str(next(c for c in action.choices if c != action.default))]
    if action.type is int:
        value = (action.default[0] if isinstance(action.default, list) and action.default else action.default or 2) + 1
        return [str(value)]
    if action.type is float:
        return [str((action.default or 0.0) + 0.25)] * (action.nargs if isinstance(action.nargs, int) else 1)
    return ["changed"]


def subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser(method_options=True)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def snapshot(config) -> str:
    return json.dumps(asdict(config), sort_keys=True, default=str)


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_every_option_reaches_its_configuration(command):
    base, build = SUBCOMMANDS[command]
    parser = subparser(command)
    baseline = snapshot(build(parser.parse_args(base)))
    dropped = []
    for action in parser._actions:
        if not action.option_strings or action.dest in RUN_FLAGS | NOT_IN_PROTOCOL.get(command, set()):
            continue
        if action.dest == "out":
            continue  # required, and recorded verbatim
        args = parser.parse_args(base + [action.option_strings[-1], *other_value(action)])
        if snapshot(build(args)) == baseline:
            dropped.append(action.option_strings[-1])
    assert dropped == [], f"{command}: accepted but not in its configuration: {dropped}"


def test_cli_defaults_are_the_configurations_defaults():
    from dsco.train_model import TrainModelConfig

    a = subparser("train-model").parse_args(["--out", "o"])
    cfg = cli._train_model_config(a)
    default = TrainModelConfig(out="o")
    assert (cfg.steps, cfg.batch_size, cfg.lr, cfg.checkpoint_every) == (default.steps, default.batch_size, default.lr, default.checkpoint_every)


def test_version(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.startswith("dsco ")


def test_help_and_the_package_import_load_no_torch():
    import subprocess
    import sys

    code = "import sys, dsco, dsco.cli; dsco.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # `dsco --help` answers at once; PyTorch loads when a command runs


def test_the_package_exports_the_api_by_name():
    import dsco

    assert callable(dsco.concentrate) and dsco.ConcentrateConfig().method == "dsco" and dsco.__version__


def test_every_methods_own_knobs_are_a_concentrate_config_field_and_options_at_its_defaults():
    """A method declares its knobs once (its options dataclass): the config field named after it holds them, and
    the command line, which generates --<method>-<field> from them, leaves every one at the dataclass's default."""
    import dataclasses

    from dsco.methods import REGISTRY
    from dsco.orchestrate import ConcentrateConfig

    fields = {f.name: f for f in dataclasses.fields(ConcentrateConfig)}
    owners = [name for name, m in REGISTRY.items() if m.options is not None]
    assert set(owners) >= {"d4m", "d3hr", "mgd3", "igd", "minimax", "dm"}
    cfg = cli._concentrate_config(subparser("concentrate").parse_args(["--out", "o"]))
    for name in owners:
        assert isinstance(fields[name].default_factory(), REGISTRY[name].options) and name in REGISTRY[name].config_fields
        assert getattr(cfg, name) == REGISTRY[name].options()
    helptext = subparser("concentrate").format_help()
    assert "--mgd3-stop-fraction" in helptext and "--igd-window" in helptext and "(default: 0.1)" in helptext
    a = subparser("concentrate").parse_args(["--out", "o", "--mgd3-stop", "0.3", "--igd-window", "0.5", "0.8",
                                             "--no-d3hr-guide-all-channels"])
    cfg = cli._concentrate_config(a)
    assert cfg.mgd3.stop_fraction == 0.3 and cfg.igd.window == (0.5, 0.8) and cfg.d3hr.guide_all_channels is False


def test_a_bad_choice_for_a_methods_knob_is_one_usage_error(capsys):
    with pytest.raises(SystemExit):
        subparser("concentrate").parse_args(["--out", "o", "--d4m-sampler", "euler"])
    assert "invalid choice: 'euler'" in capsys.readouterr().err
