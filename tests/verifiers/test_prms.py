"""Model PRM adapters on tiny random-weight models: positions, probabilities, caching, errors."""

from __future__ import annotations

import json

import pytest
import torch

from ttc.registry import ConfigError
from ttc.types import Problem
from ttc.verifiers.judge import QUESTION, Judge
from ttc.verifiers.math_shepherd import MathShepherdPRM
from ttc.verifiers.qwen_prm import SYSTEM, QwenPRM, RewardHead
from ttc.verifiers.rlhflow import RLHFlowPRM

from fakes import char_tokenizer, tiny_causal_lm, tiny_config

PROBLEM = Problem(id="p", question="What is 2+3*4?")
STEPS = ["Step 1: 3*4 = 12.\n\n", "Step 2: 2+12 = 14.\n\n", "The answer is 14."]
TRAJ = [STEPS, STEPS[:2], ["Step 1: 2+3 = 5.\n\n", "Step 2: 5*4 = 20.\n\n"], STEPS[:1]]


def _lm_pair_probs(model, ids, positions, pos_id, neg_id):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    pair = logits[positions][:, [pos_id, neg_id]].softmax(-1)
    return pair[:, 0].tolist()


def _close(a, b, tol=1e-4):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=tol)


# -- Qwen2.5-Math-PRM ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen_parts():
    from transformers import Qwen2Model

    tok = char_tokenizer()
    torch.manual_seed(1)
    backbone = Qwen2Model(tiny_config("qwen2", len(tok))).float().eval()
    g = torch.Generator().manual_seed(2)
    head = [torch.randn(64, 64, generator=g) * 0.1, torch.randn(64, generator=g) * 0.1,
            torch.randn(2, 64, generator=g) * 0.2, torch.randn(2, generator=g) * 0.1]
    return tok, backbone, head


def _qwen_by_hand(tok, backbone, head, steps):
    text = tok.apply_chat_template([
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": PROBLEM.question},
        {"role": "assistant", "content": "<extra_0>".join(s.strip() for s in steps) + "<extra_0>"}],
        tokenize=False)
    ids = tok.encode(text, add_special_tokens=False)
    step_id = tok.convert_tokens_to_ids("<extra_0>")
    positions = [i for i, t in enumerate(ids) if t == step_id]
    assert len(positions) == len(steps)
    with torch.no_grad():
        h = backbone(input_ids=torch.tensor([ids])).last_hidden_state[0, positions]
        w0, b0, w2, b2 = head
        probs = (torch.relu(h @ w0.T + b0) @ w2.T + b2).softmax(-1)[:, 1]
    return probs.tolist()


@pytest.mark.parametrize("incremental", [True, False])
def test_qwen_prm_matches_hand_computation(qwen_parts, incremental):
    tok, backbone, head = qwen_parts
    prm = QwenPRM(backbone, RewardHead(*head), tok, incremental=incremental)
    out = prm.score(PROBLEM, TRAJ)
    for steps, scores in zip(TRAJ, out.scores):
        _close(scores, _qwen_by_hand(tok, backbone, head, steps))
    assert len(set(round(s, 6) for s in out.scores[0])) > 1   # not a constant


def test_qwen_prm_checkpoint_folder_roundtrip(qwen_parts, tmp_path):
    from safetensors.torch import save_file

    tok, backbone, head = qwen_parts
    state = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    state.update({"score.0.weight": head[0], "score.0.bias": head[1],
                  "score.2.weight": head[2], "score.2.bias": head[3]})
    save_file(state, str(tmp_path / "model.safetensors"))
    cfg = backbone.config.to_dict()
    cfg["architectures"] = ["Qwen2ForProcessRewardModel"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    prm = QwenPRM.from_pretrained(str(tmp_path), tokenizer=tok)
    _close(prm.score(PROBLEM, [STEPS]).scores[0], _qwen_by_hand(tok, backbone, head, STEPS))
    # an unknown format is refused, naming what was found
    cfg["architectures"] = ["LlamaForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="not a Qwen2.5-Math-PRM-style checkpoint.*LlamaForCausalLM"):
        QwenPRM.from_pretrained(str(tmp_path), tokenizer=tok)


def test_qwen_tokenizer_without_step_token_is_refused(qwen_parts):
    _, backbone, head = qwen_parts
    tok = char_tokenizer(special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    with pytest.raises(ValueError, match="step token '<extra_0>'"):
        QwenPRM(backbone, RewardHead(*head), tok)


# -- Math-Shepherd -------------------------------------------------------------------------
@pytest.mark.parametrize("incremental", [True, False])
def test_math_shepherd_positions_and_probabilities(incremental):
    tok = char_tokenizer()
    model = tiny_causal_lm("mistral", tok, seed=3)
    prm = MathShepherdPRM(model, tok, incremental=incremental)
    out = prm.score(PROBLEM, TRAJ)
    tag, plus, minus = (tok.convert_tokens_to_ids(x) for x in ("ки", "+", "-"))
    for steps, scores in zip(TRAJ, out.scores):
        text = PROBLEM.question + " " + "\n".join(f"{s.strip()} ки" for s in steps)
        ids = tok.encode(text, add_special_tokens=True)
        positions = [i for i, t in enumerate(ids) if t == tag]
        assert len(positions) == len(steps)
        _close(scores, _lm_pair_probs(model, ids, positions, plus, minus))


def test_math_shepherd_tokenizer_without_tag():
    tok = char_tokenizer(words=["Yes", "No"])
    with pytest.raises(ValueError, match="step tag 'ки'"):
        MathShepherdPRM(tiny_causal_lm("mistral", tok), tok)


# -- RLHFlow -------------------------------------------------------------------------------
@pytest.mark.parametrize("incremental", [True, False])
def test_rlhflow_positions_and_probabilities(incremental):
    tok = char_tokenizer()
    model = tiny_causal_lm("llama", tok, seed=4)
    prm = RLHFlowPRM(model, tok, incremental=incremental)
    out = prm.score(PROBLEM, TRAJ)
    plus, minus = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
    for steps, scores in zip(TRAJ, out.scores):
        conv = []
        for j, s in enumerate(steps):
            content = PROBLEM.question + " " + s.strip() if j == 0 else s.strip()
            conv += [{"role": "user", "content": content}, {"role": "assistant", "content": "+"}]
        ids = tok.apply_chat_template(conv, tokenize=True, return_dict=False)
        ids = list(ids["input_ids"]) if isinstance(ids, dict) else list(ids)
        # the '+' of each assistant turn follows "<|im_start|>assistant\n"
        header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
        positions = [i + len(header) - 1 for i in range(len(ids))
                     if ids[i:i + len(header)] == header]
        assert all(ids[p + 1] == plus for p in positions) and len(positions) == len(steps)
        _close(scores, _lm_pair_probs(model, ids, positions, plus, minus))


# -- judge ---------------------------------------------------------------------------------
@pytest.mark.parametrize("incremental", [True, False])
def test_judge_probability_of_yes(incremental):
    tok = char_tokenizer()
    model = tiny_causal_lm("llama", tok, seed=5)
    judge = Judge(tokenizer=tok, model=model, incremental=incremental)
    out = judge.score(PROBLEM, TRAJ)
    yes, no = tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")
    for steps, scores in zip(TRAJ, out.scores):
        want = []
        for t in range(1, len(steps) + 1):
            content = f"Question:\n{PROBLEM.question}\n\nSolution so far:\n{''.join(steps[:t])}" \
                      f"\n\n{QUESTION}"
            text = tok.apply_chat_template([{"role": "user", "content": content}],
                                           tokenize=False, add_generation_prompt=True)
            ids = tok.encode(text, add_special_tokens=False)
            want += _lm_pair_probs(model, ids, [len(ids) - 1], yes, no)
        _close(scores, want)


def test_judge_shares_the_policy_model_of_an_hf_generator():
    from ttc.registry import VERIFIERS

    from ttc.engine.backends.hf_generator import HFGenerator
    from ttc.protocols import HostsCausalLM, SupportsExtend

    tok = char_tokenizer()
    gen = HFGenerator(tiny_causal_lm("llama", tok, seed=6), tok)
    assert isinstance(gen, HostsCausalLM) and not isinstance(gen, SupportsExtend)
    judge = VERIFIERS.build({"name": "judge"}, generator=gen)
    assert judge.shares == "weights"
    assert judge.scorer.host.backbone is gen.model.base_model


# -- caching and usage ---------------------------------------------------------------------
def test_incremental_usage_counts_only_new_tokens():
    tok = char_tokenizer()
    model = tiny_causal_lm("mistral", tok, seed=7)
    inc = MathShepherdPRM(model, tok, incremental=True)
    full = MathShepherdPRM(model, tok, incremental=False)
    fmt = inc.format
    prompt = len(fmt.prompt_ids(PROBLEM))
    lens = [len(fmt.step_ids(s, j)) for j, s in enumerate(STEPS)]
    a = inc.score(PROBLEM, [STEPS[:2]])
    assert (a.usage.calls, a.usage.tokens, a.usage.cached_tokens) == (1, prompt + sum(lens[:2]), 0)
    b = inc.score(PROBLEM, [STEPS, STEPS])      # extends the cached prefix; twin row shares
    assert b.usage.calls == 2 and b.usage.tokens == lens[2]
    assert b.usage.cached_tokens == (prompt + sum(lens[:2])) + (prompt + sum(lens))
    f = full.score(PROBLEM, [STEPS, STEPS])
    assert f.usage.tokens == 2 * (prompt + sum(lens)) and f.usage.cached_tokens == 0
    _close(b.scores[0], f.scores[0])


def test_cache_is_lru_bounded_and_rescoring_after_eviction_is_exact():
    tok = char_tokenizer()
    model = tiny_causal_lm("mistral", tok, seed=8)
    prm = MathShepherdPRM(model, tok, incremental=True, max_cache_tokens=120)
    first = prm.score(PROBLEM, [STEPS]).scores[0]
    prm.score(PROBLEM, [["Other step one.\n\n", "Other step two, longer than before.\n\n"]])
    assert prm.scorer.trie.cached_tokens <= 120
    again = prm.score(PROBLEM, [STEPS])
    _close(again.scores[0], first)
    assert again.usage.tokens > 0       # evicted work was run (and counted) again


def test_empty_step_is_refused():
    tok = char_tokenizer()
    prm = MathShepherdPRM(tiny_causal_lm("mistral", tok), tok)
    with pytest.raises(ValueError, match="trajectory 1 step 1 is empty"):
        prm.score(PROBLEM, [STEPS, [STEPS[0], "  \n"]])
