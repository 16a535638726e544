"""jsonl (line-offset index) and arrow/parquet record sources."""

import json
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rwkvjax.data.errors import DataError
from rwkvjax.data.sources import ArrowSource, JsonlSource, open_records

RECORDS = [{"text": f"doc {i} ✓", "n": i} for i in range(5)]


def test_jsonl_index_skips_blank_lines_and_handles_crlf(tmp_path):
  path = tmp_path / "r.jsonl"
  lines = [json.dumps(r, ensure_ascii=False) for r in RECORDS]
  path.write_bytes(("\n\n" + lines[0] + "\r\n" + lines[1] + "\n\r\n" + "\n".join(lines[2:]))
                   .encode())  # no final newline
  src = JsonlSource(path)
  assert len(src) == 5 and [src[i] for i in range(5)] == RECORDS
  assert src.describe(0) == "line 3" and src.describe(2) == "line 6"
  assert pickle.loads(pickle.dumps(src))[4] == RECORDS[4]


def test_empty_jsonl(tmp_path):
  (tmp_path / "e.jsonl").write_bytes(b"")
  assert len(JsonlSource(tmp_path / "e.jsonl")) == 0


@pytest.mark.parametrize("line,problem", [
    (b'{"text": "a"', r"line 2: invalid JSON"),
    (b'{"text": "\xff"}', r"line 2: invalid UTF-8 at byte 10"),
    (b'["text"]', r"line 2: expected a JSON object, got list"),
])
def test_jsonl_bad_lines_name_file_and_line(tmp_path, line, problem):
  path = tmp_path / "bad.jsonl"
  path.write_bytes(b'{"text": "ok"}\n' + line + b"\n")
  src = JsonlSource(path)
  assert src[0] == {"text": "ok"}
  with pytest.raises(DataError, match=problem) as e:
    src[1]  # pylint: disable=pointless-statement
  assert e.value.path == str(path)


def test_missing_files(tmp_path):
  with pytest.raises(DataError, match="file not found"):
    JsonlSource(tmp_path / "none.jsonl")
  with pytest.raises(DataError, match="file not found"):
    ArrowSource(tmp_path / "none.parquet")
  with pytest.raises(DataError, match=r"no .arrow/.parquet files"):
    ArrowSource(tmp_path)


def _table(rows):
  return pa.Table.from_pylist(rows)


def test_parquet_and_hf_arrow_files(tmp_path):
  pq.write_table(_table(RECORDS[:2]), tmp_path / "a.parquet")
  with pa.OSFile(str(tmp_path / "b.arrow"), "wb") as sink:  # HF datasets: IPC stream format
    with pa.ipc.new_stream(sink, _table(RECORDS[2:4]).schema) as writer:
      writer.write_table(_table(RECORDS[2:4]))
  with pa.OSFile(str(tmp_path / "c.arrow"), "wb") as sink:  # IPC file format
    with pa.ipc.new_file(sink, _table(RECORDS[4:]).schema) as writer:
      writer.write_table(_table(RECORDS[4:]))
  src = open_records(tmp_path)
  assert len(src) == 5 and [src[i] for i in range(5)] == RECORDS
  assert src.describe(3) == "row 1 of b.arrow"
  assert ArrowSource(tmp_path / "a.parquet", columns=["text"])[1] == {"text": RECORDS[1]["text"]}
  assert pickle.loads(pickle.dumps(src))[4] == RECORDS[4]
  with pytest.raises(IndexError):
    src[5]  # pylint: disable=pointless-statement


def test_arrow_errors(tmp_path):
  (tmp_path / "x.arrow").write_bytes(b"not arrow at all")
  with pytest.raises(DataError, match="cannot read as arrow") as e:
    ArrowSource(tmp_path / "x.arrow")
  assert e.value.path.endswith("x.arrow")
  pq.write_table(_table(RECORDS), tmp_path / "y.parquet")
  with pytest.raises(DataError, match=r"no column \['content'\] \(columns: \['text', 'n'\]\)"):
    ArrowSource(tmp_path / "y.parquet", columns=["content"])
  (tmp_path / "z.csv").write_text("a,b\n")
  with pytest.raises(DataError, match="expected a .arrow or .parquet file"):
    ArrowSource(tmp_path / "z.csv")
