"""The shared continuous-batching policy, step by step on small hand-checked numbers."""

from __future__ import annotations

import pytest

from profiling import BatchScheduler, EngineConfig, SequenceTooLongError, StepPlan


def make_scheduler(kv: int = 1000, seqs: int = 256, budget: int = 8192,
                   chunked: bool = True) -> BatchScheduler:
    return BatchScheduler(EngineConfig(max_num_seqs=seqs, max_num_batched_tokens=budget,
                                       enable_chunked_prefill=chunked), kv)


def step(s: BatchScheduler, tokens: dict[int, int]) -> StepPlan:
    """Run one step, counting tokens delivered per sequence as the emulator does."""
    plan = s.schedule()
    decoding = s.decoding() if plan.decode else []
    prompt_done, _ = s.finish_step(plan)
    for rid in decoding + prompt_done:
        tokens[rid] = tokens.get(rid, 0) + 1
    return plan


def run_to_end(s: BatchScheduler, tokens: dict[int, int]) -> dict[int, int]:
    """Step until nothing is left; then the cache is empty."""
    for _ in range(1000):
        if step(s, tokens).empty:
            break
    assert not s.running and not s.waiting and s.kv_used_tokens == 0
    return tokens


def test_admission_is_fcfs_up_to_max_num_seqs() -> None:
    s = make_scheduler(seqs=2)
    for rid in range(3):
        s.add(rid, 4, 5)
    plan = s.schedule()
    # Two slots: 0 and 1 are admitted whole (4 + 4 tokens), 2 waits; both sample a token.
    assert plan == StepPlan([(0, 4), (1, 4)], True, 8, 4 * 2.0 + 4 * 2.0, 8, 0, 0, 2)
    assert list(s.waiting) == [2] and list(s.running) == [0, 1] and s.kv_used_tokens == 8


def test_admission_waits_for_the_kv_watermark() -> None:
    s = make_scheduler(kv=100)
    s.add(0, 60, 5)
    s.add(1, 40, 5)
    plan = s.schedule()
    # 60 fits 0.99 * 100 = 99; 60 + 40 = 100 > 99 does not, and FCFS stops there.
    assert plan.chunks == [(0, 60)] and list(s.waiting) == [1]


def test_prompt_is_chunked_into_the_leftover_budget() -> None:
    s = make_scheduler(budget=10)
    s.add(0, 25, 3)
    works = []
    for _ in range(3):
        plan = s.schedule()
        works.append((plan.chunks, plan.prefill_attn_work, plan.prefill_kv_tokens,
                      plan.sampled_seqs))
        s.finish_step(plan)
    # 25 = 10 + 10 + 5; work c (s + c/2): 10*5 = 50, 10*15 = 150, 5*22.5 = 112.5.
    assert works == [([(0, 10)], 50.0, 10, 0), ([(0, 10)], 150.0, 20, 0),
                     ([(0, 5)], 112.5, 25, 1)]
    s.add(1, 30, 3)
    plan = s.schedule()
    # Seq 0 decodes (context 25 + 1 = 26), seq 1 gets the rest of the budget: 10 - 1 = 9.
    assert plan == StepPlan([(1, 9)], True, 9, 9 * 4.5, 9, 1, 26, 1)
    assert s.prefilling == [1]


def test_v0_steps_are_prompt_only_or_decode_only() -> None:
    s = make_scheduler(budget=20, chunked=False)
    s.add(0, 12, 5)
    s.finish_step(s.schedule())
    s.add(1, 12, 5)
    s.add(2, 12, 5)
    plan = s.schedule()
    # A prompt is admissible: the step computes whole prompts only, 12 (+ 12 > 20: stop).
    assert plan.chunks == [(1, 12)] and not plan.decode and plan.decode_seqs == 0
    s.finish_step(plan)
    plan = s.schedule()
    assert plan.chunks == [(2, 12)]


def test_v0_decodes_when_the_prompt_is_within_the_watermark() -> None:
    s = make_scheduler(kv=100, chunked=False)
    s.add(0, 89, 50)
    s.finish_step(s.schedule())                  # kv: 89 + 1 = 90
    s.add(1, 10, 5)
    plan = s.schedule()
    # 90 + 10 = 100 > 0.99 * 100: not admissible, so the step decodes (it used to stall).
    assert plan.decode and plan.decode_seqs == 1 and plan.chunks == []


def test_preemption_evicts_the_newest_decoding_sequence_and_recomputes_it() -> None:
    s = make_scheduler(kv=20)
    tokens: dict[int, int] = {}
    s.add(0, 8, 10)
    s.add(1, 8, 10)
    step(s, tokens)                              # both prompts: kv 8 + 8 + 1 + 1 = 18
    assert (s.kv_used_tokens, s.n_decode, s.ctx_decode_tokens) == (18, 2, 18)
    step(s, tokens)                              # decode: kv 20 <= 20, no preemption
    assert s.preemptions == 0
    step(s, tokens)                              # decode: kv 22 > 20
    # The newest, 1, is evicted with 3 tokens generated: context 8 + 3 = 11 leaves the cache.
    assert s.preemptions == 1 and list(s.waiting) == [1] and list(s.running) == [0]
    assert (s.kv_used_tokens, s.n_decode, s.ctx_decode_tokens) == (11, 1, 11)
    assert tokens == {0: 3, 1: 3}
    # 1 waits (11 + 11 > 19.8) until 0 ends, then recomputes an 11-token prompt and goes on.
    assert step(s, tokens).chunks == []
    assert run_to_end(s, tokens) == {0: 10, 1: 10}
    assert s.preemptions == 1


def test_remove_frees_the_kv_cache_at_once() -> None:
    s = make_scheduler(kv=40, budget=10)
    tokens: dict[int, int] = {}
    s.add(0, 8, 10)
    step(s, tokens)                              # 0's prompt: kv 8 + 1 = 9
    s.add(1, 8, 10)
    step(s, tokens)                              # 0 decodes, 1's prompt: kv 10 + 8 + 1 = 19
    s.add(2, 5, 1)
    assert s.remove(0)                           # decoding: its 8 + 2 tokens leave
    assert (s.kv_used_tokens, s.n_decode, s.ctx_decode_tokens) == (9, 1, 9)
    assert s.remove(2) and not s.waiting         # waiting: just dequeued
    assert not s.remove(2) and 2 not in s
    s.add(3, 25, 4)
    plan = s.schedule()                          # 1 decodes, 3 takes a 10 - 1 = 9 chunk
    assert plan.chunks == [(3, 9)] and s.kv_used_tokens == 18
    assert s.remove(3)                           # mid-step: the reserved chunk is freed too
    assert s.kv_used_tokens == 9 and s.prefilling == []
    assert s.finish_step(plan) == ([], []) and s.kv_used_tokens == 10
    tokens = {}
    assert run_to_end(s, tokens) == {1: 8}       # 1 had 2 of its 10 tokens


def test_fits_ever_and_check() -> None:
    s = make_scheduler(kv=100)
    # floor(0.99 * 100) = 99 tokens per sequence.
    assert s.max_seq_tokens == 99
    assert s.fits_ever(50, 49) and not s.fits_ever(50, 50)
    with pytest.raises(SequenceTooLongError, match=r"at most 99 tokens .* requested 100 tokens "
                       r"\(50 in the prompt, 50 in the completion\)\. Please reduce max_tokens "
                       "to at most 49"):
        s.check(50, 50)
    with pytest.raises(ValueError, match="shorten the prompt"):
        s.check(120, 1)
    with pytest.raises(ValueError, match="kv_capacity_tokens=0 must be >= 1"):
        make_scheduler(kv=0)
