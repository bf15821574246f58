"""engine.serving on the real SmolLM2-135M-Instruct: two chat prompts, the second arriving a step
later and read in chunks, each answered as ``generate`` answers it alone, greedy, token for token,
up to the end-of-turn token."""

import pytest
import torch

from engine.interop import pretrained
from engine.serving import SamplingParams, ServingEngine

why = pretrained.available(pretrained.SMOLLM2_NAME)
if why is not None:
    pytest.skip(f"SmolLM2-135M-Instruct cannot be loaded here: {why}", allow_module_level=True)


@pytest.fixture(scope="module")
def smollm2():
    return pretrained.load_smollm2()


def test_chat_answers_equal_generate(smollm2):
    model, tokenizer = smollm2
    eos = tokenizer.eos_token_id
    asks = {"paris": "What is the capital of France?", "colours": "Name three colours."}
    ids = {k: tokenizer.encode_chat([{"role": "user", "content": q}]) for k, q in asks.items()}
    params = SamplingParams(max_tokens=10, temperature=0, stop_token_ids=(eos,), logprobs=1)
    engine = ServingEngine(model, num_blocks=16, max_batch=4, prefill_chunk=16)
    engine.add("paris", ids["paris"], params)
    got = {k: [] for k in ids}
    for o in engine.step():
        got[o.request_id].append(o)
    engine.add("colours", ids["colours"], params)  # joins while paris' prompt is still being read
    while engine.has_work():
        for o in engine.step():
            got[o.request_id].append(o)
    for k, prompt in ids.items():
        expected = model.generate(torch.tensor([prompt]), 10, temperature=0, stop_token=eos)[0, len(prompt):].tolist()
        assert [o.token for o in got[k]] == expected, k
        assert all(o.top[0][0] == o.token for o in got[k])  # greedy: the chosen token is the likeliest
    assert tokenizer.decode([o.token for o in got["paris"]]).startswith("The capital of France is Paris")
    assert got["paris"][-1].finish_reason == "stop" and got["colours"][-1].finish_reason == "length"
    assert engine.stats()["blocks_used"] == 0
