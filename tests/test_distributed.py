"""Data-parallel training under torchrun: 2 ranks of 1 thread each, gloo, on the CPU.

Equivalence: an update on 2 ranks x n envs gives the trainable weights of ONE process with 2n
envs holding both ranks' rollouts (replayed from what the ranks recorded, so the prompts and
sampled tokens are the same), for PPO, MaskablePPO, A2C, GRPO and REINFORCE++, within ``ATOL``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf_gym.agents import distributed
from tests import _distributed_worker as worker

ROOT = Path(__file__).resolve().parents[1]
#: Float sums in another order (per rank, then across ranks) move weights by ~1e-8; a wrong
#: normalisation or a missing average moves them by ~lr (1e-3).
ATOL = 1e-6
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def torchrun(
    *args: str, nproc: int = 2, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node nproc ARGS`` from the repository root."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", *args]  # fmt: skip
    return subprocess.run(
        cmd, cwd=ROOT, env=env or _env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, tiny_lm_dir) -> Path:
    out = tmp_path_factory.mktemp("dp")
    algos = ["ppo", "maskable_ppo", "a2c", "grpo", "reinforce_pp"]
    done = torchrun("-m", "tests._distributed_worker", "record", str(out), str(tiny_lm_dir), *algos)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.parametrize("algo", ["ppo", "maskable_ppo", "a2c", "grpo", "reinforce_pp"])
def test_two_ranks_equal_one_process_with_both_rollouts(recorded, tiny_lm_dir, algo):
    ranks = [load_file(str(recorded / f"{algo}.rank{r}.safetensors")) for r in range(2)]
    for name in ranks[0]:  # the ranks stay identical: averaged gradients, one optimizer state
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    records = [json.loads((recorded / f"{algo}.rank{r}.json").read_text()) for r in range(2)]
    weights, kl_coef = worker.replay(algo, str(tiny_lm_dir), records)
    base = worker.build(algo, str(tiny_lm_dir), 4, None, worker.SEED)
    moved = max(
        float((weights[n] - p.detach()).abs().max())
        for n, p in base.policy.named_parameters()
        if p.requires_grad
    )
    assert moved > 100 * ATOL, "the update did not move the weights: nothing was compared"
    worst = max(float((weights[n] - ranks[0][n]).abs().max()) for n in weights)
    assert worst < ATOL, f"{algo}: 2 ranks differ from one process by {worst:.2e}"
    # The adaptive KL controller measured the KL of both ranks' rollouts, not its own.
    rank_kl = float((recorded / f"{algo}.rank0.kl").read_text())
    assert rank_kl == pytest.approx(kl_coef, rel=1e-5)
    assert kl_coef != worker.settings(algo, 2)["kl_coef"]
    if algo == "maskable_ppo":  # stopped by target_kl after its first step, on every rank
        assert moved < 1.5e-3


def test_ranks_answer_disjoint_prompts(recorded):
    """Each rank's shard: the prompts of rank 0's episodes never appear in rank 1's."""
    prompts = []
    for r in range(2):
        episodes = json.loads((recorded / f"grpo.rank{r}.json").read_text())
        prompts.append({tuple(e["input_ids"][: e["prompt_len"]]) for e in episodes})
    assert prompts[0] and prompts[1] and not prompts[0] & prompts[1]


def test_one_process_is_untouched_by_the_distributed_layer():
    """Without torchrun: one rank, every collective the identity."""
    assert not distributed.enabled()
    assert distributed.init() == distributed.DistInfo()
    assert distributed.all_reduce([1.5, 2.0]) == [1.5, 2.0]
    assert distributed.all_gather_json({"a": 1}) == [{"a": 1}]
    assert distributed.reduce_logs({"time/fps": 3}) == {"time/fps": 3}


# ------------------------------------------------------------------------------ the CLI
@pytest.fixture
def cli_task(tmp_path, tiny_lm_dir) -> list[str]:
    prompts = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"prompt": f"the movie number {i} was"}) for i in range(20)]
    prompts.write_text("\n".join(lines))
    return [
        "--model", str(tiny_lm_dir), "--prompts", str(prompts), "--reward", '{"regex": {"pattern": "[a-z]", "mode": "count"}}',
        "--max-prompt-tokens", "8", "--max-new-tokens", "6", "--num-envs", "2", "--eval-episodes", "4",
        "--eval-fraction", "0.2", "--no-progress-bar", "--algo", "grpo", "--group-size", "2",
    ]  # fmt: skip


def _train(*args: str, nproc: int = 2, **kw) -> subprocess.CompletedProcess:
    return torchrun("-m", "rlhf_gym.agents.cli", "train", *args, nproc=nproc, **kw)


def test_killed_two_rank_run_resumes_bit_for_bit(tmp_path, cli_task):
    """SIGKILL a 2-rank run between checkpoints; --resume on 2 ranks ends with the adapter, the
    eval rows and the rollout rewards of the run that was never interrupted."""
    common = [*cli_task, "--total-timesteps", "800", "--checkpoint-every", "16",
              "--eval-every", "128"]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = _train(*common, "--output-dir", str(whole))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = re.findall(r"(\d+) steps in", done.stdout)  # rank 0 alone reports
    assert len(reports) == 1 and 800 <= int(reports[0]) < 850  # the steps of both ranks
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "rlhf_gym.agents.cli", "train", *common, "--output-dir", str(killed)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    pointer = killed / "checkpoints" / "latest"
    deadline, step = time.time() + 240, 0
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists():
            state = killed / "checkpoints" / pointer.read_text().strip() / "state.json"
            if state.exists():
                saved = json.loads(state.read_text())
                step = saved["num_timesteps"]  # the steps of both ranks
                if step >= 48:
                    break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 48 <= step < 800, "killed too late: the run had finished"
    assert len(saved["other_ranks"]) == 1  # rank 1's envs and RNGs are in the checkpoint
    resumed = _train(*common, "--output-dir", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    a = (whole / "adapter" / "adapter_model.safetensors").read_bytes()
    b = (killed / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a == b
    assert (whole / "eval.csv").read_text() == (killed / "eval.csv").read_text()

    def rewards(run: Path) -> list[str]:
        import csv

        rows = csv.DictReader((run / "progress.csv").open())
        return [f"{r['time/total_timesteps']} {r['rollout/reward_mean']}" for r in rows]

    assert rewards(whole) == rewards(killed) and len(rewards(whole)) >= 4
    # The same checkpoint on one process is refused with the reason, not half-resumed.
    one = subprocess.run(
        [sys.executable, "-m", "rlhf_gym.agents.cli", "train", *common, "--output-dir",
         str(killed), "--resume", "--total-timesteps", "320"],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 2
    assert "written by 2 rank(s) and this run has 1" in " ".join(one.stdout.split())


def test_a_failing_rank_ends_every_rank_with_its_error(tmp_path, cli_task):
    """Rank 1's reward plugin raises mid-run: the run ends promptly, non-zero, showing rank 1's
    error, and rank 0 does not wait out the collective timeout."""
    (tmp_path / "flaky.py").write_text(
        "import os\n"
        "calls = 0\n"
        "def reward(prompts, completions, **kw):\n"
        "    global calls\n"
        "    calls += 1\n"
        "    if os.environ['RANK'] == '1' and calls > 3:\n"
        "        raise RuntimeError('flaky reward failed on purpose')\n"
        "    return [0.0] * len(completions)\n"
    )
    at = cli_task.index("--reward")
    args = [*cli_task[:at], "--reward", "flaky:reward", *cli_task[at + 2 :]]
    start = time.time()
    env = dict(_env(), PYTHONPATH=str(tmp_path), RLHF_GYM_DIST_TIMEOUT="120")
    done = torchrun("-m", "rlhf_gym.agents.cli", "train", *args, "--total-timesteps", "4000",
                    "--output-dir", str(tmp_path / "run"), env=env)  # fmt: skip
    took = time.time() - start
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0
    assert (
        "[rank 1] Reward plugin 'reward' raised RuntimeError: flaky reward failed on purpose" in out
    )
    assert took < 110, f"the other rank hung for {took:.0f} s"


def test_one_process_refuses_trpo_on_two_ranks(tmp_path, cli_task):
    args = [*cli_task[: cli_task.index("--algo")], "--algo", "trpo"]  # no --group-size
    done = _train(*args, "--total-timesteps", "32", "--output-dir", str(tmp_path / "run"))
    assert done.returncode != 0
    assert "TRPO cannot train on 2 ranks" in " ".join((done.stdout + done.stderr).split())


def test_example_script_runs_on_two_ranks():
    done = torchrun(str(ROOT / "examples" / "torchrun_agent.py"), "--steps", "64",
                    "--num-envs", "4", timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 rank(s), grpo: held-out reward" in done.stdout


def test_rank_seeds_match_what_sb3_reseeds():
    """SB3's set_random_seed reseeds the env with the agent's seed: the two must agree."""
    info = distributed.DistInfo(rank=1, world_size=2)
    assert info.agent_seed(3, 4) == info.env_seed(3, 4) == 7


def test_logger_writes_a_key_only_another_rank_logged(tmp_path, monkeypatch):
    """Rank 0 dumps values the reduction brought from other ranks (e.g. ep_rew_mean before
    any of its own episodes ended) with every output format, TensorBoard's included."""
    from stable_baselines3.common.logger import make_output_format

    from rlhf_gym.agents.training import DistributedLogger

    monkeypatch.setattr(
        distributed, "reduce_logs", lambda values: {**values, "rollout/ep_rew_mean": 1.5}
    )
    formats = [make_output_format("csv", str(tmp_path))]
    try:
        formats.append(make_output_format("tensorboard", str(tmp_path)))
    except ImportError:
        pass
    logger = DistributedLogger(str(tmp_path), formats)
    logger.record("train/loss", 0.5)
    logger.dump(8)
    assert "rollout/ep_rew_mean" in (tmp_path / "progress.csv").read_text()
