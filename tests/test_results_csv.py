"""OpenAI's results CSV: what a local job writes reads back, and the one base64 decoder."""

from __future__ import annotations

import base64

from convtune.metrics.results_csv import (
    COLUMNS,
    decode_base64_results,
    read_results,
    write_results,
)


def test_written_rows_read_back_with_openai_columns():
    rows = [
        {"step": 1, "train_loss": 2.5, "train_mean_token_accuracy": 0.4},
        {"step": 2, "train_loss": 2.0, "train_mean_token_accuracy": 0.5, "valid_loss": 1.9,
         "valid_mean_token_accuracy": 0.55},
    ]  # fmt: skip
    text = write_results(rows)
    assert text.splitlines() == [",".join(COLUMNS), "1,2.5,0.4,,", "2,2.0,0.5,1.9,0.55"]
    assert read_results(text) == rows
    assert read_results(text.encode()) == rows


def test_base64_results_decoded_other_files_untouched():
    csv = b"\xef\xbb\xbfstep,train_loss\n1,2.0\n"
    encoded = base64.encodebytes(csv)  # with line breaks, as served
    assert decode_base64_results(encoded) == csv
    assert read_results(encoded) == [{"step": 1, "train_loss": 2.0}]
    for content in (
        b"",
        csv,
        b'{"messages": []}\n',
        b"hello world",  # base64's alphabet, but no results file inside
        base64.b64encode(b'{"prompt": "a"}'),
    ):
        assert decode_base64_results(content) == content
