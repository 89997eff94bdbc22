"""Progress line, throughput window, ETA and the FLOPs formula."""

from __future__ import annotations

import io

import pytest

from sphinxx.jobs.progress import ProgressPrinter, Throughput, format_eta, train_flops_per_token


def test_throughput_window_excludes_the_anchor_step() -> None:
    meter = Throughput(window=3)
    meter.mark(10, tokens=0, samples=0, now=100.0)  # resume point: its work is not in the window
    for i in range(1, 6):
        meter.mark(10 + i, tokens=1000, samples=4, now=100.0 + 2 * i)
    tok_s, smp_s, sec_step = meter.rates()
    # The window keeps the last 4 marks: 3 intervals of 2 s, 3 x 1000 tokens after the anchor.
    assert (tok_s, smp_s, sec_step) == (pytest.approx(500.0), pytest.approx(2.0), pytest.approx(2.0))
    assert Throughput().rates() == (0.0, 0.0, 0.0)


def test_progress_line_every_n_steps_and_at_the_end() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(total_steps=25, every=10, stream=out)
    metrics = {"loss": 2.34567, "lr": 1.9e-5, "tokens_per_s": 12345.6, "samples_per_s": 48.2, "mfu": 0.312}
    printed = [s for s in range(1, 26) if printer.maybe_print(s, metrics, sec_per_step=2.0)]
    assert printed == [10, 20, 25]
    first = out.getvalue().splitlines()[0]
    assert first == (
        "[sphinxx] step 10/25 (40.0%) loss 2.3457 lr 1.90e-05 | 12,346 tok/s 48.2 samples/s mfu 31.2% | ETA 0:00:30"
    )


def test_eta_and_flops_formula() -> None:
    assert format_eta(3725) == "1:02:05" and format_eta(0) == "-" and format_eta(float("nan")) == "-"
    # PaLM appendix B: 6N + 12 L d T.
    assert train_flops_per_token(1_000_000, 2, 64, 128) == 6e6 + 12 * 2 * 64 * 128
