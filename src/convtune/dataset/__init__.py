"""The dataset side: spreadsheets in, checked fine-tuning files out; pure and streaming.

Reading (`spreadsheet`) turns a CSV or .xlsx into `Conversation`s; `examples` builds training
examples in three formats; `pipeline.prepare` splits, counts and writes them; `check` reads a JSONL
file back with line numbers. Nothing here knows about services, models being trained, or a
terminal: findings are returned, never printed.
"""
