"""The data pipeline: sources, the data-fraction axis, the mixture, the template, the loader.

Modules, in the order data flows through them:

- `format`: the on-disk source format (manifest.json + JSONL shards + line-offset indexes) and
  the record schema; `SourceWriter` writes it.
- `fraction`: the nested, world-size independent subset of each source (the data-scale axis).
- `mixture`: the sources of a run config, weighted into one deterministic sample stream.
- `permutation`: the keyed Feistel permutation that orders each source's records within an epoch,
  evaluated only where a batch needs it.
- `sampler`: global batches of that stream dealt over data-parallel ranks and accumulation
  steps; its position is the only data state a checkpoint needs.
- `template`: the conv_v1_2 conversation template, tokenisation and answer-only labels.
- `dataset`: reading records and images through the storage layer, decoding, any-res processing
  and tokenisation in DataLoader workers; bad records are reported, not raised.
- `loader`: the DataLoader the train loop iterates, with bad-record accounting and resume state.
- `synth`: a small deterministic multimodal set (every domain in miniature) and its tokenizer.
- `importers` (pure converters of public data sets' published layouts) and `importer` (their I/O
  edge): a public data set -> a source, streamed, resumable, bad items reported.
- `cli`: `sphinxx data synth`, `sphinxx data import` and `sphinxx data inspect`.

This `__init__` imports nothing so that `sphinxx --help` stays cheap.
"""
