"""Reading raw files so that a bad row becomes a record with a problem, never an exception mid-file.

Text is decoded as UTF-8 with surrogateescape: invalid bytes survive as lone surrogates, which
`bad_utf8` detects per row and `printable` turns into \\xNN escapes for the quarantine table.
"""
from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pyarrow.parquet as pq


@dataclass
class Record:
    """One raw row: its fields (as far as they could be read), the raw text, and why it is unusable (or None)."""

    fields: dict[str, Any]
    raw: str
    problem: str | None = None


def open_text(path: Path) -> TextIO:
    """Open a plain or gzip text file (detected by its magic bytes) for tolerant UTF-8 reading."""
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape", newline="")
    return open(path, encoding="utf-8", errors="surrogateescape", newline="")


def bad_utf8(text: str) -> bool:
    """True when the text came from invalid UTF-8 bytes (decoded with surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def printable(text: str) -> str:
    """Valid UTF-8 text for storage: invalid bytes become \\xNN escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_tsv(path: Path, columns: list[str], header: bool = True) -> Iterator[Record]:
    """Rows of a tab-separated file as {column: field}; checks the header so a reordered file fails loudly."""
    with open_text(path) as f:
        if header:
            found = f.readline().rstrip("\r\n").lstrip("\ufeff").split("\t")
            if found != columns:
                raise ValueError(f"{path}: expected header {columns}, found {found}")
        for line in f:
            raw = line.rstrip("\r\n")
            if not raw.strip():
                continue
            fields = raw.split("\t")
            problem = None
            if bad_utf8(raw):
                problem = "invalid utf-8"
            elif len(fields) != len(columns):
                problem = f"malformed row: expected {len(columns)} tab-separated fields, got {len(fields)}"
            yield Record(dict(zip(columns, fields)), raw, problem)


def _csv_records(path: Path) -> tuple[list[str], list[Record]]:
    consumed: list[str] = []  # the physical lines behind the current row (quoted fields may span lines)
    records: list[Record] = []
    with open_text(path) as f:

        def lines() -> Iterator[str]:
            for line in f:
                consumed.append(line)
                yield line

        reader = csv.reader(lines())
        header = [printable(c.strip()) for c in next(reader, [])]
        if header:
            header[0] = header[0].lstrip("\ufeff")
        while True:
            consumed.clear()
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                records.append(Record({}, "".join(consumed).rstrip("\r\n"), f"malformed row: {e}"))
                continue
            raw = "".join(consumed).rstrip("\r\n")
            if not any(cell.strip() for cell in row):
                continue
            problem = None
            if bad_utf8(raw):
                problem = "invalid utf-8"
            elif len(row) != len(header):
                problem = f"malformed row: expected {len(header)} fields, got {len(row)}"
            records.append(Record(dict(zip(header, row)), raw, problem))
    return header, records


def _jsonl_records(path: Path) -> tuple[list[str], list[Record]]:
    records: list[Record] = []
    header: dict[str, None] = {}
    with open_text(path) as f:
        for line in f:
            raw = line.rstrip("\r\n")
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                records.append(Record({}, raw, f"malformed row: invalid JSON ({e.msg})"))
                continue
            if not isinstance(row, dict):
                records.append(Record({}, raw, "malformed row: not a JSON object"))
                continue
            header.update(dict.fromkeys(row))
            records.append(Record(row, raw, "invalid utf-8" if bad_utf8(raw) else None))
    return list(header), records


def _parquet_records(path: Path) -> tuple[list[str], list[Record]]:
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    table = pq.read_table(path)
    rows = [Record(row, json.dumps(row, default=str, ensure_ascii=False)) for row in table.to_pylist()]
    return table.column_names, rows


def read_records(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[Record]]:
    """Columns and records of a .parquet, .csv or .jsonl file (optionally gzipped).

    A row that lacks a required value becomes a malformed record; a file without a required
    column raises ValueError naming the file and the column.
    """
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        columns, records = _parquet_records(path)
    elif name.endswith(".csv"):
        columns, records = _csv_records(path)
    elif name.endswith(".jsonl"):
        columns, records = _jsonl_records(path)
    else:
        raise ValueError(f"{path}: unsupported file type (use .parquet, .csv or .jsonl)")
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"{path}: missing column {', '.join(map(repr, missing))} (found: {columns})")
    return columns, _require(records, required)


def _require(records: list[Record], required: tuple[str, ...]) -> list[Record]:
    """Mark rows with an empty required value as malformed."""
    for rec in records:
        empty = [c for c in required if rec.fields.get(c) is None or not str(rec.fields[c]).strip()]
        if empty and rec.problem is None:
            rec.problem = f"malformed row: no {', '.join(empty)}"
    return records
