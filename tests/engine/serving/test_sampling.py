"""engine.serving.sampling: each row's token follows its own parameters and generator; the
logprobs are the raw distribution's, whatever the temperature; bad parameters are refused."""

import pytest
import torch

from engine.models.decoder import sample
from engine.serving import SamplingParams
from engine.serving.sampling import choose


def test_rows_follow_their_own_parameters():
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(max_tokens=1, temperature=0, logprobs=4),
              SamplingParams(max_tokens=1, temperature=1.3, top_k=5, seed=7),
              SamplingParams(max_tokens=1, temperature=0.7, top_p=0.5, seed=8, logprobs=1)]
    generators = [None, torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)]
    out = choose(logits, params, generators)
    logp = torch.log_softmax(logits, dim=-1)
    assert out[0][0] == int(logits[0].argmax())
    assert out[1][0] == int(sample(logits[1:2], 1.3, 5, None, torch.Generator().manual_seed(7)))
    assert out[2][0] == int(sample(logits[2:3], 0.7, None, 0.5, torch.Generator().manual_seed(8)))
    for row, (token, logprob, top) in enumerate(out):
        assert logprob == pytest.approx(logp[row, token].item(), abs=1e-6)  # before temperature
        assert len(top) == params[row].logprobs
        best = torch.topk(logp[row], len(top))
        assert [t for t, _ in top] == best.indices.tolist()
        assert [lp for _, lp in top] == pytest.approx(best.values.tolist(), abs=1e-6)
    assert out[0][2][0][0] == out[0][0]  # greedy: the chosen token heads the alternatives


@pytest.mark.parametrize("kw, message", [
    ({"max_tokens": 0}, "max_tokens must be at least 1"),
    ({"max_tokens": 1, "temperature": -0.1}, "temperature must be >= 0"),
    ({"max_tokens": 1, "top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"max_tokens": 1, "top_k": 0}, "top_k must be at least 1"),
    ({"max_tokens": 1, "logprobs": -1}, "logprobs must be >= 0"),
])
def test_bad_parameters_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kw)
