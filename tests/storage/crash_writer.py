"""Child process for test_crash.py: uploads a checkpoint slowly, announcing each file, until killed.

python -m tests.storage.crash_writer PREFIX RUN_ID STEP LOCAL_DIR
"""

from __future__ import annotations

import sys
import time

from sphinxx.storage import CheckpointStore, StorageOptions, TransferProgress


def main(prefix: str, run_id: str, step: str, local_dir: str) -> None:
    store = CheckpointStore(prefix, run_id, options=StorageOptions(file_concurrency=1))

    def announce(event: TransferProgress) -> None:
        if event.file:
            print(f"uploaded {event.file}", flush=True)
            time.sleep(0.5)  # the parent kills us in here, mid-checkpoint

    with store.writer(int(step), progress=announce) as writer:
        writer.upload_dir(local_dir)
    store.commit(int(step), writers=[writer.finish()])
    print("committed", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
