"""The local runner's console: Ray's output in, one live line (or plain lines) out, noise left in the log."""

from __future__ import annotations

import io
import os
import pty

from sphinxx.jobs.live import LiveLine, Repeats, checkpoint_step, clean, parse_step, shown

# Lines as the job's driver prints them under Ray (copied from a demo point's log).
RAY = "\x1b[36m(RayTrainWorker pid=4845)\x1b[0m "
STEP_LINE = RAY + (
    "[sphinxx] step 7/12 (58.3%) loss 6.5811 lr 5.00e-04 | 1,859 tok/s 4.6 samples/s mfu 40.1% "
    "| ETA 0:00:04\n"
)
LAST_LINE = (
    RAY
    + "[sphinxx] step 12/12 (100.0%) loss 5.7685 lr 0.00e+00 | 2,039 tok/s 5.1 samples/s mfu 31.3% | ETA -\n"
)
CKPT_LINE = RAY + (
    "Checkpoint successfully created at: Checkpoint(filesystem=local, "
    "path=/tmp/d/.demo/tiny/checkpoints/tiny-debug-d100/ray/tiny-debug-d100/pointer-000000006)\n"
)
NOISE = [
    "\x1b[36m(PlacementGroupCleaner pid=77)\x1b[0m PlacementGroupCleaner: could not connect to GCS\n",
    "2026-12-04 13:20:44,580\tINFO worker.py:2038 -- Connected to Ray cluster.\n",
    RAY + "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully\n",
    '{"sphinxx_summary": true, "status": "succeeded", "step": 12}\n',
]


def test_lines_are_cleaned_and_parsed() -> None:
    text = clean(STEP_LINE)
    assert text.startswith("[sphinxx] step 7/12") and "\x1b" not in text
    step = parse_step(text)
    assert step is not None and (step.step, step.total, step.loss, step.tokens_per_s, step.eta) == (
        7,
        12,
        6.5811,
        1859.0,
        "0:00:04",
    )
    last = parse_step(clean(LAST_LINE))
    assert last is not None and last.eta is None and last.step == last.total == 12
    assert checkpoint_step(clean(CKPT_LINE)) == 6
    assert checkpoint_step(clean(RAY + "Checkpoint successfully created at: ...pointer-a2-000000015)")) == 15
    assert (
        clean("\x1b[36m(TrainController pid=4774, ip=10.0.0.1)\x1b[0m Requesting resources")
        == "Requesting resources"
    )


def test_only_our_notes_and_errors_reach_the_console() -> None:
    assert not any(shown(clean(line)) for line in NOISE)
    assert shown(clean(RAY + "[sphinxx] resumed from file:///c/step-000000006 at step 6/12"))
    assert shown("Traceback (most recent call last):") and shown("RuntimeError: boom")


def test_each_line_is_kept_once_even_when_ray_repeats_it_later() -> None:
    """Ray's repeats as seen in a micro-family point's log: back to back, and a held-out line again
    after the checkpoint lines that followed it. Other lines may legitimately repeat (not ours)."""
    heldout = RAY + "[sphinxx] held-out at step 42: heldout_loss 4.1260, heldout_bpb 2.5824\n"
    stream = [
        STEP_LINE,
        STEP_LINE,
        heldout,
        CKPT_LINE,
        NOISE[0],
        heldout,
        NOISE[1],
        NOISE[0],
        LAST_LINE,
        LAST_LINE,
    ]
    repeats = Repeats()
    kept = [clean(line) for line in stream if not repeats.seen(clean(line))]
    assert kept == [
        clean(line) for line in (STEP_LINE, heldout, CKPT_LINE, NOISE[0], NOISE[1], NOISE[0], LAST_LINE)
    ]


def test_off_a_terminal_each_new_state_is_one_plain_line() -> None:
    out = io.StringIO()
    live = LiveLine(out)
    step = parse_step(clean(STEP_LINE))
    assert step is not None
    for _ in range(2):  # Ray repeats lines: shown once
        live.update(LiveLine.render("[2/4]", "tiny-debug-d100", step, 6))
    live.note("[2/4] tiny-debug-d100 succeeded in 36s: step 12, loss 5.769")
    assert out.getvalue().splitlines() == [
        "[2/4] tiny-debug-d100  step 7/12 (58%)  loss 6.581  1,859 tok/s  ETA 0:00:04  ckpt 6",
        "[2/4] tiny-debug-d100 succeeded in 36s: step 12, loss 5.769",
    ]
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def _read_all(master: int) -> str:
    """Everything the terminal received: a pty hands it out in chunks, and EIO once the slave is closed."""
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the slave side is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return b"".join(chunks).decode()


def test_on_a_terminal_the_line_is_rewritten_in_place() -> None:
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as terminal:
        live = LiveLine(terminal)
        assert live.tty
        for line in (STEP_LINE, LAST_LINE):
            step = parse_step(clean(line))
            assert step is not None
            live.update(LiveLine.render("[1/1]", "p", step, None))
        live.note("[1/1] p succeeded")
    written = _read_all(master)
    assert written.count("\r\x1b[2K") == 2 and "step 12/12 (100%)" in written
    assert written.rstrip().endswith("[1/1] p succeeded")


def test_mlflow_store_migrations_stay_off_the_runners_console(tmp_path) -> None:
    """MLflow configures its loggers when first imported; the runner's quieting must outlast that
    (a fresh SQLite store printed 'Creating initial MLflow database tables...' in `make demo`)."""
    import subprocess
    import sys

    code = (
        "from sphinxx.jobs.local import _quiet_third_parties\n"
        "_quiet_third_parties()\n"
        "from mlflow.tracking import MlflowClient\n"
        f"MlflowClient('sqlite:///{tmp_path}/mlflow.db').search_experiments()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "mlflow.db").exists()  # the store was created, migrations ran
    assert "database tables" not in out.stdout + out.stderr
