"""Does the fine-tune work? Grading models' answers against a validation file."""
