"""Same function as the records: pgolf's model built from a recipe equals the record's `GPT` with
identical weights (fp32, CPU, sequence lengths 128 and 2048; golden fixtures)."""

from __future__ import annotations

import torch

from pgolf_core import build_model, load_recipe

from .golden import FIXTURES, assert_matches_golden, randomize

PR414_SMALL = """
[model]
vocab_size = 128
num_layers = 11
model_dim = 128
num_heads = 4
num_kv_heads = 2
mlp_mult = 3.0
[train]
train_seq_len = 2048
[plugins.bigram_hash]
buckets = 64
dim = 32
[plugins.smeargate]
[plugins.xsa]
last_n = 4
[plugins.partial_rope]
dims = 16
[plugins.ln_scale]
[plugins.value_embed]
dim = 32
layers = [9, 10]
[plugins.ortho_init]
"""


def test_pr414_architecture_matches_record(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(PR414_SMALL)
    model = build_model(load_recipe(path))
    golden = torch.load(FIXTURES / "pr414_golden.pt")
    model.load_state_dict(randomize(model.state_dict(), 414), strict=True)
    assert_matches_golden(model, golden)


PR194_SMALL = """
[model]
vocab_size = 128
num_layers = 11
model_dim = 128
num_heads = 4
num_kv_heads = 2
mlp_mult = 3.0
[plugins.smeargate]
placement = "pre_norm"
state_key = "smear_gate_param"
[plugins.ortho_init]
min_dim = 1
"""

PR63_SMALL = """
[model]
vocab_size = 128
num_layers = 10
model_dim = 128
num_heads = 4
num_kv_heads = 2
mlp_hidden = 336
"""


def _check(tmp_path, text: str, fixture: str, seed: int) -> None:
    path = tmp_path / "r.toml"
    path.write_text(text)
    model = build_model(load_recipe(path))
    golden = torch.load(FIXTURES / fixture)
    model.load_state_dict(randomize(model.state_dict(), seed), strict=True)
    assert_matches_golden(model, golden)


def test_pr194_architecture_matches_record(tmp_path):
    _check(tmp_path, PR194_SMALL, "pr194_golden.pt", 194)


def test_pr63_architecture_matches_record(tmp_path):
    _check(tmp_path, PR63_SMALL, "pr63_golden.pt", 63)
