"""Throughput of pgolf's CaseOps transform against the records' own `lossless_caps.py`, on the embedded sample.

Both encode and decode all 378 documents (1,711,069 bytes of text) of the embedded sample; the record's module is
loaded from the path you give (never vendored; it imports only the standard library). Repeats alternate between
the two so that machine load hits both alike; each figure is the median over repeats, in MB/s of original text.
The outputs are checked equal before timing.

    python benchmarks/bench_caseops.py --lossless-caps PATH/TO/RECORD/lossless_caps.py [--repeats 5] [--write]

`--write` appends a row to docs/benchmarks.md (the table is created on first use).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.record_script import load_record  # noqa: E402
from benchmarks.results import append_row  # noqa: E402
from pgolf_core.data import caseops  # noqa: E402
from pgolf_core.data.build import sample_documents  # noqa: E402

SECTION = "## CaseOps transform, CPU (one process), the embedded sample"
HEADER = """{section}

`python benchmarks/bench_caseops.py --lossless-caps PATH/TO/lossless_caps.py --write` appends a row: encode and
decode of all 378 sample documents (1,711,069 bytes), pgolf's `pgolf_core.data.caseops` against the records'
`encode_lossless_caps_v2` / `decode_lossless_caps_v2`, alternating, median over repeats, MB/s of original text.

"""
COLUMNS = ["date", "cpu", "python", "repeats", "load avg", "pgolf encode", "record encode", "pgolf decode",
           "record decode", "encode ratio", "decode ratio"]  # fmt: skip


def seconds(fn, items: list[str]) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lossless-caps", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--write", action="store_true", help="append the result to docs/benchmarks.md")
    args = ap.parse_args(argv)
    record = load_record(args.lossless_caps, "encode_lossless_caps_v2")
    docs = sample_documents()
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    encoded = [caseops.encode(d) for d in docs]
    if encoded != [record.encode_lossless_caps_v2(d) for d in docs]:
        raise SystemExit("pgolf's CaseOps encoding differs from the record's on the sample: not comparable")
    times: dict[str, list[float]] = {"pgolf encode": [], "record encode": [], "pgolf decode": [], "record decode": []}
    for _ in range(args.repeats):
        times["pgolf encode"].append(seconds(caseops.encode, docs))
        times["record encode"].append(seconds(record.encode_lossless_caps_v2, docs))
        times["pgolf decode"].append(seconds(caseops.decode, encoded))
        times["record decode"].append(seconds(record.decode_lossless_caps_v2, encoded))
    rate = {k: mb / statistics.median(v) for k, v in times.items()}
    result = {
        **{k: round(v, 2) for k, v in rate.items()},
        "encode_ratio": round(rate["pgolf encode"] / rate["record encode"], 2),
        "decode_ratio": round(rate["pgolf decode"] / rate["record decode"], 2),
    }
    for key, value in result.items():
        print(f"{key:14s} {value}{' MB/s' if 'ratio' not in key else ' (pgolf / record, higher is faster)'}")
    if args.write:
        load_avg = "/".join(f"{x:.1f}" for x in os.getloadavg()[:2])
        cpu = f"{platform.machine()} {os.cpu_count()} cores"
        cells = [datetime.date.today().isoformat(), cpu, platform.python_version(), str(args.repeats), load_avg]
        cells += [f"{rate[k]:.2f}" for k in times] + [f"{result['encode_ratio']:.2f}", f"{result['decode_ratio']:.2f}"]
        table = "| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|\n"
        append_row(SECTION, HEADER.format(section=SECTION) + table, cells)
    return result


if __name__ == "__main__":
    main()
