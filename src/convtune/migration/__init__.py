"""`convtune migrate` as a library: an OpenAI fine-tune moved to an open model, step by step
(`steps`), resumable (`state`), with a report (`report`)."""
