"""A job's metrics on any backend: gathered (`job_metrics`), written and read as OpenAI's results
CSV (`results_csv`), and drawn (`charts`, `tokens_chart`)."""
