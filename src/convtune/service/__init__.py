"""The fine-tuning service contract and what crosses it: `FineTuningService` by resource, its
objects, training's options, and following a job on any backend."""
