"""Training side of NoiseAR: dataset shards, golden noise, likelihood training, DPO, evaluation.

Modules: ``data`` (shard format, writer, streaming reader), ``golden`` (model-agnostic golden
noise), ``trainer`` (the one training loop and likelihood training), ``dpo`` (preference
fine-tuning on the same loop), ``evaluate`` (comparison harness), ``text_encoders`` (prompt
encoding with transformers), ``cli`` (the ``train``, ``dpo``, ``eval`` and ``data`` commands).
"""
