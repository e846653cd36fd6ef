"""torch.compile: when auto turns it on, where Inductor's cache goes, that the U-Net compiles whole
and as it computes eagerly, and that a compile failure costs one warning line, never a run.

Compiling with Inductor on 2 CPU cores takes tens of seconds: the one test that does is `slow`;
the failure paths use a backend that fails at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tiny
from ddpmkit import compiling
from ddpmkit.compiling import Compiled, decide_compile, inductor_cache_dir, use_cache_dir
from ddpmkit.nn import UNet
from ddpmkit.train import train


@pytest.mark.parametrize("asked, device, on", [
    ("auto", "cuda", True), ("auto", "cpu", False), ("auto", "mps", False),
    (True, "cpu", True), (True, "cuda", True), (False, "cuda", False), (False, "cpu", False),
])
def test_auto_compiles_on_cuda_only_and_an_explicit_choice_wins(asked, device, on):
    decision = decide_compile(asked, device)
    assert decision.on is on
    assert ("auto" in decision.why) == (asked == "auto")
    if on:
        assert "first step" in decision.describe() and str(inductor_cache_dir()) in decision.describe()
    with pytest.raises(ValueError):
        decide_compile("yes", device)


def test_inductors_cache_goes_to_the_user_cache_unless_the_user_chose(monkeypatch, tmp_path):
    monkeypatch.delenv(compiling.INDUCTOR_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert use_cache_dir() == tmp_path / "xdg" / "ddpmkit" / "inductor"
    assert compiling.os.environ[compiling.INDUCTOR_CACHE_ENV] == str(tmp_path / "xdg" / "ddpmkit" / "inductor")
    monkeypatch.setenv(compiling.INDUCTOR_CACHE_ENV, str(tmp_path / "mine"))
    assert use_cache_dir() == tmp_path / "mine"
    assert compiling.os.environ[compiling.INDUCTOR_CACHE_ENV] == str(tmp_path / "mine")


def _net(cond_dim: int = 0) -> UNet:
    torch.manual_seed(0)
    model = tiny(Path("unused"), model={"cond_dim": cond_dim, "dropout": 0.0}).model
    return UNet.from_config(model).eval()


@pytest.mark.parametrize("cond_dim", [0, 3])
def test_the_unet_compiles_without_a_graph_break(cond_dim):
    net = _net(cond_dim)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 70])
    args = (x, t) if not cond_dim else (x, t, torch.randn(2, cond_dim), torch.tensor([False, True]))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(net)(*args)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def _compiled() -> tuple[UNet, Compiled, list[str]]:
    """A tiny U-Net, it compiled (with the backend in force), and the fall-back's messages."""
    net, messages = _net(), []
    return net, Compiled(net, what="the test network", log=messages.append), messages


X, T = torch.randn(2, 3, 16, 16), torch.tensor([3, 70])


@pytest.mark.slow
def test_the_inductor_compiled_unet_computes_what_the_eager_one_does(tmp_path, monkeypatch):
    monkeypatch.setenv(compiling.INDUCTOR_CACHE_ENV, str(tmp_path / "inductor"))
    net, fast, messages = _compiled()
    with torch.no_grad():
        want, got = net(X, T), fast(X, T)
    assert not fast.failed and messages == []
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()
    assert any((tmp_path / "inductor").rglob("*")), "nothing in the Inductor cache folder"


def _failing_backend(gm, example_inputs):
    raise RuntimeError("the compiler broke\nline two of a long report")


def test_a_compile_failure_falls_back_to_eager_with_one_warning_line(monkeypatch, capfd):
    monkeypatch.setattr(compiling, "BACKEND", _failing_backend)
    torch._dynamo.reset()
    net, fast, messages = _compiled()
    with torch.no_grad():
        first, second = fast(X, T), fast(X, T)
        want = net(X, T)
    assert fast.failed and torch.equal(first, want) and torch.equal(second, want)
    assert len(messages) == 1 and "\n" not in messages[0]
    assert messages[0].startswith("warning: torch.compile of the test network failed (")
    assert "the compiler broke" in messages[0] and messages[0].endswith("running it eager")
    err = capfd.readouterr().err
    assert "Traceback" not in err


def test_an_error_of_the_network_itself_is_raised_as_without_compiling(monkeypatch):
    monkeypatch.setattr(compiling, "BACKEND", _failing_backend)
    torch._dynamo.reset()
    _, fast, messages = _compiled()
    with pytest.raises(ValueError, match="x must be"):
        fast(torch.randn(2, 5, 16, 16), torch.tensor([1, 2]))
    assert not fast.failed and messages == []


def test_training_with_a_failing_compile_warns_once_and_trains_as_eager(monkeypatch, tmp_path):
    """The warm-up compiles before the first step and puts the RNG states back: after falling back,
    the run is the eager run, loss for loss."""
    eager = train(tiny(tmp_path / "eager", train={"max_steps": 3, "compile": False}), log=lambda m: None, progress=False)
    monkeypatch.setattr(compiling, "BACKEND", _failing_backend)
    torch._dynamo.reset()
    messages: list[str] = []
    run = train(tiny(tmp_path / "compiled", train={"max_steps": 3, "compile": True}), log=messages.append, progress=False)
    warnings = [m for m in messages if m.startswith("warning: torch.compile")]
    assert len(warnings) == 1 and "the training network" in warnings[0]
    assert any("compile on (asked" in m for m in messages if m.startswith("training "))
    assert [r["loss"] for r in run.history] == [r["loss"] for r in eager.history]
