"""Configs as the one source of their command lines: flags, defaults, checks, reproduce lines."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from cnnprune.config import PipelineConfig
from cnnprune.errors import CliParser, CnnpruneError
from cnnprune.evaluate import EvaluateConfig
from cnnprune.export import ExportConfig
from cnnprune.hparams import add_args, command_line, flag_of, from_args, from_record, positive_ints
from cnnprune.prune import PruneConfig
from cnnprune.train import TrainConfig

CONFIGS = (PipelineConfig, PruneConfig, ExportConfig, TrainConfig, EvaluateConfig)


def parse(cls: type, *argv: str):
    parser = CliParser(prog="x")
    add_args(parser, cls)
    return from_args(cls, parser.parse_args(list(argv)))


@pytest.mark.parametrize("cls", CONFIGS)
def test_no_flags_give_the_defaults(cls: type) -> None:
    assert parse(cls) == cls()


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_field_has_a_flag_and_help(cls: type) -> None:
    parser = CliParser(prog="x")
    add_args(parser, cls)
    flags = {s for a in parser._actions for s in a.option_strings}
    for f in dataclasses.fields(cls):
        assert flag_of(f) in flags and f.metadata["help"], f.name


def test_todays_flag_names_are_kept() -> None:
    assert parse(ExportConfig, "--in", "a", "--no-onnx", "--sparse") == ExportConfig(src="a", onnx=False, sparse=True)
    assert parse(TrainConfig, "--lr", "0.01", "--epochs", "3").max_lr == 0.01
    c = parse(PipelineConfig, "--batches", "1,16", "--models", "unpruned,one_shot_90", "--eval-limit", "200")
    assert c.batches == (1, 16) and c.models == ("unpruned", "one_shot_90") and c.eval_limit == 200
    assert parse(PruneConfig, "--targets", "0.5,0.8", "--steps", "3").schedules()[-1].name == "iterative_80"


def test_reproduce_line_round_trips() -> None:
    c = PipelineConfig(threads=4, batches=(8,), finetune_epochs=1, models=("unpruned", "one_shot_90"))
    line = c.reproduce()
    assert line == "bash run_bench.sh --threads 4 --finetune-epochs 1 --batches 8 --models unpruned,one_shot_90"
    assert parse(PipelineConfig, *line.split()[2:]) == c
    assert PipelineConfig(fresh=True).reproduce() == "bash run_bench.sh", "--fresh does not change results"
    assert command_line(TrainConfig(epochs=3, out="runs/x"), "python -m cnnprune.train") == \
        "python -m cnnprune.train --epochs 3 --out runs/x"


def test_records_round_trip() -> None:
    c = PipelineConfig(batches=(2,), passes=5)
    assert from_record(PipelineConfig, {**dataclasses.asdict(c), "batches": [2], "gone": 1}) == c


def test_checks_across_fields_are_one_line_errors() -> None:
    with pytest.raises(CnnpruneError, match="--models must include unpruned"):
        PipelineConfig(models=("one_shot_90",))
    with pytest.raises(CnnpruneError, match="--data-dir"):
        PipelineConfig(dataset="cifar10")
    with pytest.raises(CnnpruneError, match="--only 'x'"):
        PruneConfig(only=("x",))


def test_list_parser() -> None:
    assert positive_ints("1, 32") == (1, 32)
    for bad in ("1,0", "a", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_ints(bad)
