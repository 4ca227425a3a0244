"""The weight-sharing supernet: ``osf.supernet(model)``.

The model is changed *in place* (like PEFT's injection): its channels are reordered by
importance with a function-preserving permutation, so every subnet is a prefix of every
dim. Setting a config swaps each affected parameter for a slice of the full one (a view
where the kept channels are contiguous; views of each run, as a :class:`LinearRuns`, where a
Linear keeps several runs of its output rows, like Mamba's ``[x | z]``), sets the recorded size attributes
(``num_heads``, ``intermediate_size``...) and replaces dropped layers by a skip. The
model's own forward then runs the subnet, so outputs, ``generate()`` and lm-eval's
``HFLM(pretrained=sn.model)`` work unchanged. Pass ``copy=True`` to keep the original.
"""
from __future__ import annotations

import contextlib
import copy as copy_module
import dataclasses
import math
import weakref
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, NamedTuple

import torch
from torch import nn

import osf.elastic.verify as verify_module
from osf.elastic.importance import (DATA_METHODS, IMPORTANCE_METHODS, block_importance, channel_importance,
                                    greedy_block_order, resolve_calibration, split_batch, warn_random_inputs)
from osf.errors import InputTypeError
from osf.ir import IR, analyze
from osf.ir.apply import SkipBlock, apply_attributes, get_tensor, permute_dims, select_positions
from osf.ir.inputs import default_inputs
from osf.ir.ir import HEAD_DIM, HEADS, RANK, STATE
from osf.modes import eval_mode
from osf.space import Config, SearchSpace

if TYPE_CHECKING:
    from osf.elastic.config import SupernetConfig

FRACTIONS = (1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8)


def default_choices(size: int, kind: str) -> list[int]:
    """Fractions 1, 7/8, ..., 1/4 of ``size``: widths in multiples of 8 (of 1 when small),
    heads in whole heads, d_state in multiples of 4; head_dim stays whole."""
    if kind == HEAD_DIM:
        return [size]
    if kind == HEADS:
        step = 1
    elif kind == STATE:
        step = 4 if size >= 8 else 1
    elif kind == RANK:
        step = 8 if size >= 64 else 1
    else:
        step = 8 if size >= 64 else 1
    out = {size}
    for f in FRACTIONS[1:]:
        v = max(step, int(round(size * f / step)) * step)
        if v < size:
            out.add(v)
    return sorted(out, reverse=True)


class Supernet(nn.Module):
    """A model whose every subnet (config) can be run in place, counted, trained and extracted.

    The supernet is an ``nn.Module`` over the shared full weights: ``parameters()``,
    ``state_dict()``, ``.to()``, ``.train()``/``.eval()`` and ``DistributedDataParallel`` see
    them, whatever config is active. The active config's tensors are slices of them taken
    inside autograd, so ``loss.backward()`` on any subnet accumulates into the shared weights.

    Attributes:
        model: the live model; calling it (or the supernet) runs the active subnet.
        ir: the analysis of the model (dims, blocks, attributes).
        space: the search space (:class:`osf.SearchSpace`).
        config: the active config.
    """

    def __init__(self, model: nn.Module, ir: IR, space: SearchSpace, example_inputs: Any):
        super().__init__()
        object.__setattr__(self, "model", model)  # not a registered child: its slots hold the slices
        self.ir = ir
        self.space = space
        self.example_inputs = example_inputs
        self._aliases: dict[str, list[str]] = {}
        for alias, canonical in ir.tied.items():
            if canonical in ir.tensor_axes:
                self._aliases.setdefault(canonical, []).append(alias)
        leaf_to_dim = {d.var: d.name for d in ir.dims.values()}
        self._tensor_dims: dict[str, list[str]] = {}
        for name, vars_ in ir.tensor_axes.items():
            dims = sorted({leaf_to_dim[l] for v in vars_ for l in ir.alg.leaves(v) if l in leaf_to_dim})
            if dims:
                self._tensor_dims[name] = dims
        self._layers: dict[str, nn.Module] = {b.name: model.get_submodule(b.name) for b in ir.blocks}
        self._skips: dict[str, SkipBlock] = {}
        self._block_index = {b.name: b for b in ir.blocks}
        owners = {n.rpartition(".")[0] for n in ir.tensor_axes} | {a.module for a in ir.attrs}
        for alias in ir.tied:
            owners.add(alias.rpartition(".")[0])
        self._modules_by_path = {p: model.get_submodule(p) if p else model for p in sorted(owners)}
        resized = {n.rpartition(".")[0] for n in self._tensor_dims}
        resized |= {a.rpartition(".")[0] for n in self._tensor_dims for a in self._aliases.get(n, ())}
        self._resized_modules = [self._modules_by_path[p] for p in sorted(resized)]  # whose sizes a switch syncs
        self._dim_sizes = {d.name: d.size for d in ir.dims.values()}
        self._full_keys = {name: tuple(self._dim_sizes[d] for d in dims) for name, dims in self._tensor_dims.items()}
        self._block_slots = [(b.name, model.get_submodule(b.stack) if b.stack else model, b.index) for b in ir.blocks]
        self._read_full_weights()
        self.config: Config = space.largest()
        # a tensor someone changes in place (an optimizer step) makes its slices stale: the
        # model re-slices those before each forward, however it is called
        self._refresh_handle = model.register_forward_pre_hook(_RefreshSlices(self))

    def _read_full_weights(self) -> None:
        """(Re)read the shared full tensors from the model (at the largest config) and register
        every parameter once, under the model's own names."""
        self._full: dict[str, torch.Tensor] = {name: get_tensor(self.model, name) for name in self.ir.tensor_axes}
        # where each tensor is installed: (its module's _parameters or _buffers, leaf), ties included
        self._slots: dict[str, list[tuple[dict, str]]] = {}
        for name in self._tensor_dims:
            for n in [name] + self._aliases.get(name, []):
                owner, _, leaf = n.rpartition(".")
                mod = self._modules_by_path[owner]
                self._slots.setdefault(name, []).append(
                    (mod._parameters if leaf in mod._parameters else mod._buffers, leaf))
        self._slices: dict[tuple, _Slice] = {}  # (name, sizes) -> its slice
        self._plans: dict[tuple, list[tuple[int, torch.Tensor]]] = {}  # (name, sizes) -> [(axis, kept positions)]
        self._gathered_bytes = 0
        self._gathered: dict[tuple, None] = {}  # cache keys of copies, oldest first
        # gathered slices are copies: cache at most half the model's size of them
        self._gathered_budget = sum(t.numel() * t.element_size() for t in self._full.values()) // 2
        self._installed: dict[str, tuple[tuple, torch.Tensor]] = {}  # name -> (sizes, installed tensor)
        self._live: list[str] = []  # installed names that hold a slice, not the full tensor
        self._autograd = False  # which form of the slices is installed (see _Slice)
        self._split_views = getattr(self, "_split_views", True)
        self._trainable = any(t.requires_grad for t in self._full.values())
        self._parameters.clear()
        seen: set[int] = set()
        for name, p in self.model.named_parameters(remove_duplicate=False):
            if id(p) not in seen:
                seen.add(id(p))
                self._parameters[name] = p

    # ------------------------------------------------------------------ running
    def forward(self, *args, **kwargs):
        """Run the active subnet (the model's own forward)."""
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):
        # nn.Module's registries first, then the model's API (generate, device, config...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or "model" not in self.__dict__:
                raise
        return getattr(self.__dict__["model"], name)

    def train(self, mode: bool = True) -> "Supernet":
        """Set training mode on the model, dropped layers included."""
        super().train(mode)
        self.model.train(mode)
        for layer in self._layers.values():
            layer.train(mode)
        return self

    @contextlib.contextmanager
    def _at_largest(self, reread: bool = False) -> Iterator[None]:
        """Run a block with the full tensors in the model; with ``reread`` the block may replace
        or convert them, and they are read (and registered) again before slicing."""
        active = self.config
        self.set_config(self.space.largest())
        try:
            yield
        finally:
            if reread:
                self._read_full_weights()
            self.set_config(active)

    def _apply(self, fn, recurse: bool = True):
        # .to(), .double(), .cuda()...: convert the full model, then slice the converted weights
        with self._at_largest(reread=True):
            self.model._apply(fn)
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "Supernet":
        """Set ``requires_grad`` on every shared weight."""
        with self._at_largest(reread=True):
            self.model.requires_grad_(requires_grad)
        return self

    def state_dict(self, *args, **kwargs):
        """The full model's state dict (shared weights, the model's own names)."""
        with self._at_largest():
            return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load full weights (as :meth:`state_dict` gives them) into the shared tensors, in place."""
        if assign:
            raise ValueError("load_state_dict(assign=True) would replace the shared tensors; use assign=False")
        with self._at_largest():
            return self.model.load_state_dict(state_dict, strict=strict)

    def set_config(self, cfg: Mapping[str, Any]) -> None:
        """Make ``cfg`` the active subnet (validated; see :meth:`SearchSpace.validate`)."""
        cfg = self.space.validate(cfg)
        sizes = {d: cfg[d] for d in self.space.dims}
        self._autograd = False  # between forwards the model holds Parameters, as HF utilities expect
        every = {**self._dim_sizes, **sizes}
        for name, dims in self._tensor_dims.items():
            self._install(name, tuple([every[d] for d in dims]))
        self._live = [name for name, (_, tensor) in self._installed.items() if tensor is not self._full[name]]
        apply_attributes(self.ir, sizes, self.model, self._modules_by_path, sync=self._resized_modules)
        for name, parent, index in self._block_slots:
            want = self._layers[name] if cfg.get(name, True) else self._skip(name)
            if parent[index] is not want:
                parent[index] = want
        self.config = cfg

    def refresh(self) -> None:
        """Make the installed slices current before a forward (the model calls this itself):
        slices taken inside autograd when gradients are on, and slices of full weights that
        changed in place (an optimizer step) taken again."""
        autograd = self._trainable and torch.is_grad_enabled()
        switch = autograd != self._autograd
        self._autograd = autograd
        for name in self._live:
            key, tensor = self._installed[name]
            owner, _, leaf = name.rpartition(".")
            mod = self._modules_by_path[owner]
            held = mod._parameters[leaf] if leaf in mod._parameters else mod._buffers.get(leaf)
            full = self._full[name]
            if held is not tensor or held.dtype != full.dtype or held.device != full.device:
                raise RuntimeError(f"the model's tensor {name!r} was replaced behind the supernet's back (by "
                                   "sn.model.to(), .half() or an assignment?): convert and load weights through "
                                   "the supernet (sn.to(...), sn.load_state_dict(...)) so every subnet stays "
                                   "a slice of the shared weights")
            if switch or self._slices[(name, key)].version != full._version:
                self._install(name, key)

    @contextlib.contextmanager
    def use(self, cfg: Mapping[str, Any]):
        """Run a block of code with ``cfg`` active, then restore the previous config."""
        previous = self.config
        self.set_config(cfg)
        try:
            yield self
        finally:
            self.set_config(previous)

    def _install(self, name: str, key: tuple) -> None:
        """Put the slice of ``name`` for ``key`` in its module (and in those that tie it)."""
        full = self._full[name]
        if key == self._full_keys[name]:
            tensor = full
        else:
            piece = self._slices.get((name, key))
            if piece is None or piece.version != full._version:
                piece = self._take_slice(name, key)
            tensor = piece.graph if self._autograd else piece.plain
        installed = self._installed.get(name)
        if installed is not None and installed[1] is tensor:
            return
        self._installed[name] = (key, tensor)
        for slots, leaf in self._slots[name]:
            slots[leaf] = tensor

    def _take_slice(self, name: str, key: tuple) -> "_Slice":
        """Slice the full tensor ``name`` to ``key`` (the sizes of its dims) and cache it.

        A contiguous prefix is a view of the shared storage; several runs of a Linear's output
        rows (both halves of a fused projection) are a :class:`LinearRuns` of views (with
        ``split_views``, the default); any other slice that keeps several sub-ranges is
        gathered, i.e. copied, within a memory budget, and taken again once the full tensor
        changes.
        """
        full = self._full[name]
        cache_key = (name, key)
        if cache_key in self._slices:
            self._forget(cache_key)
        plan = self._plans.get(cache_key)
        if plan is None:  # the kept positions per axis depend on the layout only: found once per key
            sel = {d: torch.arange(k) for d, k in zip(self._tensor_dims[name], key) if k != self.ir.dims[d].size}
            plan = [(axis, pos) for axis in range(full.dim())
                    if (pos := self.ir.positions(name, axis, sel)) is not None]
            self._plans[cache_key] = plan
        runs = self._linear_runs(name, plan) if self._split_views else None
        view, gathered = full, False
        with torch.inference_mode(False), torch.set_grad_enabled(full.requires_grad):
            for axis, pos in plan:
                if runs is None or axis != 0:
                    view, copied = select_positions(view, axis, pos)
                    gathered |= copied
            if runs is not None:
                parts = [view.narrow(0, start, length) for start, length in runs]
        if runs is not None:  # views only: no copy; F.linear runs one matmul per part
            piece = _Slice(LinearRuns(parts, requires_grad=False),
                           LinearRuns([p.detach() for p in parts], requires_grad=full.requires_grad),
                           full._version, 0)
            self._slices[cache_key] = piece
            return piece
        plain = view.detach()
        if isinstance(full, nn.Parameter):
            plain = nn.Parameter(plain, requires_grad=full.requires_grad)
        piece = _Slice(view, plain, full._version, view.numel() * view.element_size() if gathered else 0)
        self._slices[cache_key] = piece
        self._gathered_bytes += piece.nbytes
        if piece.nbytes:
            self._gathered[cache_key] = None
        if self._gathered_bytes > self._gathered_budget:  # oldest copies out first, never installed ones
            for old in list(self._gathered):
                if self._gathered_bytes <= self._gathered_budget:
                    break
                if old != cache_key and self._installed.get(old[0], (None,))[0] != old[1]:
                    self._forget(old)
        return piece

    def _linear_runs(self, name: str, plan: list[tuple[int, torch.Tensor]]) -> list[tuple[int, int]] | None:
        """The contiguous runs ``(start, length)`` kept along axis 0 of ``name`` when that slice
        can be a :class:`LinearRuns` (several runs along a Linear's output rows, every other
        axis a prefix, every module holding it a Linear); else None (the slice is gathered)."""
        runs = None
        for axis, pos in plan:
            n = pos.numel()
            prefix = n == 0 or (int(pos[0]) == 0 and int(pos[-1]) == n - 1 and bool((pos.diff() == 1).all()))
            if prefix:
                continue
            if axis != 0:
                return None
            breaks = (torch.nonzero(pos.diff() != 1).flatten() + 1).tolist()
            runs = [(int(pos[a]), b - a) for a, b in zip([0] + breaks, breaks + [n])]
        if runs is None or not isinstance(self._full[name], nn.Parameter):
            return None
        for n in [name] + self._aliases.get(name, []):
            owner, _, leaf = n.rpartition(".")
            if not (isinstance(self._modules_by_path[owner], nn.Linear) and leaf in ("weight", "bias")):
                return None
        return runs

    @property
    def split_views(self) -> bool:
        """Whether a slice that keeps several runs of a Linear's output rows (Mamba's ``[x | z]``
        ``in_proj``, a fused qkv) is kept as views, one matmul per run (default True), or gathered
        into a copy (False: the former path, slower to switch; for comparison)."""
        return self._split_views

    @split_views.setter
    def split_views(self, value: bool) -> None:
        self._split_views = bool(value)
        self._slices.clear()
        self._gathered.clear()
        self._gathered_bytes = 0
        self._installed.clear()
        self.set_config(self.config)

    def _forget(self, cache_key: tuple) -> None:
        self._gathered_bytes -= self._slices.pop(cache_key).nbytes
        self._gathered.pop(cache_key, None)

    def full(self, name: str) -> torch.Tensor:
        """The shared full-size tensor ``name`` (what every config slices)."""
        return self._full[name]

    @property
    def sliced_tensors(self) -> list[str]:
        """Names of the tensors some dim resizes."""
        return list(self._tensor_dims)

    @property
    def blocks(self) -> list[nn.Module]:
        """The droppable layers (the real modules, dropped or not), in model order."""
        return list(self._layers.values())

    @property
    def skip_blocks(self) -> list[nn.Module]:
        """The identity modules that stand in for dropped layers (made on first use)."""
        return list(self._skips.values())

    def current(self, name: str) -> torch.Tensor:
        """The tensor ``name`` as the active config sees it (a slice of the shared one)."""
        owner, _, leaf = name.rpartition(".")
        return getattr(self._modules_by_path[owner], leaf)

    def copy_model(self, memo: dict[int, Any] | None = None) -> nn.Module:
        """A deep copy of the live model without the supernet's hook (``memo`` as for
        :func:`copy.deepcopy`)."""
        memo = {} if memo is None else memo
        hook = self.model._forward_pre_hooks[self._refresh_handle.id]
        memo[id(hook)] = hook
        out = copy_module.deepcopy(self.model, memo)
        out._forward_pre_hooks.pop(self._refresh_handle.id, None)
        return out

    def _skip(self, name: str) -> SkipBlock:
        if name not in self._skips:
            fmt = self.ir.graph.meta["osf"].get("module_outputs", {}).get("model." + name, 0)
            self._skips[name] = SkipBlock(fmt, like=self._layers[name])
        return self._skips[name]

    # ------------------------------------------------------------ importance
    def _weights_stamp(self) -> dict[str, tuple[int, int]]:
        """Identity and version of every shared tensor: changes when one is trained or replaced."""
        return {name: (id(t), t._version) for name, t in self._full.items()}

    @property
    def can_calibrate(self) -> bool:
        """Whether :meth:`calibrate` may reorder the weights: built here (not restored from a
        checkpoint) and not trained or converted since."""
        return getattr(self, "_built_stamp", None) == self._weights_stamp()

    def calibrate(self, calibration: Any, importance: str | None = None) -> "Supernet":
        """Rank channels and layers again on data, for a supernet built without it.

        ``calibration`` is an evaluator (its held-out calibration sample) or an iterable of model
        inputs; ``importance`` overrides the build config's channel measure. The channels are
        reordered in place (function-preserving: the largest config still computes the original
        model, checked on a calibration batch) and the space's layer drop order is replaced.

        Raises:
            ValueError: no calibration data, or the shared weights changed since the supernet was
                built (trained or restored: reordering would change what its subnets learned).
        """
        batches = resolve_calibration(calibration)
        if not batches:
            raise ValueError("sn.calibrate needs calibration data: an evaluator with held-out data (LMEval, "
                             "Perplexity, ImageAccuracy) or a non-empty list of model inputs")
        if not self.can_calibrate:
            raise ValueError("sn.calibrate reorders the shared weights, but they changed since the supernet was "
                             "built (trained, converted or restored from a checkpoint): build a new supernet with "
                             "osf.supernet(model, calibration=...) instead")
        base = self.build_config
        config = dataclasses.replace(base, importance=importance or base.importance,
                                     calibration_batches=len(batches))
        args, kwargs, _ = split_batch(batches[0])
        with self._at_largest(reread=True), eval_mode(self.model):
            before = verify_module.run(self.model, (args, kwargs))
            permuted = [d for d in self.ir.dims if len(self.space.dims[d]) > 1]
            space = rank(self.ir, self.model, self.space, config, batches, self.example_inputs, permuted)
            after = verify_module.run(self.model, (args, kwargs))
        err = verify_module.relative_error(after, before)
        if err > verify_module.tolerance(before):
            raise RuntimeError(f"sn.calibrate: reordering changed the largest config's outputs (relative error "
                               f"{err:.2e}); please report the model")
        self.space = space  # configs of the old order name other channels and layers: start at the largest
        self.build_config = config
        self._built_stamp = self._weights_stamp()
        self.set_config(space.largest())
        return self

    # ------------------------------------------------------------------ costs
    def num_params(self, cfg: Mapping[str, Any] | None = None) -> int:
        """Exact parameter count of the subnet ``cfg`` (default: the active one)."""
        cfg = self.space.validate(cfg) if cfg is not None else self.config
        sizes = {d: cfg[d] for d in self.space.dims}
        dropped = [b for b in self._block_index if not cfg.get(b, True)]
        total = 0
        seen = set()
        for name, p in self._named_full_parameters():
            if id(p) in seen or any(name.startswith(b + ".") for b in dropped):
                continue
            seen.add(id(p))
            if name in self.ir.tensor_axes:
                total += math.prod(self.ir.new_shape(name, sizes))
            else:
                total += p.numel()
        return total

    def _named_full_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        names = {}
        for mod_name, mod in self.model.named_modules():
            for leaf, p in mod._parameters.items():
                if p is None:
                    continue
                full = f"{mod_name}.{leaf}" if mod_name else leaf
                names[full] = self._full.get(self.ir.tied.get(full, full), p)
        for layer_name, layer in self._layers.items():  # dropped layers are not in the model now
            for n, p in layer.named_parameters():
                full = f"{layer_name}.{n}"
                names.setdefault(full, self._full.get(self.ir.tied.get(full, full), p))
        return iter(names.items())

    @torch.no_grad()
    def macs(self, cfg: Mapping[str, Any] | None = None, inputs: Any = None) -> int:
        """Multiply-accumulates of one forward pass at ``cfg`` on ``inputs`` (default: the
        example inputs), counted by ``torch.utils.flop_counter`` (matmuls, convs, attention)."""
        from torch.utils.flop_counter import FlopCounterMode

        from osf.ir.trace import normalize_inputs

        from osf.kernels.mamba import unpatched

        args, kwargs = normalize_inputs(inputs if inputs is not None else self.example_inputs)
        # count the model's own computation, whatever scan runs it
        with unpatched(self.model), self.use(cfg if cfg is not None else self.config), eval_mode(self.model):
            counter = FlopCounterMode(display=False)
            with counter:
                self.model(*args, **kwargs)
        return counter.get_total_flops() // 2

    # -------------------------------------------------------------- extraction
    def extract(self, cfg: Mapping[str, Any] | None = None, verify: bool = True) -> nn.Module:
        """A real model for ``cfg``: same class as the original, independent weights,
        dropped layers removed, size attributes and (Hugging Face) config updated.

        With ``verify`` (default) the model must reproduce the supernet's outputs at ``cfg``,
        else :class:`osf.VerificationError` names the dim at fault."""
        from osf.elastic.extract import extract

        cfg = self.space.validate(cfg) if cfg is not None else self.config
        return extract(self, cfg, verify=verify)

    # ------------------------------------------------------------ checkpoints
    #: the effective :class:`osf.SupernetConfig` the supernet was built (or loaded) with
    build_config: "SupernetConfig | None" = None

    def save_pretrained(self, save_directory: Any, tokenizer: Any = None, *, overwrite: bool = False) -> Any:
        """Save the supernet as a checkpoint folder that :func:`osf.load_supernet` restores
        exactly, without re-analysing importance: the shared full weights (in importance order,
        whatever config is active), the model's Hugging Face ``config.json``, the tokenizer when
        given, and ``osf_supernet.json`` (build config, search space with the block drop order,
        dims, model class, dtype). A checkpoint already in the folder is replaced; another
        model there is refused unless ``overwrite=True``. See
        :func:`osf.elastic.checkpoint.save_supernet`."""
        from osf.elastic.checkpoint import save_supernet

        return save_supernet(self, save_directory, tokenizer=tokenizer, overwrite=overwrite)

    def __repr__(self) -> str:
        return f"Supernet({type(self.model).__name__}, {self.space!r})"


class _Slice(NamedTuple):
    """One cached slice of a full tensor, in its two forms: ``graph`` is taken inside
    autograd (gradients reach the full tensor; installed for forwards with gradients on),
    ``plain`` is a Parameter over the same memory (installed otherwise: Hugging Face
    utilities such as ``tie_weights`` need real Parameters)."""

    graph: torch.Tensor
    plain: torch.Tensor
    version: int  # the full tensor's version when sliced
    nbytes: int  # memory it holds of its own (a gathered copy), else 0


# what a LinearRuns answers from its shape alone, without gathering its runs
_METADATA = {torch.Tensor.size, torch.Tensor.dim, torch.Tensor.numel, torch.Tensor.nelement,
             torch.Tensor.element_size, torch.Tensor.is_floating_point, torch.Tensor.is_complex,
             torch.Tensor.__hash__, torch.Tensor.requires_grad_, torch.Tensor.__len__}
_METADATA |= {getattr(torch.Tensor, a).__get__ for a in (
    "shape", "dtype", "device", "ndim", "layout", "requires_grad", "is_leaf", "grad", "grad_fn", "is_cuda",
    "is_meta", "is_sparse", "is_quantized", "is_nested") if hasattr(torch.Tensor, a)}
_METADATA |= {torch.Tensor.grad.__set__, torch.Tensor.requires_grad.__set__}


class LinearRuns(nn.Parameter):
    """A slice of a Linear's weight (or bias) that keeps several contiguous runs of its output
    rows, held as views of the shared tensor, one per run: no copy when a config is set.

    It behaves as the gathered tensor (``torch.cat(parts)``) of that shape: ``F.linear`` with it
    runs one matmul per run and concatenates the outputs (each output column is the same dot
    product as with the gathered weight, and gradients flow through the views into the shared
    tensor); shape and dtype queries answer from its shape; any other operation runs on the
    gathered copy, taken for that call. In-place changes are refused (they would be lost):
    change the shared tensor (``sn.full(name)``) instead.
    """

    parts: tuple[torch.Tensor, ...]

    def __new__(cls, parts: Iterable[torch.Tensor], requires_grad: bool = False) -> "LinearRuns":
        parts = tuple(parts)
        first = parts[0]
        shape = (sum(p.shape[0] for p in parts),) + tuple(first.shape[1:])
        if any(tuple(p.shape[1:]) != shape[1:] for p in parts):
            raise ValueError(f"LinearRuns parts must agree beyond axis 0, got {[tuple(p.shape) for p in parts]}")
        stand_in = torch.zeros((), dtype=first.dtype, device=first.device).expand(shape)  # no memory
        self = torch.Tensor._make_subclass(cls, stand_in, requires_grad)
        self.parts = parts
        return self

    def gathered(self) -> torch.Tensor:
        """The slice as one tensor (a copy; inside autograd when the parts are)."""
        return torch.cat(self.parts, dim=0)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA:
            return super().__torch_function__(func, types, args, kwargs)
        if func is torch.nn.functional.linear:
            out = _linear_over_runs(*args, **kwargs)
            if out is not None:
                return out
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__") or kwargs.get("out") is not None:
            raise RuntimeError(f"{name}: a supernet slice made of several runs of a shared weight cannot be "
                               "changed in place; change the shared tensor (sn.full(name)) instead")
        args, kwargs = _gather_runs((args, kwargs))
        return func(*args, **kwargs)

    def __deepcopy__(self, memo: dict) -> nn.Parameter:
        if id(self) not in memo:
            memo[id(self)] = nn.Parameter(self.gathered().detach().clone(), requires_grad=self.requires_grad)
        return memo[id(self)]

    def __reduce_ex__(self, protocol):
        return (nn.Parameter, (self.gathered().detach(), self.requires_grad))


def _gather_runs(obj: Any) -> Any:
    if isinstance(obj, LinearRuns):
        return obj.gathered()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_gather_runs(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _gather_runs(v) for k, v in obj.items()}
    return obj


def _linear_over_runs(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                      ) -> torch.Tensor | None:
    """``F.linear`` over a :class:`LinearRuns` weight: one matmul per run; None if ``weight``
    is not one (the caller gathers)."""
    if not isinstance(weight, LinearRuns) or isinstance(input, LinearRuns):
        return None
    sizes = [p.shape[0] for p in weight.parts]
    if isinstance(bias, LinearRuns) and [p.shape[0] for p in bias.parts] == sizes:
        biases = list(bias.parts)
    elif bias is None:
        biases = [None] * len(sizes)
    else:
        biases = list(_gather_runs(bias).split(sizes))
    return torch.cat([torch.nn.functional.linear(input, w, b) for w, b in zip(weight.parts, biases)], dim=-1)


class _RefreshSlices:
    """The model's forward pre-hook: re-slice what changed in place (weakly bound, so copies
    and pickles of the model do not drag the supernet along)."""

    def __init__(self, sn: Supernet):
        self.supernet = weakref.ref(sn)

    def __call__(self, module: nn.Module, args: Any) -> None:
        sn = self.supernet()
        if sn is not None:
            sn.refresh()

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return (_noop_hook, ())


def _noop_hook() -> Any:
    return lambda module, args: None


def _use_osf_kernels(model: nn.Module) -> None:
    from osf.kernels.mamba import PATCH_FLAG, is_mamba_mixer, patch_mamba

    if any(is_mamba_mixer(m) and not getattr(m, PATCH_FLAG, False) for m in model.modules()):
        patch_mamba(model)


def _first_samples(inputs: Any, n: int = 1, max_tokens: int = 16) -> Any:
    """The analysis needs no big batch nor long text: trace on the first sample and, for
    token ids, the first tokens (activation memory while tracing stays small)."""
    def cut(t):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        t = t[:n]
        if t.dim() == 2 and not t.is_floating_point() and t.shape[1] > max_tokens:
            t = t[:, -max_tokens:]  # keep the end: text towers pool at the last token
        return t
    if isinstance(inputs, torch.Tensor):
        return cut(inputs)
    if isinstance(inputs, Mapping):
        return {k: cut(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(cut(v) for v in inputs)
    return inputs


def build_space(ir: IR, block_order: list[str] | None = None, depth: bool = True,
                min_depth: float = 0.25) -> SearchSpace:
    """The default space: :func:`default_choices` per dim; each stack (each kind of layer in a
    stack of several kinds) keeps at least ``min_depth`` of its layers (default a quarter: up to
    3/4 may be dropped), and at least one."""
    dims = {d.name: default_choices(d.size, d.kind) for d in ir.dims.values()}
    stacks: dict[str, list[str]] = {}
    min_depth_of: dict[str, int] = {}
    if depth:
        order = {name: i for i, name in enumerate(block_order or [b.name for b in ir.blocks])}
        for group, blocks in ir.depth_groups.items():  # a hybrid's layer kinds are depth choices of their own
            names = sorted((b.name for b in blocks), key=lambda n: order.get(n, 0))
            stacks[group] = names
            stack = blocks[0].stack
            n_layers = len(ir.model.get_submodule(stack)) if stack and not blocks[0].kind else len(names)
            droppable = n_layers - max(1, math.ceil(min_depth * n_layers - 1e-9))
            min_depth_of[group] = max(len(names) - droppable, 0) if n_layers > 1 else len(names)
    return SearchSpace(dims=dims, stacks=stacks, min_depth=min_depth_of)


def supernet(model: nn.Module, example_inputs: Any = None, config: "SupernetConfig | None" = None, *,
             space: Any = None, importance: str | None = None, calibration: Iterable[Any] | None = None,
             depth: bool | None = None, copy: bool = False, kernels: bool | None = None,
             verify: bool | None = None, block_order: str | None = None) -> Supernet:
    """Turn ``model`` into a weight-sharing supernet, in place.

    Args:
        model: a trained model (Hugging Face or any ``nn.Module``).
        example_inputs: inputs for tracing (Hugging Face models get defaults from their config).
        config: a :class:`osf.SupernetConfig` holding the build settings below; the keyword
            arguments given override its fields (left out, a field keeps the config's value, or
            the default shown here without a config).
        space: overrides of the default choices: glob patterns on dim names, e.g.
            ``{"*:d_inner": [4096, 3072, 2048], "*:d_state": [16, 8]}``, or a JSON/YAML path.
        importance: channel importance, ``"auto"`` (default: ``"activation"`` with calibration data,
            ``"magnitude"`` without), ``"magnitude"``, ``"activation"``, ``"taylor"`` or
            ``"fisher"`` (the last three need calibration data).
        calibration: data to rank channels and layers on: an evaluator (``LMEval``,
            ``Perplexity``, ``ImageAccuracy``: a sample of its data held out from what it scores)
            or an iterable of model inputs (dicts may hold ``labels``). Without it, layers are
            ranked on random example inputs, with a warning.
        depth: make residual layers droppable, keeping at least ``min_depth`` (a
            :class:`osf.SupernetConfig` field, default 1/4) of each stack (default True).
        copy: build on a deep copy and leave ``model`` untouched.
        kernels: run Hugging Face Mamba mixers through :mod:`osf.kernels` (the fused CUDA
            scan when ``mamba_ssm`` is present, OSF's own scans otherwise; default True).
        verify: check that the largest config reproduces the original model's outputs on the
            example inputs and on a second input shape; on a mismatch raise
            :class:`osf.VerificationError` naming the dim at fault (default True).
        block_order: how layers are ranked for dropping, ``"auto"`` (default: ``"greedy"`` by
            the calibration loss with calibration data, ``"cosine"`` without), ``"greedy"``,
            ``"cosine"``.

    Returns:
        A :class:`Supernet` whose largest config is the original model; ``sn.build_config``
        is the effective :class:`osf.SupernetConfig`.
    """
    from osf.elastic.config import SupernetConfig
    from osf.elastic.validate import check_supernet_args  # bad input: one clear line; train mode: a warning

    if isinstance(model, Supernet):
        raise InputTypeError("model is already an osf Supernet: use it as it is (sn.set_config, sn.extract, "
                             "osf.search), or pass the original model to build another one")
    if config is not None and not isinstance(config, SupernetConfig):
        raise InputTypeError(f"config must be an osf.SupernetConfig (or None), got {type(config).__name__}")
    base = config if config is not None else SupernetConfig()
    given = {"space": space, "importance": importance, "depth": depth, "kernels": kernels, "verify": verify,
             "block_order": block_order}
    overrides = {k: v for k, v in given.items() if v is not None}
    calibration = resolve_calibration(calibration)  # an evaluator gives its held-out sample
    flags = {k: overrides.get(k, getattr(base, k)) for k in ("depth", "kernels", "verify")}
    check_supernet_args(model, example_inputs, overrides.get("space", base.space), calibration, depth=flags["depth"],
                        copy=copy, kernels=flags["kernels"], verify=flags["verify"])
    importance = overrides.get("importance", base.importance)
    if importance not in IMPORTANCE_METHODS:
        raise ValueError(f"importance must be one of {IMPORTANCE_METHODS}, got {importance!r}")
    if importance in DATA_METHODS and calibration is None:
        raise ValueError(f"importance={importance!r} needs calibration data (an evaluator, or an iterable of model "
                         "inputs); importance='magnitude' needs none")
    if overrides.get("block_order", base.block_order) == "greedy" and calibration is None:
        raise ValueError("block_order='greedy' needs calibration data (an evaluator, or an iterable of model inputs); "
                         "block_order='cosine' needs none")
    calibration = list(calibration) if calibration is not None else None
    overrides["calibration_batches"] = len(calibration) if calibration is not None else None
    build_config = dataclasses.replace(base, **overrides)
    if copy:
        model = copy_module.deepcopy(model)
    return _build(model, example_inputs, build_config, calibration)


def rank(ir: IR, model: nn.Module, space: SearchSpace, config: "SupernetConfig", calibration: list[Any] | None,
         example_inputs: Any, permuted: list[str]) -> SearchSpace:
    """Reorder the channels of ``permuted`` dims by importance (in place, function-preserving) and
    return ``space`` with its stacks in drop order (dims and depth floors kept)."""
    scores = channel_importance(ir, config.importance, calibration, model)
    permute_dims(ir, {d: torch.argsort(scores[d], descending=True, stable=True) for d in permuted})
    if not ir.blocks or not space.stacks:
        return space
    greedy = calibration and config.block_order in ("auto", "greedy")
    if config.block_order == "greedy" and not calibration:
        raise ValueError("block_order='greedy' needs calibration data (an evaluator, or an iterable of model inputs)")
    if greedy:
        drops = {s: len(names) - space.min_depth.get(s, len(names)) for s, names in space.stacks.items()}
        order = greedy_block_order(ir, calibration, model, max_drops=drops)
    else:
        if not calibration:
            warn_random_inputs("layers (osf.supernet without calibration=)")
        block_scores = block_importance(ir, calibration or [example_inputs], model)
        order = sorted(block_scores, key=lambda b: block_scores[b])
    # the stacks now list blocks in drop order; the dims and depth floors stay as restricted
    return dataclasses.replace(space, stacks=build_space(ir, order, depth=config.depth,
                                                         min_depth=config.min_depth).stacks)


def _build(model: nn.Module, example_inputs: Any, config: "SupernetConfig", calibration: list[Any] | None = None, *,
           restore: SearchSpace | None = None, check_ir: Any = None) -> Supernet:
    """The one build of a supernet (arguments already checked).

    With ``restore`` (a saved supernet's space, drop order included) the weights are taken to be
    in importance order already: no importance pass, no permutation, the space as given.
    ``check_ir(ir)`` (if given) may refuse the analysis before anything is built."""
    if example_inputs is None:
        example_inputs = default_inputs(model)
    with eval_mode(model):
        ir = analyze(model, _first_samples(example_inputs))
        if check_ir is not None:
            check_ir(ir)
        reference = verify_module.Reference.from_trace(ir.graph.meta["osf"]) if config.verify else None
        if not ir.dims and not ir.blocks:
            raise ValueError(f"{type(model).__name__} has no elastic dims and no droppable blocks: "
                             "nothing to search (see `osf inspect` for why)")
        if restore is not None:
            space_obj, permuted = restore, []
        else:
            space_obj = build_space(ir, None, depth=config.depth, min_depth=config.min_depth)
            if config.space is not None:
                space_obj = space_obj.restrict(config.space)
            # a dim kept whole by space= is not reordered: pinning it keeps a doubtful dim out entirely
            permuted = [d for d in ir.dims if len(space_obj.dims[d]) > 1]
            space_obj = rank(ir, model, space_obj, config, calibration, example_inputs, permuted)
        if config.kernels:
            _use_osf_kernels(model)
        sn = Supernet(model, ir, space_obj, example_inputs)
        sn.build_config = config
        # a restored checkpoint keeps its saved order: calibrate() refuses it
        sn._built_stamp = sn._weights_stamp() if restore is None else None
        if reference is not None:
            verify_module.check_build(sn, reference, permuted)
            verify_module.check_corners(sn, reference)
    return sn
