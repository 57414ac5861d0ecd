"""The main job on the embedded default task: the learned behaviour is real, not reward hacking.

Runs ``rlhf-gym train``'s defaults (PPO + LoRA, 16k steps, KL 0.5, minibatches of 128
transitions made of whole episodes) in-process with one thread, which makes it deterministic.
Measured on this seed with one thread (2-core CPU): held-out reward -0.07 -> +4.24, rated
positive 48% -> 93%, lexicon sentiment (never seen by the reward model) 0.01 -> 0.73,
perplexity under the base 2.57 -> 2.90 (1.13x), distinct-2 0.99x the base's, KL 1.5. Seeds 1,
2 and 3 gave perplexity ratios 1.28x, 1.11x and 1.14x and reward gains of +4.1 to +4.3. With
minibatches of 64 whole-episode transitions seed 3 reached 1.68x, over the 1.5x fluency bound,
which is why PPO's default batch is 128; with KL 0.4 (random-transition minibatches) seed 1 had
reached 1.55x, which is why the KL default is 0.5.
The bounds below leave room.
"""

from __future__ import annotations

import json

import pytest

from rlhf_gym.agents.training import TrainConfig, train


@pytest.mark.slow
def test_default_task_main_job_learns_the_preference_and_stays_fluent(tmp_path):
    result = train(TrainConfig(output_dir=str(tmp_path / "run"), progress_bar=False))
    before, after = result.before, result.after
    assert after.reward_mean - before.reward_mean >= 2.0
    assert after.positive_share >= 0.8 and before.positive_share <= 0.6
    assert after.metrics["lexicon_sentiment"] - before.metrics["lexicon_sentiment"] >= 0.2
    assert after.base_ppl <= 1.5 * before.base_ppl
    assert after.distinct_2 >= 0.75 * before.distinct_2
    assert 0.0 < after.kl < 10.0 and abs(before.kl) < 1e-4  # before: the adapter is a no-op
    assert all(check.passed for check in result.checks), result.checks
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["timesteps"] == 16384
    assert 0.0 < summary["learn_seconds"] < result.seconds  # learn()'s own time, within the job's
