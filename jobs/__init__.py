"""sphinxx.jobs: the programs that train, on a cluster and on a laptop (the top layer, beside the operator).

What it holds:

    train.py        the job's entrypoint (`python -m sphinxx.jobs.train --config URI`): reads and
                    checks the run config once, starts Ray Train
    driver.py       run identity before the attempt (stored config, MLflow run), summary after
    segments.py     what ended a Ray Train run of the attempt and whether another starts (pure)
    resize.py       rank 0's look for room to grow, so the group commits before it restarts bigger
    context.py      what a worker is told (`JobContext`) and knows about itself (`Worker`)
    ray_worker.py   the Ray Train adapter; the only training module that imports Ray
    build.py        the model of a run, from its `model` section
    engine.py       DeepSpeed and expert parallelism, from the `train` and `parallel` sections
    parallelize.py  DeepSpeed's MoE bookkeeping and config (plain keyword arguments)
    loop.py         the per-worker train loop (`train`) and its named steps
    metrics.py, progress.py, timing.py, schedule.py, evaluation.py, audit.py, preemption.py
    tracking.py     the rank-0 MLflow tracker (and the no-op one)
    checkpoint/     save and restore at any world size through `sphinxx.storage`
    data/           sources, the data-fraction axis, the mixture, the sampler, the loader, synth
    cost.py, run_memory.py   what a run costs before it runs
    export.py       a checkpoint as a Hugging Face model folder
    local.py        the local sweep runner (`sphinxx sweep run FILE --local`)
    eval_import.py  `sphinxx eval import`: a benchmark's official files -> task JSONL (sphinxx.evals)
    demo.py         `make demo`
    *_cli.py        the `sphinxx config|sweep|model export` commands

What it may import: the vocabulary (`sphinxx.schema`) and the parts (`sphinxx.model`,
`sphinxx.storage`, `sphinxx.sweep`), never the operator (docs/architecture.md, "Layers"; one
import-linter contract). Only the entry points (`train.read_config`, the driver, the local runner,
the CLIs) see a whole `RunConfig`; everything below them takes the section it uses.
"""
