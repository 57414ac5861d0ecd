"""``rlhf-gym train``: one typed config in, a trained adapter and a run directory out.

The run directory holds ``config.yaml``, ``metrics.csv`` (SB3's logger: ``rollout/``,
``train/``, ``eval/`` namespaces), TensorBoard events when tensorboard is installed,
``checkpoints/`` (atomic, resumable), ``eval.csv`` (held-out evaluation over training),
``reward_curve.png``, ``samples.json`` (generations before and after) and ``adapter/`` (a peft
adapter that ``PeftModel.from_pretrained`` loads).

Under ``torchrun`` the same config runs on every rank (:mod:`rlhf_gym.agents.distributed`):
``num_envs``, ``batch_size`` and ``n_steps`` are per rank (as a per-device batch size),
``total_timesteps``, ``eval_every`` and ``checkpoint_every`` count the steps of all ranks. Each
rank answers its own shard of the prompts with env seeds ``seed + rank * num_envs + i`` and
samples with agent seed ``seed + rank * num_envs`` (SB3 reseeds the env from the agent's seed,
so the two agree); rank 0 alone evaluates and writes the run directory;
checkpoints hold every rank's envs and RNGs, so a resumed run with the same number of ranks
continues exactly (another number is refused).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import inspect
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ProgressBarCallback
from stable_baselines3.common.logger import CSVOutputFormat, Logger, configure
from tqdm.rich import tqdm

from rlhf_gym.agents import checkpoints as ckpt
from rlhf_gym.agents import distributed
from rlhf_gym.agents.config import TrainConfig, env_arguments, is_default_task
from rlhf_gym.agents.evaluation import EvalStats, evaluate_model
from rlhf_gym.envs import TextGenerationEnv, make_vec_env
from rlhf_gym.envs.default_task.checks import Check, evaluation_extras, learning_checks


@dataclass
class TrainResult:
    """A finished run; on ranks other than 0 (which evaluate nothing) ``before``/``after`` are
    ``None``."""

    before: EvalStats | None
    after: EvalStats | None
    seconds: float
    output_dir: Path
    timesteps: int
    checks: list[Check] = field(default_factory=list)


def env_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """The training env's arguments: the env section, and ``eval_fraction`` of the prompts held
    out when no held-out file is given."""
    kwargs = env_arguments(cfg)
    if cfg.prompts is not None and cfg.eval_prompts is None:
        kwargs["eval_fraction"] = cfg.eval_fraction
    return kwargs


#: Answers per prompt for the group algorithms when ``--group-size`` is not given.
DEFAULT_GROUP_SIZE = 4


def group_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """``group_size``/``rounds`` of the training env: rounds exactly for the group algorithms."""
    from rlhf_gym.agents import GroupRelativePO, get_algorithm

    cls = get_algorithm(cfg.algo).cls
    if not issubclass(cls, GroupRelativePO):
        return {"group_size": cfg.group_size or 1}
    needs_groups = cls.__name__ != "REINFORCEpp"
    size = cfg.group_size or (DEFAULT_GROUP_SIZE if needs_groups else 1)
    return {"group_size": size, "rounds": True}


def eval_env(cfg: TrainConfig, train_env: TextGenerationEnv | None = None) -> TextGenerationEnv:
    """The held-out env; given ``train_env``, it reuses its tokenizer and reward (and so the one
    reward model already in memory) instead of loading them again."""
    kwargs = env_kwargs(cfg)
    if train_env is not None:
        kwargs.update(tokenizer=train_env.tokenizer, reward=_evaluation_reward(train_env.reward_fn))
    if cfg.eval_prompts is not None:
        kwargs.update(prompts=cfg.eval_prompts, split="all")
    else:
        kwargs["split"] = "eval"
    return TextGenerationEnv(**kwargs)


def _evaluation_reward(reward: Any) -> Any:
    """The training reward's components as shallow copies: a reward model's weights are shared
    (no second load), but state such as a normalising reward's running mean and std is not,
    so evaluation never moves the statistics training rewards are normalised with."""
    from rlhf_gym.rewards import CompositeReward

    return CompositeReward(
        [copy.copy(r) for r in reward.rewards], list(reward.weights), list(reward.names)
    )


class ResumableCSVOutputFormat(CSVOutputFormat):
    """SB3's CSV log, continued (not overwritten) when a run resumes.

    Rows logged after the checkpoint a run resumes from are dropped, since the resumed run
    logs those steps again.
    """

    def __init__(self, path: Path, resume_step: int | None) -> None:
        if resume_step is None or not path.exists():
            super().__init__(str(path))
            return
        trim_csv(path, "time/total_timesteps", resume_step)
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        self.file = path.open("r+")
        self.file.seek(0, 2)
        self.keys = list(header)
        self.separator = ","
        self.quotechar = '"'


class EvalCallback(BaseCallback):
    """Held-out evaluation every ``every`` steps; rows go to ``eval.csv`` and the SB3 logger.

    The schedule lives on the run (``run.eval_next``) so checkpoints save it and a resumed run
    neither repeats nor skips an evaluation.
    """

    def __init__(self, run: _Run, every: int) -> None:
        super().__init__()
        self.run = run
        self.every = every

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        step = self.run.global_steps()
        if self.every and step >= self.run.eval_next:
            self.run.eval_next += self.every
            if not self.run.dist.is_main:  # rank 0 evaluates; the others go on to the rollout
                return
            stats = self.run.evaluate(use_adapter=True)
            self.run.log_eval(step, stats)
            for key, value in stats.as_row().items():
                self.logger.record(f"eval/{key}", value)


class CheckpointCallback(BaseCallback):
    """Checkpoints between updates (after one, before the next rollout): a consistent state.

    A stop asked for with Ctrl-C (``run.stop_requested``) is honoured here: a checkpoint at the
    next rollout start, then training stops before the rollout's first step.
    """

    def __init__(self, run: _Run, every: int) -> None:
        super().__init__()
        self.run = run
        self.every = every
        self._last = 0
        self._stop = False

    def _on_training_start(self) -> None:
        self._last = self.run.global_steps()

    def _on_step(self) -> bool:
        return not self._stop

    def _on_rollout_start(self) -> None:
        step = self.run.global_steps()
        due = self.every and step - self._last >= self.every
        # A Ctrl-C reaches the ranks at different moments: any rank's stop stops them all, and
        # this one decision (not the flag, which a signal may set meanwhile) is what they act on.
        stop = distributed.any_rank(self.run.stop_requested)
        if due or stop:
            self._last = step
            self.run.checkpoint()
        self._stop = stop


class GlobalProgressBar(ProgressBarCallback):
    """SB3's progress bar following ``num_timesteps``, which counts the steps of every rank
    (exact after each rollout; within one it advances by this rank's steps)."""

    def _on_training_start(self) -> None:
        self._start = self.model.num_timesteps
        self.pbar = tqdm(total=self.locals["total_timesteps"] - self._start)

    def _on_step(self) -> bool:
        self.pbar.update(max(0, self.model.num_timesteps - self._start - self.pbar.n))
        return True


class DistributedLogger(Logger):
    """SB3's logger whose every dump first makes the values global over ranks
    (:func:`rlhf_gym.agents.distributed.reduce_logs`): all ranks dump at the same points of the
    loop; only rank 0 has output formats."""

    def dump(self, step: int = 0) -> None:
        reduced = distributed.reduce_logs(dict(self.name_to_value))
        self.name_to_value.clear()
        self.name_to_value.update(reduced)
        for key in reduced:  # a key only other ranks logged (e.g. no episode ended here yet)
            self.name_to_excluded.setdefault(key, ())
        super().dump(step)


class _Run:
    """The state of one training run; ``train`` below drives it."""

    def __init__(self, cfg: TrainConfig) -> None:
        from rlhf_gym.agents import load_agent, make_agent

        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.dist = distributed.info()
        check_model_path(cfg.model, "--model")
        check_model_path(cfg.tokenizer, "--tokenizer")
        self.venv = make_vec_env(
            cfg.num_envs,
            seed=self.dist.env_seed(cfg.seed, cfg.num_envs),
            shard=self.dist.shard,  # (0, 1) alone: every prompt
            **group_kwargs(cfg),
            **env_kwargs(cfg),
        )
        self.eval_env = eval_env(cfg, self.venv.envs[0])
        self.metrics, self.positive_threshold = evaluation_extras(is_default_task(cfg))
        self.resumed_from = ckpt.latest_checkpoint(self.out) if cfg.resume else None
        self.eval_next: int = cfg.eval_every  # the evaluation schedule, saved in checkpoints
        self.stop_requested = False  # set by Ctrl-C: checkpoint at the next rollout and stop
        self.checkpointed_at: int | None = None  # the step of this run's last checkpoint
        if cfg.resume and self.resumed_from is None:
            raise FileNotFoundError(
                f"--resume: no checkpoint under {ckpt.checkpoint_dir(self.out)}; start without "
                "--resume, or point --output-dir at the run to continue"
            )
        if self.resumed_from is not None:
            agent_dir = self.resumed_from / ckpt.AGENT_DIR
            if not agent_dir.is_dir():
                raise FileNotFoundError(
                    f"{self.resumed_from} has no {ckpt.AGENT_DIR}/ (a checkpoint of an older "
                    "rlhf-gym, saved as a pickle zip); load it in Python with "
                    "load_agent(path, env, trust_pickle=True) if you trust it"
                )
            state = self._rank_state(ckpt.load_state(self.resumed_from))
            self.agent = load_agent(agent_dir, self.venv, device=cfg.device)
            self.resume_state = state
            self.agent.num_timesteps = int(state["num_timesteps"])
            self._set_kl_coef(state.get("kl_coef"))
            self._restore_loop(state)
            ckpt.set_rng_state(state["rng"])
        else:
            lora: dict[str, Any] = {
                "r": cfg.lora_r,
                "lora_alpha": cfg.lora_alpha,
                "lora_dropout": 0.0,
            }
            if cfg.lora_target_modules:
                lora["target_modules"] = cfg.lora_target_modules
            algo_kwargs = _algo_kwargs(cfg)
            self.agent = make_agent(
                cfg.algo,
                self.venv,
                model=cfg.model or _default_model(),
                lora=lora,
                kl_coef=cfg.kl_coef,
                kl_target=cfg.kl_target,
                kl_horizon=cfg.kl_horizon,
                seed=self.dist.agent_seed(cfg.seed, cfg.num_envs),
                device=cfg.device,
                policy_kwargs={
                    "trust_remote_code": cfg.trust_remote_code,
                    "dtype": cfg.dtype,
                    "gradient_checkpointing": cfg.gradient_checkpointing,
                    "logit_memory_mb": cfg.logit_memory_mb,
                },
                **algo_kwargs,
            )
        self.agent.set_logger(self._logger())
        if self.resumed_from is not None:
            pending = self.resume_state["loop"].get("pending_logs", {})
            for key, (value, excluded) in pending.items():
                self.agent.logger.record(key, value, exclude=tuple(excluded) or None)

    def _logger(self) -> Logger:
        """SB3's logger to ``progress.csv`` (and TensorBoard) on rank 0; other ranks only take
        part in the reductions of :class:`DistributedLogger`."""
        formats: list[Any] = []
        if self.dist.is_main:
            logger = configure(str(self.out), ["tensorboard"] if _has_tensorboard() else [])
            formats = logger.output_formats
            resumed_step = self.global_steps() if self.resumed_from is not None else None
            formats.append(ResumableCSVOutputFormat(self.out / "progress.csv", resumed_step))
        if not self.dist.enabled:
            return Logger(str(self.out), formats)
        return DistributedLogger(str(self.out), formats)

    def global_steps(self) -> int:
        """Env steps of all ranks: the algorithms count them all (see
        :func:`rlhf_gym.agents.distributed.count_steps`)."""
        return int(self.agent.num_timesteps)

    def _rank_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's state as this rank saved it (rank 0's at the top level, the other
        ranks' under ``other_ranks``); a checkpoint of another number of ranks is refused."""
        saved = int(state.get("world_size", 1))
        if saved != self.dist.world_size:
            raise ValueError(
                f"--resume: {self.resumed_from} was written by {saved} rank(s) and this run has "
                f"{self.dist.world_size}; each rank's envs and random streams are in the "
                f"checkpoint, so resume with {saved} rank(s) (torchrun --nproc-per-node ...) or "
                "start a new run in another --output-dir"
            )
        if self.dist.rank == 0:
            return state
        return {**state, **state["other_ranks"][self.dist.rank - 1]}

    @property
    def model(self) -> Any:
        return self.agent.policy.model

    def _kl_controller(self) -> Any:
        return getattr(self.agent, "kl_controller", None)

    def _set_kl_coef(self, value: float | None) -> None:
        controller = self._kl_controller()
        if controller is not None and value is not None:
            controller.value = float(value)

    def evaluate(self, use_adapter: bool) -> EvalStats:
        env = self.eval_env
        rows = list(env.dataset)[: self.cfg.eval_episodes]
        return evaluate_model(
            self.model,
            env.tokenizer,
            rows,
            env.reward_fn,
            max_new_tokens=env.max_new_tokens,
            use_adapter=use_adapter,
            stop_strings=env.stop_strings,
            eos_token_ids=env.eos_token_ids,
            stop_on_eos=env.stop_on_eos,
            positive_threshold=self.positive_threshold,
            metrics=self.metrics,
            seed=self.cfg.seed,
            n_samples_kept=self.cfg.num_samples,
        )

    def log_eval(self, step: int, stats: EvalStats) -> None:
        path = self.out / "eval.csv"
        row = {"step": step, **stats.as_row()}
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def checkpoint(self) -> Path | None:
        """Everything the next rollout depends on, taken at a rollout's start (see
        :meth:`_restore_loop`): weights and optimizer (``agent/``), RNGs, the envs with their
        episodes in flight, SB3's loop state and the evaluation schedule. With several ranks
        every rank sends its own RNGs, envs and loop state to rank 0, which writes them all
        (the weights and optimizer are equal on every rank); other ranks return ``None``."""
        controller = self._kl_controller()
        agent = self.agent
        self.checkpointed_at = self.global_steps()
        states = distributed.all_gather_json(self._own_state())
        if not self.dist.is_main:
            return None
        state = {
            "num_timesteps": int(agent.num_timesteps),
            "world_size": self.dist.world_size,
            "kl_coef": float(controller.value) if controller is not None else None,
            **states[0],
            "other_ranks": states[1:],
            "config": dataclasses.asdict(self.cfg),
        }
        return ckpt.save_checkpoint(self.out, self.global_steps(), agent, state)

    def _own_state(self) -> dict[str, Any]:
        """This rank's part of a checkpoint: its RNGs, envs and SB3 loop state."""
        agent = self.agent
        return {
            "rng": ckpt.rng_state(),
            "venv": self.venv.vector_env.state_dict(),
            "loop": {
                **agent.loop_state(),  # SB3's loop (rlhf_gym.agents.loop_state)
                "eval_next": self.eval_next,
                # Recorded but not yet dumped: SB3 writes an update's train/ metrics (and the
                # eval/ row of this rollout start) with the NEXT progress.csv row.
                "pending_logs": {
                    key: [_jsonable_log(value), list(agent.logger.name_to_excluded.get(key, ()))]
                    for key, value in agent.logger.name_to_value.items()
                },
            },
        }

    def _restore_loop(self, state: dict[str, Any]) -> None:
        """Put the envs (episodes in flight included) and SB3's loop where the checkpoint was,
        so ``learn(reset_num_timesteps=False)`` continues the same rollout stream instead of
        resetting every env onto new prompts."""
        loop = state["loop"]
        self.venv.vector_env.load_state_dict(state["venv"])
        self.agent.load_loop_state(loop, self.venv.vector_env.observations())
        self.eval_next = loop["eval_next"]


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.algo`` on the env ``cfg`` describes; see the module docstring for outputs.

    Under ``torchrun`` this joins the process group first (:func:`distributed.init`) and every
    rank runs the same config (module docstring)."""
    start = time.perf_counter()
    dist_info = distributed.init()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dist_info.is_main:
        (out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    run = _Run(cfg)
    if run.resumed_from is not None:
        done = run.global_steps()
        if done >= cfg.total_timesteps:
            raise RunFinished(
                f"{out} already finished at step {done} (total_timesteps={cfg.total_timesteps}); "
                "nothing changed. Raise --total-timesteps to train on."
            )
        if dist_info.is_main:
            trim_csv(out / "eval.csv", "step", done)
    before = run.evaluate(use_adapter=False) if dist_info.is_main else None
    if run.resumed_from is None and before is not None:
        run.log_eval(0, before)
    callbacks: list[BaseCallback] = [
        EvalCallback(run, cfg.eval_every),
        CheckpointCallback(run, cfg.checkpoint_every),
    ]
    if cfg.progress_bar and dist_info.is_main:
        callbacks.append(GlobalProgressBar())
    remaining = max(0, cfg.total_timesteps - run.global_steps())  # steps of all ranks
    # The learner's own wall time (rollouts, updates and the callbacks' evaluations; not model
    # loading nor the before/after evaluation): SB3's time/time_elapsed is whole seconds and is
    # logged before each update, so it leaves out the last one.
    learn_start = time.perf_counter()
    with _stop_on_ctrl_c(run):
        run.agent.learn(
            remaining,
            callback=CallbackList(callbacks),
            reset_num_timesteps=run.resumed_from is None,
        )
    learn_seconds = time.perf_counter() - learn_start
    if distributed.any_rank(run.stop_requested):  # every rank takes the same branch
        raise RunStopped(
            f"stopped by Ctrl-C after a checkpoint at step {run.checkpointed_at}; continue "
            f"with: rlhf-gym train --output-dir {out} --resume (and the same options)"
        )
    run.checkpoint()
    if not dist_info.is_main:
        distributed.shutdown()  # waits for rank 0's evaluation and writes, then leaves
        return TrainResult(None, None, time.perf_counter() - start, out, run.global_steps())
    assert before is not None
    after = run.evaluate(use_adapter=True)
    run.log_eval(run.global_steps(), after)
    run.agent.policy.save_pretrained(out / "adapter")
    (out / "samples.json").write_text(
        json.dumps({"before": before.samples, "after": after.samples}, indent=2, ensure_ascii=False)
    )
    plot_reward_curve(out)
    # The default task's bounds mean nothing for a user's reward: no PASS/MISS in their runs.
    checks = learning_checks(before, after) if is_default_task(cfg) else []
    summary = {
        "before": before.as_row(),
        "after": after.as_row(),
        "timesteps": run.global_steps(),
        "learn_seconds": round(learn_seconds, 3),  # this process's learn() (a resume: its part)
        "checks": [dataclasses.asdict(c) for c in checks],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if dist_info.enabled:
        distributed.shutdown()  # every rank leaves the process group together
    return TrainResult(before, after, time.perf_counter() - start, out, run.global_steps(), checks)


def _jsonable_log(value: Any) -> Any:
    """A logged value as JSON (numpy scalars become Python numbers)."""
    return value.item() if isinstance(value, np.generic) else value


@contextlib.contextmanager
def _stop_on_ctrl_c(run: _Run) -> Iterator[None]:
    """The first Ctrl-C asks for a clean stop (a checkpoint at the next rollout start, then
    exit); a second one interrupts at once. Only in the main thread, where signals arrive."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask(signum: int, frame: Any) -> None:
        run.stop_requested = True
        signal.signal(signal.SIGINT, previous)  # the next Ctrl-C: the default, immediate
        print("\nCtrl-C: stopping after a checkpoint at the next rollout (again: now)", flush=True)

    previous = signal.signal(signal.SIGINT, ask)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class RunStopped(Exception):
    """Training stopped cleanly on Ctrl-C after writing a checkpoint."""


def check_model_path(source: str | None, flag: str) -> None:
    """A ``--model``/``--tokenizer`` that is clearly a local path must exist: otherwise the
    first loader to try it (the env's tokenizer) would report a missing tokenizer for a
    missing model."""
    if source is None or Path(source).exists():
        return
    looks_local = (
        Path(source).is_absolute() or source.startswith((".", "~")) or source.count("/") > 1
    )
    if looks_local:
        raise FileNotFoundError(
            f"{flag} {source!r}: no such directory. Fix: pass a directory written by "
            "save_pretrained (a model directory holds its tokenizer too) or a hub id that is "
            "available offline."
        )


class RunFinished(Exception):
    """``--resume`` of a run that already reached ``total_timesteps``: nothing to do."""


def trim_csv(path: Path, column: str, last: int) -> None:
    """Drop the rows of ``path`` whose ``column`` is past ``last`` (a resumed run writes them
    again; rows without a value are kept); a missing file or column is left alone."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or column not in rows[0]:
        return
    col = rows[0].index(column)
    kept = [r for r in rows[1:] if not r[col] or float(r[col]) <= last]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([rows[0], *kept])


def plot_reward_curve(out: Path) -> Path | None:
    """``reward_curve.png`` from the rollout rewards in ``progress.csv`` and held-out evals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    progress = out / "progress.csv"
    if progress.exists():
        rows = list(csv.DictReader(progress.open()))
        pts = [
            (float(r["time/total_timesteps"]), float(r["rollout/ep_rew_mean"]))
            for r in rows
            if r.get("rollout/ep_rew_mean") and r.get("time/total_timesteps")
        ]
        if pts:
            ax.plot(*np.array(pts).T, label="rollout reward (train prompts)")
    evals = out / "eval.csv"
    if evals.exists():
        rows = list(csv.DictReader(evals.open()))
        ax.plot(
            [float(r["step"]) for r in rows],
            [float(r["reward_mean"]) for r in rows],
            "o-",
            label="held-out reward",
        )
    ax.set_xlabel("environment steps (tokens)")
    ax.set_ylabel("mean episode reward")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "reward_curve.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _algo_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """The generic training flags the chosen algorithm takes (A2C has no batch_size or n_epochs).

    Flags the algorithm lacks are dropped when they hold their default; set explicitly (by flag
    or YAML), they are refused in one line that names the flag and the algorithm.
    """
    from rlhf_gym.agents import get_algorithm

    cls = get_algorithm(cfg.algo).cls
    accepted: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            accepted |= set(inspect.signature(klass.__init__).parameters)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    kwargs = {}
    for key in ("n_steps", "batch_size", "n_epochs", "learning_rate", "grad_chunk_size"):
        value = getattr(cfg, key)
        if value is None or (key not in accepted and value == defaults[key]):
            continue
        if key not in accepted and not (key == "n_epochs" and "num_iterations" in accepted):
            flag = "--" + key.replace("_", "-")
            raise ValueError(
                f"{flag} (YAML {key}) is not an option of --algo {cfg.algo}; leave it unset "
                "for this algorithm"
            )
        if key == "n_epochs" and "num_iterations" in accepted:
            key = "num_iterations"  # the group algorithms' name for passes over a rollout
        kwargs[key] = value
    return kwargs


def _default_model() -> str:
    from rlhf_gym.envs import default_task

    return str(default_task.policy_path())


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True
