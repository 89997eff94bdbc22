"""Progress line, throughput window, ETA, the FLOPs formula and the peak behind MFU."""

from __future__ import annotations

import io

import pytest

from sphinxx.jobs.progress import (
    ProgressPrinter,
    Throughput,
    device_peak,
    format_eta,
    gpu_datasheet_peak,
    train_flops,
)


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
        "[sphinxx] step 10/25 (40.0%) loss 2.3457 lr 1.90e-05 | 12,346 tok/s 48.2 samples/s mfu 31.2% "
        "| ETA 0:00:30"
    )


def test_eta_and_flops_formula() -> None:
    assert format_eta(3725) == "1:02:05" and format_eta(0) == "-" and format_eta(float("nan")) == "-"
    # PaLM appendix B: 6N + 12 L d T per position, T the length of its own sequence.
    assert train_flops(1_000_000, 2, 64, [128]) == 128 * (6e6 + 12 * 2 * 64 * 128)
    assert train_flops(1_000_000, 2, 64, [3, 5]) == 8 * 6e6 + 12 * 2 * 64 * (9 + 25)


def test_window_flop_rate_is_the_mfu_numerator() -> None:
    meter = Throughput(window=2)
    meter.mark(0, 0, 0, now=10.0)
    meter.mark(1, 100, 1, now=11.0, flops=4e12)
    meter.mark(2, 100, 1, now=13.0, flops=2e12)
    assert meter.flops_per_s() == pytest.approx(6e12 / 3)
    assert Throughput().flops_per_s() == 0.0


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H200", 989),
        ("NVIDIA H200 NVL", 835),
        ("NVIDIA H100 80GB HBM3", 989),  # the SXM part
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A100 80GB PCIe", 312),
        ("NVIDIA L40S", 362),
    ],
)
def test_gpu_peak_is_the_datasheet_dense_bf16_figure(name: str, tflops: int) -> None:
    peak = gpu_datasheet_peak(name)
    assert peak is not None and peak.flops == tflops * 1e12
    assert not peak.estimate and peak.source.startswith("datasheet: NVIDIA")


def test_unlisted_gpu_and_cpu_peaks_are_estimates() -> None:
    assert gpu_datasheet_peak("NVIDIA GeForce RTX 4090") is None  # measured on the device instead
    peak = device_peak("cpu", cpu_threads=1)
    assert peak.estimate and peak.source == "estimate: fp32 matmul measured on CPU with 1 thread"
    assert 1e8 < peak.flops < 1e13


def test_progress_line_says_when_the_peak_is_an_estimate() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(total_steps=10, every=10, stream=out, mfu_estimate=True)
    printer.maybe_print(10, {"loss": 1.0, "mfu": 0.031}, sec_per_step=1.0)
    assert "mfu~ 3.1% (est. peak)" in out.getvalue()


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_progress_record_is_written_when_due_and_read_back_by_the_operators_rules(tmp_path) -> None:
    from sphinxx.jobs.progress import ProgressWriter
    from sphinxx.schema.progress import read_record
    from sphinxx.storage import CheckpointStore

    store = CheckpointStore(f"file://{tmp_path}", "run-1")
    clock = _Clock(1000.0)
    writer = ProgressWriter(store, attempt=2, every_s=30, mfu_estimate=True, clock=clock)
    metrics = {"loss": 2.5, "tokens_per_s": 900.0, "samples_per_s": 3.0, "mfu": 0.2, "tokens_seen": 4e3}
    assert writer.maybe_write(10, 100, metrics, 0.5)  # the first logged step always writes
    clock.t += 10
    assert not writer.maybe_write(11, 100, {**metrics, "loss": 2.4}, 0.5)  # 10 s < 30 s
    assert writer.maybe_write(12, 100, {**metrics, "loss": 2.3}, 0.5, force=True)  # a commit
    clock.t += 30
    assert writer.maybe_write(13, 100, {**metrics, "loss": 2.2}, 0.5)
    reading = read_record(store.read_progress(), store.layout.progress, "run-1", 2, clock.t, 300)
    r = reading.record
    assert reading.reason == "Reported" and (r.step, r.total_steps, r.loss) == (13, 100, 2.2)
    assert (r.tokens_per_s, r.mfu, r.mfu_estimate, r.seconds_per_step) == (900.0, 0.2, True, 0.5)
    assert r.eta_seconds == (100 - 13) * 0.5 and r.time == clock.t and r.attempt == 2


def test_a_failed_progress_write_never_stops_training(tmp_path, capsys) -> None:
    from sphinxx.jobs.progress import ProgressWriter
    from sphinxx.storage import CheckpointStore

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the run root should be")
    writer = ProgressWriter(CheckpointStore(f"file://{blocker}", "run-1"), attempt=1, every_s=0)
    assert not writer.maybe_write(1, 10, {"loss": 1.0}, 1.0)
    assert not writer.maybe_write(2, 10, {"loss": 1.0}, 1.0)
    err = capsys.readouterr().err
    assert err.count("progress record not written") == 1  # said once, not at every step
