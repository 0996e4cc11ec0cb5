"""The decode loop's sampler (collect/decode.py `_Sampler`): exact statistics, the right distribution."""

from __future__ import annotations

import pytest
import torch

from collect.decode import _Sampler


def _reference(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log_softmax the straightforward way: (log-probs, top-1 log-prob, entropy)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return logp, logp.max(dim=-1).values, -(logp.exp() * logp).nan_to_num().sum(dim=-1)


@pytest.mark.parametrize("vocab", [7, 1024, 2500, 49152])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_statistics_equal_log_softmax_for_any_vocabulary_and_dtype(vocab, dtype):
    torch.manual_seed(0)
    logits = (torch.randn(6, vocab) * 4).to(dtype)
    nxt, chosen, top1, entropy = _Sampler(6, vocab, "cpu").step(logits, 0.7)
    logp, want_top1, want_entropy = _reference(logits.float())
    assert nxt.shape == (6,) and bool(((nxt >= 0) & (nxt < vocab)).all())
    torch.testing.assert_close(chosen.double(), logp.gather(1, nxt.unsqueeze(1)).squeeze(1), atol=1e-4, rtol=0)
    torch.testing.assert_close(top1.double(), want_top1, atol=1e-4, rtol=0)
    torch.testing.assert_close(entropy.double(), want_entropy, atol=1e-3, rtol=0)


def test_greedy_takes_the_argmax():
    logits = torch.randn(5, 3000)
    nxt, chosen, top1, _ = _Sampler(5, 3000, "cpu").step(logits, 0.0)
    assert torch.equal(nxt, logits.argmax(dim=-1))
    torch.testing.assert_close(chosen, top1)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_draws_follow_softmax_over_blocks_and_never_pick_a_masked_token(temperature):
    """Mass spread over three blocks (and a partial last block): frequencies match softmax(x / T)."""
    vocab, rows = 2 * _Sampler.BLOCK + 300, 4000
    logits = torch.full((vocab,), -float("inf"))
    hot = torch.tensor([3, 1023, 1024, 2047, 2048 + 299])  # block edges and the last token
    logits[hot] = torch.tensor([0.0, 1.0, -0.5, 0.3, 0.8])
    torch.manual_seed(1)
    sampler = _Sampler(rows, vocab, "cpu")
    nxt, _, _, entropy = sampler.step(logits.expand(rows, vocab).contiguous(), temperature)
    assert set(nxt.tolist()) <= set(hot.tolist())
    want = torch.softmax(logits[hot] / temperature, dim=0)
    got = torch.tensor([(nxt == h).float().mean().item() for h in hot])
    # 4000 draws: each frequency within 4 standard errors of its probability
    assert bool(((got - want).abs() <= 4 * (want * (1 - want) / rows).sqrt()).all()), (got, want)
    torch.testing.assert_close(entropy, _reference(logits.unsqueeze(0))[2].float().expand(rows), atol=1e-4, rtol=0)


def test_one_seed_gives_the_same_tokens_whatever_the_chunking(monkeypatch):
    logits = torch.randn(12, 5000)
    torch.manual_seed(3)
    a = _Sampler(12, 5000, "cpu").step(logits, 1.0)[0]
    monkeypatch.setattr(_Sampler, "CACHE_BYTES", 1)  # one row at a time
    torch.manual_seed(3)
    b = _Sampler(12, 5000, "cpu").step(logits, 1.0)[0]
    assert torch.equal(a, b)


def test_auto_dtype_is_bfloat16_only_where_the_cpu_computes_it_natively(monkeypatch):
    import collect.models as models

    assert models.resolve_dtype("auto", "cuda:0") == "bfloat16"
    assert models.resolve_dtype("float32", "cpu") == "float32"
    monkeypatch.setattr(models, "cpu_bf16_native", lambda: False)
    assert models.resolve_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(models, "cpu_bf16_native", lambda: True)
    assert models.resolve_dtype("auto", "cpu") == "bfloat16"


def test_bfloat16_emulated_by_onednn_is_not_native():
    """oneDNN capped at AVX2 (what a CPU without AVX512 offers) has no native bf16: "auto" gives float32."""
    import subprocess
    import sys

    code = "from collect.models import resolve_dtype; print(resolve_dtype('auto', 'cpu'))"
    env = {"ONEDNN_MAX_CPU_ISA": "AVX2", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=".")
    assert out.stdout.strip() == "float32"
