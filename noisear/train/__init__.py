"""Training side of NoiseAR: dataset shards and collection, likelihood training, DPO, evaluation.

Golden re-denoising itself is an inference feature and lives in ``noisear.golden``.
Modules: ``data`` (shard format, writer, streaming reader), ``collect`` (golden pairs for prompts
and seeds, written as shards), ``trainer`` (the one training loop and likelihood training), ``dpo`` (preference
fine-tuning on the same loop), ``evaluate`` (comparison harness), ``text_encoders`` (prompt
encoding with transformers), ``cli`` (the ``train``, ``dpo``, ``eval`` and ``data`` commands).
"""
