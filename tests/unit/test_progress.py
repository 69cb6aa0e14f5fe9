"""Progress bars and log lines: one bar per loop, its end reported once, log lines above bars,
and no Hugging Face bar per model load."""

from __future__ import annotations

import io
import logging
import sys

from mechintro.batching import in_batches
from mechintro.progress import LoggedBar, TqdmHandler, interactive, progress_bar, quiet_loading


def to_a_file(monkeypatch) -> None:
    """stderr a file, as in a log or CI (also under pytest -s in a terminal)."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())


def bar_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mechintro.progress"]


def test_where_lines_cannot_redraw_a_bar_is_logged_once_per_count(caplog, monkeypatch):
    to_a_file(monkeypatch)
    assert not interactive()  # neither a terminal nor a notebook
    caplog.set_level(logging.INFO)
    bar = progress_bar(total=3, desc="sweep", unit="trial")
    assert isinstance(bar, LoggedBar)
    for _ in range(3):
        bar.update(1)
    bar.set_postfix_str("done")  # a redraw, not a count: no line of its own
    bar.close()
    bar.close()
    (line,) = bar_lines(caplog)  # the end once: not every update, not 100 % twice
    assert line.startswith("sweep: 3/3 [")


def test_a_logged_bar_reports_progress_between_its_intervals(caplog):
    caplog.set_level(logging.INFO)
    bar = LoggedBar(range(4), desc="it", mininterval=0.0)
    bar.mininterval = 0.0  # every update due (the class keeps at least 30 s)
    list(bar)
    lines = bar_lines(caplog)
    assert lines[-1].startswith("it: 4/4") and len(lines) == len(set(lines))


def test_no_bar_when_disabled(caplog):
    caplog.set_level(logging.INFO)
    for _ in progress_bar(range(3), desc="quiet", disable=True):
        pass
    assert bar_lines(caplog) == []


def test_batches_with_a_bar_do_not_also_log_each_batch(caplog, monkeypatch):
    to_a_file(monkeypatch)
    caplog.set_level(logging.INFO)
    list(in_batches(list(range(10)), 4, label="score", progress=True))
    per_batch = [
        r for r in caplog.records if r.getMessage().startswith("score: ") and "of" in r.getMessage()
    ]
    assert per_batch == [] and bar_lines(caplog)[-1].startswith("score: 10/10")
    caplog.clear()
    list(in_batches(list(range(10)), 4, label="score"))  # no bar: the log is the progress
    assert [r.getMessage() for r in caplog.records] == [
        "score: 4 of 10",
        "score: 8 of 10",
        "score: 10 of 10",
    ]


def test_the_handler_writes_through_tqdm(monkeypatch):
    to_a_file(monkeypatch)
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    record = logging.LogRecord(
        "mechintro.x", logging.WARNING, __file__, 1, "careful %d", (1,), None
    )
    handler.emit(record)
    assert sys.stderr.getvalue() == "WARNING careful 1\n"


def test_quiet_loading_turns_off_the_load_bar_only_for_the_block():
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    with quiet_loading():
        assert not hf_logging.is_progress_bar_enabled()
        assert not are_progress_bars_disabled()  # downloads keep their bars
    assert hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
