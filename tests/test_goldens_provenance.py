"""Every golden fixture says where it came from: the record scripts (via tools/make_goldens.py or
tools/make_export_goldens.py), not pgolf."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
GOLDENS = sorted(FIXTURES.glob("*.pt"))
RECORDS = {  # fixture -> records it is made from, as tools/make_goldens.py stamps them
    "int8_golden": {"baseline"},
    "export_golden": {"pr414", "pr194", "pr63"},
    "pr63_golden": {"pr63"},
    "pr194_golden": {"pr194"},
    "pr414_golden": {"pr414"},
    "export_later_golden": {"lqer", "lqer1851", "brotli", "brotli1204", "lzma", "lzma1019"},
    "record_pr297_golden": {"pr297"},
    "record_pr415_golden": {"pr415"},
    "later_model_golden": {"leaky_relu2", "sdclip"},
    "model_schedule_golden": {"pr1204", "pr1493"},
    "ttt_sgd_golden": {"pr297"},
    "ttt_score_first_golden": {"pr297", "pr549"},
    "ttt_two_phase_golden": {"pr415"},
    "prune_golden": {"pr415"},
    "caseops_golden": {"pr1855"},
}
GENERATORS = {
    "export_later_golden": "tools/make_export_goldens.py",
    "record_pr297_golden": "tools/make_ttt_record_goldens.py",
    "record_pr415_golden": "tools/make_ttt_record_goldens.py",
    "later_model_golden": "tools/make_later_model_goldens.py",
    "model_schedule_golden": "tools/make_model_schedule_goldens.py",
    "ttt_sgd_golden": "tools/make_ttt_goldens.py",
    "ttt_score_first_golden": "tools/make_ttt_goldens.py",
    "ttt_two_phase_golden": "tools/make_ttt_two_phase_goldens.py",
    "prune_golden": "tools/make_prune_goldens.py",
    "caseops_golden": "tools/make_caseops_goldens.py",
}  # the others: tools/make_goldens.py


def test_every_golden_is_known():
    assert [p.stem for p in GOLDENS] == sorted(RECORDS)


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.stem)
def test_golden_is_stamped(path):
    stamp = torch.load(path, weights_only=False)["provenance"]
    assert stamp["fixture"] == path.stem
    assert stamp["generator"] == GENERATORS.get(path.stem, "tools/make_goldens.py")
    assert set(stamp["records"]) == RECORDS[path.stem]
    for name, rec in stamp["records"].items():
        assert re.fullmatch(r"#\d+|openai/parameter-golf naive baseline", rec["pr"]), name
        assert rec["folder"].startswith("records/track_10min_16mb/2026-"), name
        assert re.fullmatch(r"[0-9a-f]{64}", rec["script_sha256"]), name
        assert re.fullmatch(r"([0-9a-f]{7,40})?", rec["commit"]), name
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", stamp["torch"])
    assert stamp["cpu_capability"] in {"DEFAULT", "AVX2", "AVX512", "NEON", "SVE256", "VSX", "ZVECTOR"}
