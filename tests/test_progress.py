"""Progress display: a redrawn bar on a terminal, one plain line per event anywhere else."""

from __future__ import annotations

import io

import pytest

from tuner.progress import EpochProgress, Steps


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _train(progress: EpochProgress, epochs: int) -> None:
    progress.start_run()
    for epoch in range(epochs):
        progress.epoch_done(
            epoch, {"loss": 1.0 / (epoch + 1), "val_loss": 0.5, "learning_rate": 0.01}
        )
    progress.end_run()


def test_epochs_are_plain_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    _train(EpochProgress(epochs=4, stream=stream), epochs=2)
    assert stream.getvalue().splitlines() == [
        "epoch 1/4: train MSE 1.0000, val MSE 0.5000, LR 0.01",
        "epoch 2/4: train MSE 0.5000, val MSE 0.5000, LR 0.01",
        "stopped early after 2 epochs (no better validation MSE for a while).",
    ]


def test_runs_are_numbered_when_there_are_several() -> None:
    stream = io.StringIO()
    progress = EpochProgress(epochs=1, runs=2, stream=stream)
    _train(progress, epochs=1)
    _train(progress, epochs=1)
    lines = stream.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["run 1/2 epoch 1/1", "run 2/2 epoch 1/1"]


def test_a_terminal_gets_one_redrawn_bar() -> None:
    stream = _Terminal()
    _train(EpochProgress(epochs=3, stream=stream), epochs=3)
    text = stream.getvalue()
    assert "\r" in text and "3/3" in text and "val MSE 0.5000" in text
    assert "epoch 1/3:" not in text  # no plain lines


def test_steps_end_their_line_before_a_block_that_shows_progress() -> None:
    stream = _Terminal()
    steps = Steps(stream)
    with steps.step("Loading data"):
        pass
    with steps.step("Training", shows_progress=True):
        print("bar", file=stream)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("Loading data ... done (")
    assert lines[1:3] == ["Training ...", "bar"]
    assert lines[3].startswith("Training done (")


def test_a_failed_step_says_so() -> None:
    stream = io.StringIO()
    with pytest.raises(ValueError), Steps(stream).step("Drawing"):
        raise ValueError("no")
    assert stream.getvalue().splitlines() == ["Drawing ...", "Drawing failed"]
