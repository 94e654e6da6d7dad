"""The local backend: open models fine-tuned on this machine, jobs in an embedded SQLite store."""
