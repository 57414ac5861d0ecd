"""The ``rlhf-gym`` command line: train, evaluate, generate, train-rm, rewards, algos.

Every subcommand's options come from a typed dataclass (see :mod:`rlhf_gym.agents.config`), may
be set in a YAML file with ``--config``, and are listed by ``rlhf-gym <command> --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import linecache
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from rlhf_gym.agents.config import (
    EvaluateConfig,
    GenerateConfig,
    TrainConfig,
    TrainRMConfig,
    add_dataclass_arguments,
    build_config,
    env_arguments,
    is_default_task,
)

console = Console()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-gym",
        description="RL fine-tuning of language models with LoRA agents (stable-baselines3) on a Gymnasium env.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "train": (TrainConfig, "train a LoRA policy (default: PPO on the embedded default task)"),
        "evaluate": (EvaluateConfig, "held-out reward, KL, fluency and diversity, base vs adapter"),
        "generate": (GenerateConfig, "sample completions"),
        "train-rm": (TrainRMConfig, "train a reward model from preference pairs"),
    }
    for name, (cls, text) in commands.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", default=None, help="YAML file of options; flags override it")
        p.add_argument("--debug", action="store_true", help="show the full traceback of any error")
        add_dataclass_arguments(p, cls)
    sub.add_parser("rewards", help="list reward plugins", description="list reward plugins")
    sub.add_parser("algos", help="list RL algorithms", description="list RL algorithms")
    build = sub.add_parser("build-default-task", help="rebuild the embedded default task's assets")
    build.add_argument(
        "--out", default=None, help="output directory (default: the package's assets)"
    )
    build.add_argument("--quick", action="store_true", help="a tiny build for tests")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = _parser().parse_args(argv)
    if args.command in ("train", "evaluate", "generate", "train-rm"):  # the model commands
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-checkpoint "Loading weights" bars drown ours
        # Raised inside peft/transformers on every adapter load; nothing a user can act on.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    try:
        return _dispatch(args)
    except Exception as err:
        return _report(err, debug=getattr(args, "debug", False))


def _report(err: Exception, *, debug: bool) -> int:
    """One line for errors a user can act on (exit 2; ``--debug`` re-raises); others propagate.

    The classes are looked up here, not at import, so ``rlhf-gym rewards`` imports no torch.
    """
    from rlhf_gym.rewards.errors import RewardError

    training = sys.modules.get("rlhf_gym.agents.training")
    main_rank = os.environ.get("RANK", "0") == "0"  # every rank ends alike; one says so
    if training is not None and isinstance(err, training.RunFinished):
        if main_rank:
            console.print(Text(str(err)))  # Text: shown as written, never read as markup
        return 0
    if training is not None and isinstance(err, training.RunStopped):
        if main_rank:
            console.print(Text(str(err)))
        return 130  # the shell's code for a run ended by SIGINT
    actionable = (FileNotFoundError, ValueError, OSError, FloatingPointError, RewardError)
    if isinstance(err, (TypeError, KeyError)) and _raised_on_purpose(err):
        actionable = (TypeError, KeyError)  # our own checks (a bad spec, a missing column)
    if debug or not isinstance(err, actionable):
        raise err
    rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    line = Text.assemble(("error:", "bold red"), f" {rank}{err}  (--debug shows the traceback)")
    console.print(line)
    return 2


def _raised_on_purpose(err: BaseException) -> bool:
    """Whether ``err`` came from a ``raise`` statement in rlhf_gym's own code (a check with a
    message for the user), not from a bug (``None + 1``) or deep inside a library."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    package_dirs = [str(Path(m.__file__).parent) for m in _our_packages()]
    if not any(filename.startswith(d) for d in package_dirs):
        return False
    return linecache.getline(filename, tb.tb_lineno).strip().startswith("raise")


def _our_packages() -> list[Any]:
    import rlhf_gym.agents
    import rlhf_gym.envs
    import rlhf_gym.rewards

    return [rlhf_gym.agents, rlhf_gym.envs, rlhf_gym.rewards]


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "rewards":
        from rlhf_gym.rewards import list_rewards

        for name in list_rewards():
            print(name)
        return 0
    if args.command == "algos":
        from rlhf_gym.agents import list_algorithms

        for name in list_algorithms():
            print(name)
        return 0
    if args.command == "build-default-task":
        from rlhf_gym.envs.default_task.build import main as build_main

        return build_main(
            (["--out", args.out] if args.out else []) + (["--quick"] if args.quick else [])
        )
    if args.command == "train":
        from rlhf_gym.agents.training import train

        cfg = build_config(TrainConfig, args, args.config)
        result = train(cfg)
        if result.before is not None:  # rank 0 (or the only process) reports
            _print_train_report(result)
        return 0
    if args.command == "evaluate":
        return _evaluate(build_config(EvaluateConfig, args, args.config))
    if args.command == "generate":
        return _generate(build_config(GenerateConfig, args, args.config))
    if args.command == "train-rm":
        cfg = build_config(TrainRMConfig, args, args.config)
        from rlhf_gym.rewards import train_reward_model

        report = train_reward_model(
            cfg.pairs,
            cfg.model,
            cfg.output_dir,
            epochs=cfg.epochs,
            lr=cfg.learning_rate,
            batch_size=cfg.batch_size,
            eval_fraction=cfg.eval_fraction,
            seed=cfg.seed,
        )
        print(json.dumps(dataclasses.asdict(report), indent=2))
        return 0
    raise AssertionError(args.command)


def stats_table(title: str, columns: dict[str, Any], *, default_task: bool = True) -> Table:
    """A table of EvalStats side by side (one column per model); the "rated positive" row uses
    the default task's reward threshold and is shown only for it."""
    table = Table(title=title)
    table.add_column("held-out metric")
    for name in columns:
        table.add_column(name, justify="right")
    rows = [
        ("mean reward", "reward_mean", "{:.3f}"),
        ("reward std", "reward_std", "{:.3f}"),
        ("rated positive", "positive_share", "{:.1%}"),
        ("KL to reference", "kl", "{:.3f}"),
        ("perplexity under base", "base_ppl", "{:.2f}"),
        ("distinct-1", "distinct_1", "{:.3f}"),
        ("distinct-2", "distinct_2", "{:.3f}"),
        ("mean length (tokens)", "mean_length", "{:.1f}"),
    ]
    for label, key, fmt in rows:
        if key == "positive_share" and not default_task:
            continue
        table.add_row(label, *(fmt.format(getattr(s, key)) for s in columns.values()))
    metric_names = list(next(iter(columns.values())).metrics)
    for m in metric_names:
        table.add_row(f"{m} (independent)", *(f"{s.metrics[m]:.3f}" for s in columns.values()))
    return table


def _sample_text(prompt: str, completion: str, chat: bool) -> Text:
    """A sample as a person reads it: a chat row's user turn, then its answer on a line of its
    own (the rendered template is not shown); a plain prompt runs on into its continuation.
    A ``Text``, so model and user text print as written (no markup, no emoji codes)."""
    line = Text(f"  {prompt}")
    line.append("\n    -> " if chat else "", style="cyan")
    line.append(completion, style="cyan")
    return line


def _print_samples(title: str, samples: list[dict[str, Any]]) -> None:
    console.print(f"[bold]{title}[/]")
    for s in samples:
        line = _sample_text(str(s["prompt"]), str(s["completion"]), bool(s.get("chat")))
        line.append(f"  (reward {s['reward']:.2f})", style="dim")
        console.print(line)


def _print_train_report(result: Any) -> None:
    console.print(
        stats_table(
            f"{result.timesteps} steps in {result.seconds:.0f} s",
            {"before (base)": result.before, "after (LoRA)": result.after},
            default_task=bool(result.checks),
        )
    )
    if not result.checks:  # a user's task: the figures, no default-task thresholds
        gain = result.after.reward_mean - result.before.reward_mean
        console.print(
            f"held-out reward {result.before.reward_mean:+.3f} -> "
            f"{result.after.reward_mean:+.3f} ({gain:+.3f})",
            highlight=False,
        )
    for check in result.checks:
        mark = "[green]PASS[/]" if check.passed else "[yellow]MISS[/]"
        console.print(f"{mark} {check.name}: {check.detail}", highlight=False)
    _print_samples("samples before", result.before.samples)
    _print_samples("samples after", result.after.samples)
    console.print(
        Text(
            f"run directory: {result.output_dir}  (adapter/, reward_curve.png, progress.csv, eval.csv)"
        )
    )
    console.print(f"total time: {result.seconds:.1f} s")


def _load_policy_model(adapter: str | None, model: str | None) -> Any:
    from peft import PeftModel

    from rlhf_gym.agents.lora import load_causal_lm

    base = model
    if base is None and adapter is not None:
        base = json.loads((Path(adapter) / "adapter_config.json").read_text()).get(
            "base_model_name_or_path"
        )
    if base is None:
        from rlhf_gym.envs import default_task

        base = str(default_task.policy_path())
    lm, _ = load_causal_lm(base, attn_implementation=None)  # the one causal-LM loader
    if adapter is not None:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"--adapter {adapter!r} holds no adapter_config.json (save one with policy.save_pretrained)"
            )
        lm = PeftModel.from_pretrained(lm, adapter)
    return lm.eval(), base


def _evaluate(cfg: EvaluateConfig) -> int:
    from rlhf_gym.agents.evaluation import evaluate_model
    from rlhf_gym.agents.training import check_model_path
    from rlhf_gym.envs import TextGenerationEnv

    check_model_path(cfg.model, "--model")
    check_model_path(cfg.adapter, "--adapter")
    lm, base = _load_policy_model(cfg.adapter, cfg.model)
    explicit = cfg.model is not None or cfg.adapter is not None
    env = TextGenerationEnv(
        **env_arguments(cfg, tokenizer=base if explicit else None),
        split="eval" if cfg.prompts is None else "all",
    )
    from rlhf_gym.envs.default_task.checks import evaluation_extras

    default = is_default_task(cfg)
    metrics, threshold = evaluation_extras(default)
    rows = list(env.dataset)[: cfg.episodes]
    kwargs = dict(
        max_new_tokens=env.max_new_tokens,
        stop_strings=env.stop_strings,
        eos_token_ids=env.eos_token_ids,
        stop_on_eos=env.stop_on_eos,
        positive_threshold=threshold,
        metrics=metrics,
        seed=cfg.seed,
    )
    columns = {
        "base": evaluate_model(lm, env.tokenizer, rows, env.reward_fn, use_adapter=False, **kwargs)
    }
    if cfg.adapter is not None:
        columns["adapter"] = evaluate_model(
            lm, env.tokenizer, rows, env.reward_fn, use_adapter=True, **kwargs
        )
    console.print(stats_table(f"{len(rows)} held-out prompts", columns, default_task=default))
    for name, stats in columns.items():
        _print_samples(f"samples ({name})", stats.samples)
    if cfg.output:
        Path(cfg.output).write_text(
            json.dumps({k: dataclasses.asdict(v) for k, v in columns.items()}, indent=2)
        )
    return 0


def _generate(cfg: GenerateConfig) -> int:
    from rlhf_gym.agents.evaluation import sample
    from rlhf_gym.envs import PromptDataset, TextGenerationEnv

    lm, base = _load_policy_model(cfg.adapter, cfg.model)
    if cfg.prompt:
        from rlhf_gym.envs import eos_token_ids, load_tokenizer

        tokenizer = load_tokenizer(base)
        chat = cfg.chat_template
        if chat is None:  # an instruct model answers its own template, as pipelines render it
            chat = bool(getattr(tokenizer, "chat_template", None))
        rows = list(
            PromptDataset.from_source(
                cfg.prompt, tokenizer, max_prompt_tokens=10**6, chat_template=chat
            )
        )
        eos_ids = eos_token_ids(tokenizer, base)  # the model's EOS ids, as the env would stop
    else:
        env = TextGenerationEnv(split="eval")
        tokenizer, rows = env.tokenizer, list(env.dataset)[: cfg.num]
        eos_ids = env.eos_token_ids
    out = sample(
        lm,
        tokenizer,
        rows,
        max_new_tokens=cfg.max_new_tokens,
        eos_token_ids=eos_ids,
        seed=cfg.seed,
    )
    for row, text in zip(out.rows, out.completions, strict=True):
        console.print(_sample_text(row.shown, text, row.chat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
