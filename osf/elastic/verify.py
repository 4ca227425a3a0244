"""Guards that keep a wrong model from leaving OSF silently.

* Build time (:func:`check_build`): after channels are reordered, the supernet's largest
  config must reproduce the original model's outputs, on the example inputs and on a second
  input with another batch size (and sequence length, for token inputs) where the model
  takes one. On a mismatch each dim is permuted alone: a dim whose own permutation changes
  the output has a member the analysis missed, and the error names it.
* Build time (:func:`check_corners`): the smallest config and one sampled config must run
  on the example inputs (one forward each) and give finite outputs of the original's shapes;
  a failure names the config and the module that was running.
* Extract time (:func:`check_extract`): the extracted model must reproduce the supernet at
  its config. On a mismatch each changed dim (and each dropped layer) is extracted alone to
  name the one at fault.

Tolerances are relative errors by output dtype (:data:`TOLERANCE`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import torch
from torch import nn

from osf.ir.apply import permute_dims
from osf.ir.trace import flatten_output

if TYPE_CHECKING:
    from osf.elastic.supernet import Supernet

# float32: deep random-init models drift ~1e-4 from summation order alone (24-layer Mamba-130M);
# members the analysis missed move outputs by 1e-2 and more
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}


class VerificationError(RuntimeError):
    """A supernet or an extracted subnet does not compute what it must; the message names the culprit."""


def output_tensors(outputs: Mapping[str, Any]) -> list[torch.Tensor]:
    """The floating-point tensors of a flattened model output (``flatten_output``), in order."""
    return [t.detach() for t in outputs.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]


Inputs = tuple  # (positional tensors, keyword tensors), as the trace recorded them


@torch.no_grad()
def run(model: nn.Module, inputs: Inputs) -> list[torch.Tensor]:
    """The model's task outputs on ``inputs``, called as a user calls it (its default options,
    caches included). Hidden states, which a reordered supernet returns in its own channel
    order, and caches are left out of the comparison, as the trace leaves them out."""
    args, kwargs = inputs
    return output_tensors(flatten_output(model(*args, **kwargs)))


def trace_inputs(meta: Mapping[str, Any]) -> list[Inputs]:
    """The inputs the guards check on: what was traced, and the replay's input of another
    batch size and length (when the model takes it)."""
    inputs = [(tuple(meta["example_args"]), dict(meta["example_kwargs"]))]
    if meta.get("shape_check") is not None:
        args, kwargs, _ = meta["shape_check"]
        inputs.append((tuple(args), dict(kwargs)))
    return inputs


def relative_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """Largest ``||got - want|| / ||want||`` over the outputs; inf when their number or shapes differ."""
    if len(got) != len(want):
        return float("inf")
    worst = 0.0
    for a, b in zip(got, want):
        if a.shape != b.shape:
            return float("inf")
        a, b = a.double(), b.double()
        finite = torch.isfinite(b)
        signs = dict(nan=0.0, posinf=1.0, neginf=-1.0)
        if not torch.equal(torch.isfinite(a), finite) or not torch.equal(a[~finite].nan_to_num(**signs),
                                                                        b[~finite].nan_to_num(**signs)):
            return float("inf")  # infinities or NaNs in other places (masked logits may hold -inf)
        a, b = a[finite], b[finite]
        err = (a - b).norm().item() / max(b.norm().item(), 1e-30)
        worst = max(worst, err)
    return worst


def tolerance(outputs: list[torch.Tensor]) -> float:
    return max((TOLERANCE.get(t.dtype, 1e-4) for t in outputs), default=1e-4)


@dataclass
class Reference:
    """What a model must compute on the check inputs: the original model's outputs (build
    check) or the supernet's at a config (extract check)."""

    inputs: list[Inputs]
    outputs: list[list[torch.Tensor]]

    @classmethod
    def from_trace(cls, meta: Mapping[str, Any]) -> "Reference":
        """The original model's outputs on :func:`trace_inputs`: those a trace on real tensors
        recorded (no extra forward), else one forward of the model per input (call it before the
        weights are reordered)."""
        inputs = trace_inputs(meta)
        if meta.get("example_outputs") is None:  # a trace on fake tensors computed no values
            return cls(inputs, [run(meta["model"], inp) for inp in inputs])
        outputs = [output_tensors(meta["example_outputs"])]
        if meta.get("shape_check") is not None:
            outputs.append(output_tensors(meta["shape_check"][2]))
        return cls(inputs, outputs)

    def worst(self, model: nn.Module) -> tuple[float, float, int]:
        """(relative error, tolerance, index of the worst input) of ``model`` against the reference."""
        worst, where = 0.0, 0
        for i, (inp, want) in enumerate(zip(self.inputs, self.outputs)):
            err = relative_error(run(model, inp), want)
            if err > worst:
                worst, where = err, i
        return worst, tolerance(self.outputs[0]), where


def _describe_input(i: int) -> str:
    return "the example inputs" if i == 0 else "a second input of another batch size / length"


def check_build(sn: "Supernet", reference: Reference, permuted: list[str]) -> None:
    """Raise :class:`VerificationError` unless the largest config reproduces ``reference``."""
    from osf.kernels.mamba import unpatched

    with sn.use(sn.space.largest()):
        err, tol, where = reference.worst(sn.model)
        if err <= tol:
            return
        culprits = _permutation_culprits(sn, reference, permuted, tol)
        if culprits:
            dims = ", ".join(repr(d) for d in culprits)
            pin = ", ".join(f"{d!r}: [{sn.ir.dims[d].size}]" for d in culprits)
            raise VerificationError(
                f"osf.supernet: the largest config differs from the original model (relative error {err:.3g} > "
                f"{tol:g} on {_describe_input(where)}): permuting {dims} alone changes the output, so the analysis "
                f"missed a member of it. Keep it whole with space={{{pin}}}, or report this model; "
                "verify=False skips this check")
        with unpatched(sn.model):
            plain, _, _ = reference.worst(sn.model)
    if plain <= tol:
        raise VerificationError(
            f"osf.supernet: with osf.kernels the model's outputs differ from the original (relative error {err:.3g} > "
            f"{tol:g}); transformers' own kernels reproduce it. Pass kernels=False and report this model")
    raise VerificationError(
        f"osf.supernet: the largest config differs from the original model (relative error {err:.3g} > {tol:g} on "
        f"{_describe_input(where)}) and no single dim's permutation explains it: is the model deterministic in "
        "eval mode? Report this model; verify=False skips this check")


CORNER_SEED = 0  # the sampled config of check_corners: the same on every build


def check_corners(sn: "Supernet", reference: Reference) -> None:
    """Raise :class:`VerificationError` unless the smallest config and one sampled config
    (:data:`CORNER_SEED`) run on the example inputs and give finite outputs of the shapes the
    original gives. One forward each: a size the analysis did not see (a number in the model's
    code, an attribute it could not bind) fails here, at build, rather than in a search."""
    inputs, want = reference.inputs[0], reference.outputs[0]
    largest = sn.space.largest()
    corners = {"smallest": sn.space.smallest(), "sampled": sn.space.sample(CORNER_SEED)}
    for what, cfg in corners.items():
        if cfg == largest:
            continue  # check_build covers it
        running: list[str] = []
        try:
            with sn.use(cfg):
                got = run(sn.model, inputs)
        except Exception as e:
            with contextlib.suppress(Exception), sn.use(cfg), _record_running(sn.model, running):
                run(sn.model, inputs)  # again, hooked (no cost when it runs): which module raises
            where = (f" in module {running[-1] or '<the model>'!r} "
                     f"({type(sn.model.get_submodule(running[-1])).__name__})" if running else "")
            raise VerificationError(
                f"osf.supernet: the {what} config fails on the example inputs{where}: {type(e).__name__}: "
                f"{_first_line(e)}; config {dict(cfg)}. A size the analysis did not see is read there: keep that "
                "dim whole with space=, or report this model; verify=False skips this check") from e
        problem = _output_problem(got, want)
        if problem:
            raise VerificationError(
                f"osf.supernet: the {what} config {problem} on the example inputs; config {dict(cfg)}. Keep the dims "
                "it shrinks whole with space=, or report this model; verify=False skips this check")


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else ""


def _output_problem(got: list[torch.Tensor], want: list[torch.Tensor]) -> str:
    """What is wrong with a subnet's outputs next to the original's: their number or shapes, or
    non-finite values where the original's are finite ("" when nothing)."""
    if len(got) != len(want):
        return f"returns {len(got)} output tensors where the original returns {len(want)}"
    for i, (a, b) in enumerate(zip(got, want)):
        if a.shape != b.shape:
            return f"returns output {i} of shape {tuple(a.shape)} where the original's is {tuple(b.shape)}"
        if not bool(torch.isfinite(a)[torch.isfinite(b)].all()):
            return f"returns NaN or infinite values in output {i} where the original's are finite"
    return ""


@contextlib.contextmanager
def _record_running(model: nn.Module, running: list[str]) -> Iterator[None]:
    """Within the block, ``running`` is the stack of module paths being executed (innermost last):
    after an exception it still holds the module that raised it."""
    handles = []
    for name, mod in model.named_modules():
        def enter(_m: nn.Module, _args: Any, name: str = name) -> None:
            running.append(name)

        def leave(_m: nn.Module, _args: Any, _out: Any) -> None:
            running.pop()
        handles.append(mod.register_forward_pre_hook(enter))
        handles.append(mod.register_forward_hook(leave))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _permutation_culprits(sn: "Supernet", reference: Reference, dims: list[str], tol: float) -> list[str]:
    """Dims whose permutation alone changes the model's output (each restored afterwards)."""
    base = [run(sn.model, inp) for inp in reference.inputs]
    gen = torch.Generator().manual_seed(0)
    culprits = []
    for d in dims:
        perm = torch.randperm(sn.ir.dims[d].size, generator=gen)
        permute_dims(sn.ir, {d: perm}, sn.model)
        try:
            changed = any(relative_error(run(sn.model, inp), want) > tol
                          for inp, want in zip(reference.inputs, base))
        finally:
            permute_dims(sn.ir, {d: torch.argsort(perm)}, sn.model)
        if changed:
            culprits.append(d)
    return culprits


def check_extract(sn: "Supernet", cfg: Mapping[str, Any], sub: nn.Module, expected: Reference,
                  extract_unchecked: Callable[[Mapping[str, Any]], nn.Module]) -> None:
    """Raise :class:`VerificationError` unless ``sub`` reproduces the supernet's outputs at ``cfg``
    (``expected``)."""
    try:
        err, tol, _ = expected.worst(sub)
    except Exception as e:
        raise VerificationError(
            f"extract: the extracted {type(sub).__name__} fails on the example inputs where the supernet runs "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); this config is not supported for "
            "this model class: keep such choices out of the search with space=, or report this model") from e
    if err <= tol:
        return
    largest = sn.space.largest()
    changes = [k for k in cfg if cfg[k] != largest.get(k)]
    first = expected.inputs[0]
    culprits = []
    for k in changes:
        alone = dict(largest)
        alone[k] = cfg[k]
        with sn.use(alone):
            want = run(sn.model, first)
        if relative_error(run(extract_unchecked(alone), first), want) > tol:
            culprits.append(k)
    what = (f"it goes wrong when {', '.join(repr(c) for c in culprits)} alone changes" if culprits
            else f"no single change of {changes} explains it, their combination does")
    raise VerificationError(
        f"extract: the extracted model differs from the supernet at this config (relative error {err:.3g} > {tol:g}); "
        f"{what}. Keep those choices out of the search with space=, or report this model; verify=False skips "
        "this check")
