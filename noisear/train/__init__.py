"""Training side of NoiseAR: dataset shards and collection, likelihood training, DPO, evaluation.

Golden re-denoising itself is an inference feature and lives in ``noisear.golden``.
Modules: ``data`` (shard format, writer, streaming reader, prompt sets, seeds), ``collect`` (golden pairs
for prompts and seeds, written as shards), ``loop`` (the one training loop: runtime, EMA, checkpoints,
resume), ``likelihood`` (likelihood training on that loop), ``dpo`` (preference fine-tuning on the same
loop), ``metrics`` (held-out metrics and the baselines they are measured against), ``evaluate`` (the one
evaluation layer: sources, matched controls, paired statistics, table/grid/plot; ``noisear eval`` and the
toy demo use it), ``scorers`` (real-model image scorers), ``text_encoders`` (prompt encoding with
transformers), ``cli`` (the ``train``, ``dpo``, ``eval`` and ``data`` commands).
"""
