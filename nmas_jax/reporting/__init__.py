"""What a sweep writes: results.json's schema (`results`), the printed table and report.md
(`report`), the figures (`plots`), TensorBoard and metrics.jsonl (`writers`)."""
