"""Reward contract, registry, entry points, composition and validation, and the rule built-ins.

Everything here is pure Python (no model); reward-model tests live in test_reward_model.py.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import rlhf_gym.rewards as rewards
from rlhf_gym.rewards import (
    CompositeReward,
    Reward,
    RewardError,
    RewardOutput,
    UnknownRewardError,
    get_reward,
    list_rewards,
    register_reward,
    resolve_reward,
)
from rlhf_gym.rewards import registry as registry_module
from tests._tiny import install_example_reward_plugin

REPO = Path(__file__).resolve().parents[1]
BUILTINS = ["exact_match", "keyword", "length", "regex", "reward_model"]


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry_module, "_registry", dict(registry_module._registry))


# Module-level rewards, reachable through "module:attr" paths.
def brevity(prompts, completions, **kwargs):
    return [-float(len(c)) for c in completions]


def make_suffix_reward(suffix: str = "!"):
    def suffix_reward(completions, **kwargs):
        return [float(c.endswith(suffix)) for c in completions]

    return suffix_reward


class WordCount(Reward):
    name = "word_count"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def __call__(self, prompts, completions, **kwargs):
        return [self.scale * len(c.split()) for c in completions]


# --- package surface -----------------------------------------------------------------------------


def test_public_api_is_exactly_the_documented_names() -> None:
    assert sorted(rewards.__all__) == sorted(
        [
            "CompositeReward",
            "Reward",
            "RewardError",
            "RewardFn",
            "RewardModel",
            "RewardModelReport",
            "RewardOutput",
            "UnknownRewardError",
            "format_for_reward_model",
            "get_reward",
            "list_rewards",
            "register_reward",
            "resolve_reward",
            "train_reward_model",
        ]
    )
    for name in rewards.__all__:
        assert getattr(rewards, name) is not None
    assert issubclass(UnknownRewardError, ValueError)
    assert issubclass(RewardError, RuntimeError)


def test_import_is_light_and_depends_on_neither_envs_nor_agents() -> None:
    code = (
        "import sys, rlhf_gym.rewards as r; r.list_rewards(); r.get_reward('length');"
        "print(sorted(m for m in ('torch', 'transformers', 'rlhf_gym.envs', 'rlhf_gym.agents')"
        " if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert result.stdout.strip() == "[]"
    for source in (REPO / "rewards").glob("*.py"):
        text = source.read_text()
        assert "rlhf_gym.envs" not in text and "rlhf_gym.agents" not in text, source


# --- TRL compatibility -----------------------------------------------------------------------------


def test_trl_style_reward_functions_work_unchanged() -> None:
    # Shapes copied from TRL's docs / trl/rewards: they take only what they need plus **kwargs.
    def reward_len(completions, **kwargs):
        return [-abs(20 - len(completion)) for completion in completions]

    def format_reward(completions, **kwargs):
        pattern = r"^<think>.*?</think><answer>.*?</answer>$"
        matches = [re.match(pattern, content) for content in completions]
        return [1.0 if match else 0.0 for match in matches]

    def reward_func(completions, ground_truth, **kwargs):
        return [
            1.0 if c.endswith(gt) else 0.0 for c, gt in zip(completions, ground_truth, strict=True)
        ]

    def uses_token_ids(prompts, completions, completion_ids, prompt_ids, **kwargs):
        return [float(len(p) + len(c)) for p, c in zip(prompt_ids, completion_ids, strict=True)]

    reward = resolve_reward([reward_len, format_reward, reward_func, uses_token_ids])
    completions = ["<think>x</think><answer>4</answer>", "the answer is 5"]
    out = reward(
        prompts=["2+2?", "2+3?"],
        completions=completions,
        ground_truth=["4</answer>", "5"],
        prompt_ids=[[1, 2], [1, 2, 3]],
        completion_ids=[[5] * 10, [6] * 4],
    )
    assert reward.names == ["reward_len", "format_reward", "reward_func", "uses_token_ids"]
    assert out.components == {
        "reward_len": [-(34 - 20), -(20 - 15)],
        "format_reward": [1.0, 0.0],
        "reward_func": [1.0, 1.0],
        "uses_token_ids": [12.0, 7.0],
    }
    np.testing.assert_array_equal(out.total, [-14 + 1 + 1 + 12, -5 + 0 + 1 + 7])


# --- spec forms ------------------------------------------------------------------------------------


def test_every_spec_form_resolves() -> None:
    kw = {"prompts": ["p", "p"], "completions": ["a b c", "hello!"]}

    by_name = resolve_reward("length")
    assert by_name.names == ["length"] and by_name.weights == [1.0]
    assert by_name(**kw).components == {"length": [3.0, 1.0]}  # no completion_ids: words

    by_path = resolve_reward(f"{__name__}:brevity")
    assert by_path.names == ["brevity"]
    assert by_path(**kw).total.tolist() == [-5.0, -6.0]

    by_callable = resolve_reward(brevity)
    assert by_callable.names == ["brevity"]

    by_instance = resolve_reward(WordCount(scale=2.0))
    assert by_instance.names == ["word_count"]
    assert by_instance(**kw).total.tolist() == [6.0, 2.0]

    by_class = resolve_reward(WordCount)
    assert by_class(**kw).total.tolist() == [3.0, 1.0]

    factory_spec = {f"{__name__}:make_suffix_reward": {"weight": 3.0, "suffix": "!"}}
    with pytest.raises(ValueError, match="neither a reward function"):
        resolve_reward(factory_spec)  # an import-path factory needs the caller's opt-in
    mix = resolve_reward(factory_spec, trust_import_factories=True)
    assert mix.names == ["make_suffix_reward"] and mix.weights == [3.0]
    assert mix(**kw).total.tolist() == [0.0, 3.0]

    as_list = resolve_reward(["length", brevity, {"length": 0.5}])
    assert as_list.names == ["length", "brevity", "length_2"]
    assert as_list.weights == [1.0, 1.0, 0.5]

    assert resolve_reward(as_list) is as_list


def test_weighted_mix_totals_are_exact() -> None:
    reward = resolve_reward(
        {
            "length": -0.5,
            "keyword": {"weight": 2.0, "keywords": ["please"]},
            "exact_match": {"weight": 10.0, "column": "answer"},
        }
    )
    assert reward.names == ["length", "keyword", "exact_match"]
    assert reward.weights == [-0.5, 2.0, 10.0]
    out = reward(
        prompts=["q1", "q2", "q3"],
        completions=["Please, please", "four", "no"],
        completion_ids=[[1, 2, 3], [4], [5, 6]],
        answer=["x", "Four ", "yes"],
    )
    assert isinstance(out, RewardOutput)
    assert out.total.dtype == np.float64 and out.total.shape == (3,)
    assert out.components == {
        "length": [3.0, 1.0, 2.0],
        "keyword": [2.0, 0.0, 0.0],
        "exact_match": [0.0, 1.0, 0.0],
    }
    np.testing.assert_array_equal(out.total, [-1.5 + 4.0, -0.5 + 10.0, -1.0])


def test_bad_specs_say_what_is_accepted() -> None:
    for bad in (42, None, 3.5, object()):
        with pytest.raises(TypeError, match="a dict \\{name: weight\\}"):
            resolve_reward(bad)
    with pytest.raises(TypeError, match="weight of reward 'length' must be a number"):
        resolve_reward({"length": "heavy"})
    with pytest.raises(ValueError, match="must be finite"):
        resolve_reward({"length": math.inf})
    with pytest.raises(TypeError, match="must be reward names"):
        resolve_reward({brevity: 1.0})
    with pytest.raises(ValueError, match="empty"):
        resolve_reward({})
    with pytest.raises(ValueError, match="empty"):
        resolve_reward([])


def test_a_factory_passed_as_a_reward_is_rejected_with_a_hint() -> None:
    with pytest.raises(
        TypeError, match="'make_suffix_reward' looks like a reward factory.*Call it first"
    ):
        resolve_reward(make_suffix_reward)
    assert resolve_reward(make_suffix_reward("?"))(
        prompts=[""], completions=["?"]
    ).total.tolist() == [1.0]

    def kwargs_only(**kwargs):
        return [float(len(c)) for c in kwargs["completions"]]

    register_reward("kwargs_only")(kwargs_only)
    assert get_reward("kwargs_only") is kwargs_only
    assert resolve_reward(kwargs_only)(prompts=[""], completions=["abc"]).total.tolist() == [3.0]


def test_each_component_is_called_once_per_batch() -> None:
    calls: list[int] = []

    def counting(prompts, completions, **kwargs):
        calls.append(len(completions))
        return [0.0] * len(completions)

    reward = resolve_reward(["length", counting, {"keyword": {"keywords": ["b"]}}])
    reward(prompts=["a"] * 5, completions=["b"] * 5)
    assert calls == [5]
    reward(prompts=["a"] * 3, completions=["b"] * 3)
    assert calls == [5, 3]


def test_component_names_fall_back_and_dedupe() -> None:
    reward = CompositeReward([brevity, brevity, lambda completions, **kw: [0.0] * len(completions)])
    assert reward.names == ["brevity", "brevity_2", "lambda"]
    with pytest.raises(ValueError, match="same length"):
        CompositeReward([brevity], weights=[1.0, 2.0])


# --- registry ----------------------------------------------------------------------------------


def test_register_function_class_and_factory() -> None:
    @register_reward("brev")
    def brev(prompts, completions, **kwargs):
        return [-float(len(c)) for c in completions]

    register_reward("words")(WordCount)

    @register_reward("ends_with")
    def ends_with(suffix: str = "."):
        def reward(completions, **kwargs):
            return [float(c.endswith(suffix)) for c in completions]

        return reward

    assert get_reward("brev") is brev
    words = get_reward("words", scale=0.5)
    assert isinstance(words, WordCount) and words(prompts=["p"], completions=["a b"]) == [1.0]
    assert get_reward("ends_with", suffix="?")(prompts=["", ""], completions=["ok?", "ok"]) == [
        1.0,
        0.0,
    ]
    assert get_reward("ends_with")(prompts=[""], completions=["ok."]) == [1.0]
    assert {"brev", "words", "ends_with"} <= set(list_rewards())
    assert list_rewards() == sorted(list_rewards())

    # In a mix the component is named after the registry name, not the inner function.
    assert resolve_reward({"ends_with": {"suffix": "?"}}).names == ["ends_with"]


def test_registering_a_name_twice_needs_overwrite() -> None:
    register_reward("dup")(brevity)
    with pytest.raises(ValueError, match="'dup' is already registered.*overwrite=True"):
        register_reward("dup")(brevity)
    with pytest.raises(ValueError, match="'length' is already registered"):
        register_reward("length")(brevity)

    def other(completions, **kwargs):
        return [1.0] * len(completions)

    register_reward("dup", overwrite=True)(other)
    assert get_reward("dup") is other
    with pytest.raises(ValueError, match="reserved for 'module:attr'"):
        register_reward("a:b")
    with pytest.raises(ValueError, match="non-empty string"):
        register_reward("")
    with pytest.raises(TypeError, match="needs a reward function"):
        register_reward("not_callable")(3)


def test_parameters_are_checked_against_the_reward_kind() -> None:
    register_reward("plain")(brevity)
    with pytest.raises(TypeError, match="'plain' is a reward function, not a factory"):
        get_reward("plain", scale=2)
    with pytest.raises(TypeError, match="'keyword' cannot be built with parameters \\['words'\\]"):
        get_reward("keyword", words=["x"])
    with pytest.raises(TypeError, match="missing a required argument: 'keywords'"):
        get_reward("keyword")

    @register_reward("broken_factory")
    def broken_factory(level: int = 1):
        return level

    with pytest.raises(TypeError, match="factory 'broken_factory' returned int"):
        get_reward("broken_factory")


def test_unknown_names_suggest_close_matches() -> None:
    with pytest.raises(UnknownRewardError) as info:
        get_reward("lenght")
    message = str(info.value)
    assert "No reward named 'lenght'. Did you mean 'length'?" in message
    for name in BUILTINS:
        assert name in message
    assert info.value.suggestions == ["length"]
    assert set(BUILTINS) <= set(info.value.available)
    assert isinstance(info.value, ValueError)

    with pytest.raises(UnknownRewardError, match="Did you mean 'reward_model'"):
        resolve_reward({"reward_modle": 1.0})
    with pytest.raises(UnknownRewardError, match="Available rewards") as info:
        get_reward("zzzzzz")
    assert "Did you mean" not in str(info.value)


def test_module_attr_paths() -> None:
    assert get_reward(f"{__name__}:brevity") is brevity
    assert get_reward(f"{__name__}:WordCount", scale=3.0)(prompts=["p"], completions=["a"]) == [3.0]
    with pytest.raises(UnknownRewardError, match="Cannot import module 'no_such_module_xyz'"):
        get_reward("no_such_module_xyz:fn")
    with pytest.raises(UnknownRewardError, match="has no attribute 'missing'"):
        get_reward(f"{__name__}:missing")


# --- entry points ----------------------------------------------------------------------------------


def _fake_distribution(root: Path, module: str, entry_points: dict[str, str], body: str) -> None:
    """A minimal installed distribution: a module plus a ``.dist-info`` importlib.metadata reads."""
    (root / f"{module}.py").write_text(body)
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[rlhf_gym.rewards]\n{lines}")


@pytest.fixture
def forget_modules():
    names: list[str] = []
    yield names
    for name in names:
        sys.modules.pop(name, None)


def test_entry_points_are_discovered_lazily(tmp_path, monkeypatch, forget_modules) -> None:
    forget_modules += ["fake_plugin_ok", "fake_plugin_broken"]
    _fake_distribution(
        tmp_path,
        "fake_plugin_ok",
        {"exclaim": "fake_plugin_ok:exclaim"},
        "def exclaim(completions, **kwargs):\n    return [float(c.count('!')) for c in completions]\n",
    )
    _fake_distribution(
        tmp_path,
        "fake_plugin_broken",
        {"broken": "fake_plugin_broken:reward"},
        "raise ImportError('plugin needs a library that is not installed')\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    names = list_rewards()
    assert {"exclaim", "broken"} <= set(names)
    # Listing names must not import plugin code.
    assert "fake_plugin_ok" not in sys.modules and "fake_plugin_broken" not in sys.modules

    assert get_reward("exclaim")(prompts=["", ""], completions=["hi!!", "hi"]) == [2.0, 0.0]
    assert resolve_reward({"exclaim": 2.0})(prompts=["x"], completions=["!"]).total.tolist() == [
        2.0
    ]
    with pytest.raises(UnknownRewardError, match="Did you mean 'exclaim'"):
        get_reward("exclain")
    with pytest.raises(RewardError, match="plugin 'broken'.*failed to load.*not installed") as info:
        get_reward("broken")
    assert info.value.plugin == "broken"
    assert isinstance(info.value.__cause__, ImportError)


def test_registry_names_take_precedence_over_entry_points(
    tmp_path, monkeypatch, forget_modules
) -> None:
    forget_modules.append("fake_plugin_shadow")
    _fake_distribution(
        tmp_path,
        "fake_plugin_shadow",
        {"length": "fake_plugin_shadow:length"},
        "def length(completions, **kwargs):\n    return [99.0] * len(completions)\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_reward("length")(prompts=["p"], completions=["a b"]) == [2.0]
    assert list_rewards().count("length") == 1


def test_example_plugin_installs_and_registers_by_entry_point(
    tmp_path, monkeypatch, forget_modules
) -> None:
    """Real packaging: pip-install examples/reward_plugin into a target dir on sys.path (~2 s)."""
    forget_modules.append("rlhf_gym_example_reward")
    target = install_example_reward_plugin(tmp_path)
    assert "shouting" not in list_rewards()
    monkeypatch.syspath_prepend(str(target))

    assert "shouting" in list_rewards()
    shouting = get_reward("shouting")
    assert shouting(prompts=["", "", ""], completions=["HEY you", "QUIET", "123"]) == [
        0.5,
        1.0,
        None,
    ]
    out = resolve_reward({"shouting": -2.0, "length": 1.0})(
        prompts=["", ""], completions=["AB cd", "42"]
    )
    assert out.components == {"shouting": [0.5, None], "length": [2.0, 1.0]}
    assert out.total.tolist() == [-1.0 + 2.0, 1.0]


# --- validation ------------------------------------------------------------------------------------


def _mix_with(fn) -> CompositeReward:
    return CompositeReward([brevity, fn], names=["brevity", "bad"])


def test_a_raising_plugin_is_named_and_chained() -> None:
    def explode(completions, **kwargs):
        raise ZeroDivisionError("boom")

    with pytest.raises(
        RewardError, match="Reward plugin 'bad' raised ZeroDivisionError: boom"
    ) as info:
        _mix_with(explode)(prompts=["p"], completions=["c"])
    assert info.value.plugin == "bad"
    assert isinstance(info.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        ([1.0], "wrong number of values: expected 2 .*got 1"),
        ([1.0, 2.0, 3.0], "wrong number of values: expected 2 .*got 3"),
        ([1.0, float("nan")], "returned nan at index 1"),
        ([float("-inf"), 0.0], "returned -inf at index 0"),
        ([1.0, "high"], "non-numeric value 'high' \\(str\\) at index 1"),
        ([[1.0], 2.0], "non-numeric value \\[1.0\\] \\(list\\) at index 0"),
        (1.0, "returned float; a reward must return a list"),
        ({"a": 1.0}, "returned dict"),
        ("1.0", "returned str"),
        (None, "returned NoneType"),
    ],
)
def test_unusable_outputs_raise_reward_error(values, pattern) -> None:
    reward = _mix_with(lambda completions, **kw: values)
    with pytest.raises(RewardError, match=pattern) as info:
        reward(prompts=["p", "q"], completions=["c", "d"])
    assert info.value.plugin == "bad"
    assert "'bad'" in str(info.value)


def test_numpy_outputs_and_scalars_are_accepted() -> None:
    reward = CompositeReward(
        [
            lambda completions, **kw: np.array([1.5, 2.5]),
            lambda completions, **kw: [np.float32(0.5), np.int64(2)],
            lambda completions, **kw: [True, False],
        ]
    )
    out = reward(prompts=["p", "q"], completions=["c", "d"])
    assert out.components == {"lambda": [1.5, 2.5], "lambda_2": [0.5, 2.0], "lambda_3": [1.0, 0.0]}
    assert out.total.tolist() == [3.0, 4.5]


def test_prompts_and_completions_must_pair_up() -> None:
    with pytest.raises(ValueError, match="2 prompts and 1 completions"):
        resolve_reward("length")(prompts=["a", "b"], completions=["c"])


def test_none_means_not_applicable() -> None:
    def sometimes(completions, **kwargs):
        return [None, 2.0, None]

    def other(completions, **kwargs):
        return [1.0, None, None]

    reward = CompositeReward([sometimes, other], weights=[3.0, -1.0])
    with pytest.warns(
        UserWarning, match=r"Every reward component returned None for sample\(s\) \[2\]"
    ):
        out = reward(prompts=["a", "b", "c"], completions=["x", "y", "z"])
    assert out.components == {"sometimes": [None, 2.0, None], "other": [1.0, None, None]}
    assert out.total.tolist() == [-1.0, 6.0, 0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning is issued once per composite
        reward(prompts=["a", "b", "c"], completions=["x", "y", "z"])


# --- built-ins ---------------------------------------------------------------------------------------


def test_length_builtin() -> None:
    prompts, completions = ["", "", ""], ["one two three", "four", ""]
    ids = [[1, 2, 3, 4, 5], [6, 7], []]
    assert get_reward("length")(prompts=prompts, completions=completions, completion_ids=ids) == [
        5.0,
        2.0,
        0.0,
    ]
    assert get_reward("length")(prompts=prompts, completions=completions) == [3.0, 1.0, 0.0]
    assert get_reward("length", unit="words")(
        prompts=prompts, completions=completions, completion_ids=ids
    ) == [3.0, 1.0, 0.0]
    assert get_reward("length", unit="chars")(prompts=prompts, completions=completions) == [
        13.0,
        4.0,
        0.0,
    ]
    assert get_reward("length", unit="chars", target=4)(
        prompts=prompts, completions=completions
    ) == [-9.0, 0.0, -4.0]
    with pytest.raises(ValueError, match="'tokens', 'words' or 'chars'"):
        get_reward("length", unit="bytes")
    with pytest.raises(TypeError, match="target"):
        get_reward("length", target=2.5)


def test_keyword_builtin() -> None:
    completions = ["Please, PLEASE help. Thanks", "no keywords", "please thank you"]
    prompts = [""] * 3
    assert get_reward("keyword", keywords=["please", "thank"])(
        prompts=prompts, completions=completions
    ) == [3.0, 0.0, 2.0]
    assert get_reward("keyword", keywords=["please"], case_sensitive=True)(
        prompts=prompts, completions=completions
    ) == [0.0, 0.0, 1.0]
    assert get_reward("keyword", keywords=["please", "thank"], mode="any")(
        prompts=prompts, completions=completions
    ) == [1.0, 0.0, 1.0]
    with pytest.raises(TypeError, match=r"wrap a single keyword in a list: \['please'\]"):
        get_reward("keyword", keywords="please")
    with pytest.raises(ValueError, match="non-empty strings"):
        get_reward("keyword", keywords=[])
    with pytest.raises(ValueError, match="'count' or 'any'"):
        get_reward("keyword", keywords=["a"], mode="all")


def test_regex_builtin() -> None:
    prompts = [""] * 3
    completions = ["<answer>42</answer>", "answer: 4 and 2", "nothing"]
    assert get_reward("regex", pattern=r"<answer>\d+</answer>")(
        prompts=prompts, completions=completions
    ) == [1.0, 0.0, 0.0]
    assert get_reward("regex", pattern=r"\d", mode="count")(
        prompts=prompts, completions=completions
    ) == [2.0, 2.0, 0.0]
    assert get_reward("regex", pattern="NOTHING", flags=re.IGNORECASE)(
        prompts=prompts, completions=completions
    ) == [0.0, 0.0, 1.0]
    with pytest.raises(
        ValueError, match=r"Invalid regular expression '\(unclosed' for the regex reward"
    ):
        get_reward("regex", pattern="(unclosed")


def test_exact_match_builtin() -> None:
    reward = get_reward("exact_match")
    out = reward(
        prompts=["", "", "", ""],
        completions=["  The   Answer\n", "Paris", "4", "anything"],
        reference=["the answer", "paris", ["four", "4"], None],
    )
    assert out == [1.0, 1.0, 1.0, None]
    strict = get_reward("exact_match", column="gold", normalize=False)
    assert strict(prompts=["", ""], completions=["Paris", "paris "], gold=["Paris", "paris"]) == [
        1.0,
        0.0,
    ]
    with pytest.raises(
        ValueError, match=r"needs the dataset column 'reference'.*only \['completion_ids', 'gold'\]"
    ):
        reward(prompts=[""], completions=["x"], gold=["x"], completion_ids=[[1]])
    mix = resolve_reward({"exact_match": 1.0})
    with pytest.raises(
        RewardError, match="plugin 'exact_match' raised ValueError.*'answer'"
    ) as info:
        mix(prompts=[""], completions=["x"], answer=["x"])
    assert info.value.plugin == "exact_match"


@pytest.mark.parametrize("module", ["length", "keyword_match", "regex_match", "exact_match"])
def test_builtin_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"rlhf_gym.rewards.{module}"))
    assert result.attempted > 0 and result.failed == 0


def test_a_config_cannot_call_arbitrary_importable_callables(tmp_path) -> None:
    """``{"os:system": {"command": ...}}`` from a flag or YAML must not run the command."""
    marker = tmp_path / "ran"
    spec = {"os:system": {"command": f"touch {marker}"}}
    with pytest.raises(ValueError, match=r"'os:system'.*--trust-reward-factories"):
        resolve_reward(spec)
    with pytest.raises((ValueError, TypeError)):  # *args signature: a function, takes no params
        resolve_reward({"subprocess:check_call": {"args": ["touch", str(marker)]}})
    assert not marker.exists()
    # A Reward subclass named by path is a reward: built with the spec's parameters, no opt-in.
    by_class = resolve_reward({f"{__name__}:WordCount": {"scale": 2.0}})
    assert by_class(prompts=["p"], completions=["a b"]).total.tolist() == [4.0]


def test_a_factory_must_return_a_reward() -> None:
    @register_reward("returns_a_factory", overwrite=True)
    def returns_a_factory(scale: float = 1.0):
        def not_a_reward(scale: float):  # no completions: a factory, not a reward
            return scale

        return not_a_reward

    with pytest.raises(TypeError, match="must return a reward function"):
        resolve_reward({"returns_a_factory": {"scale": 2.0}})
