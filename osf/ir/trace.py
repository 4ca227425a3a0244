"""Concrete tracing: run the model on real inputs and record every torch op into an fx graph.

The model's own Python runs unchanged on real tensors, so shape checks, dtype checks and
Python loops over shapes simply execute. A ``TorchFunctionMode`` records each top-level
torch call as an fx node; ``nn.Module.__call__`` is intercepted so that leaf modules (torch.nn
primitives and modules matched by an op rule) become single ``call_module`` nodes.
Sizes read from tensors (``x.shape[0]``) and integer module attributes (``self.num_heads``)
are tracked as :class:`TracedInt`, so reshapes stay symbolic in batch and sequence length
and the analysis knows which attribute a reshape used.

Python decisions taken on tensor *values* (``if x.mean() > 0``) cannot be recorded; they are
noted as guards, and :func:`trace` checks the graph against the model on fresh random inputs
and names the guard's module and source line when the two disagree.
"""
from __future__ import annotations

import contextlib
import linecache
import operator
import os
import sys
import traceback
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.fx as fx
from torch import nn
import torch.utils._pytree as pytree
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

import osf.ir.rules as module_rules
from osf.ir.context import relative_path

_TENSOR_METHODS = {name for name in dir(torch.Tensor)}
# Calls that neither compute tensors nor sizes that vary with the input: not recorded.
_PASS_THROUGH = {"dim", "__len__", "is_floating_point", "is_complex", "element_size", "data_ptr",
                 "is_contiguous", "get_device", "requires_grad_", "__repr__", "__format__", "stride",
                 "storage_offset", "untyped_storage", "has_names", "__hash__"}


class TraceError(RuntimeError):
    """Tracing could not capture the model faithfully; the message says where and what to do."""


# From this size on ``trace`` runs on fake tensors by default: below it a real forward on the
# example inputs costs less than the meta device's per-op overhead (and checks values too).
FAKE_FROM_PARAMS = 10_000_000


class NeedsRealValues(Exception):
    """A trace on fake tensors met something only real values decide (a Python branch on a value,
    an op whose output shape depends on values, a tensor the model caches); the message says where."""


# --------------------------------------------------------------------------------------
# Tracked integers
# --------------------------------------------------------------------------------------
class TracedInt(int):
    """An int that remembers where it came from.

    ``node`` is the fx node computing it at run time (sizes of tensors), or None for a
    constant. ``source`` is a small expression tree used by the analysis:
    ``("attr", module_path, name)``, ``("size", node, axis)``, ``(op_name, a, b)``.
    """

    node: fx.Node | None
    source: Any

    def __new__(cls, value: int, node: fx.Node | None, source: Any, tracer: "Tracer | None"):
        obj = super().__new__(cls, int(value))
        obj.node = node
        obj.source = source
        obj._tracer = tracer
        return obj

    def _binary(self, other: Any, op: Callable, name: str, reverse: bool = False):
        if not isinstance(other, int):  # a float, a tensor (T5's max_exact + log(...)): their own operators
            return NotImplemented
        result = op(int(other), int(self)) if reverse else op(int(self), int(other))
        if not isinstance(other, int) or isinstance(other, bool) or not isinstance(result, int):
            return result
        a, b = (other, self) if reverse else (self, other)
        tracer = self._tracer
        node = None
        if tracer is not None and tracer.recording and (_node_of(a) is not None or _node_of(b) is not None):
            node = tracer.graph.call_function(op, (_arg_of(a), _arg_of(b)))
        return TracedInt(result, node, (name, _source_of(a), _source_of(b)), tracer)

    def __add__(self, o):
        return self._binary(o, operator.add, "add")

    def __radd__(self, o):
        return self._binary(o, operator.add, "add", True)

    def __sub__(self, o):
        return self._binary(o, operator.sub, "sub")

    def __rsub__(self, o):
        return self._binary(o, operator.sub, "sub", True)

    def __mul__(self, o):
        return self._binary(o, operator.mul, "mul")

    def __rmul__(self, o):
        return self._binary(o, operator.mul, "mul", True)

    def __floordiv__(self, o):
        return self._binary(o, operator.floordiv, "floordiv")

    def __rfloordiv__(self, o):
        return self._binary(o, operator.floordiv, "floordiv", True)

    def __mod__(self, o):
        return self._binary(o, operator.mod, "mod")

    def __neg__(self):
        return self._binary(-1, operator.mul, "mul")

    def __eq__(self, other):
        self._note_equality(other)
        return int(self) == other

    def __ne__(self, other):
        self._note_equality(other)
        return int(self) != other

    __hash__ = int.__hash__

    def _note_equality(self, other: Any) -> None:
        """Record ``self == other`` / ``!=`` between tracked ints, with its outcome: a size checked
        against a module attribute (``if channels != self.num_channels: raise``) is that
        attribute, and two sizes a branch compares (``if self.hidden_size != self.hidden_size_output``)
        must compare the same way in every subnet."""
        if self._tracer is not None and self._tracer.recording and isinstance(other, TracedInt):
            self._tracer.size_comparisons.append((self.source, other.source, int(other) == int(self)))

    def __reduce__(self):  # pickles / deep-copies as a plain int
        return (int, (int(self),))

    def __deepcopy__(self, memo):
        return int(self)

    def __copy__(self):
        return int(self)


def _node_of(x: Any) -> fx.Node | None:
    return x.node if isinstance(x, TracedInt) else None


def _arg_of(x: Any) -> Any:
    if isinstance(x, TracedInt):
        return x.node if x.node is not None else int(x)
    return x


def _source_of(x: Any) -> Any:
    return x.source if isinstance(x, TracedInt) else ("const", int(x))


class TracedSize(tuple):
    """A tuple of :class:`TracedInt` standing in for ``torch.Size``."""

    def numel(self) -> int:
        n = 1
        for s in self:
            n = n * s
        return n

    def __getitem__(self, item):
        out = tuple.__getitem__(self, item)
        return TracedSize(out) if isinstance(item, slice) else out

    def __add__(self, other):
        return TracedSize(tuple(self) + tuple(other))

    def __radd__(self, other):
        return TracedSize(tuple(other) + tuple(self))


# --------------------------------------------------------------------------------------
# Leaves
# --------------------------------------------------------------------------------------
_extra_leaves: list[type | Callable[[nn.Module], bool]] = []


def register_leaf(cls_or_predicate: type | Callable[[nn.Module], bool]) -> None:
    """Treat modules of this class (or matching this predicate) as opaque single ops.

    A leaf's parameters are then fixed unless an op rule (``osf.ir.rules``) describes it.
    """
    _extra_leaves.append(cls_or_predicate)


def is_leaf(module: nn.Module) -> bool:
    """torch.nn primitives, modules matched by an op rule, and registered leaves."""
    if module_rules.match(module) is not None:
        return True
    for leaf in _extra_leaves:
        if (isinstance(leaf, type) and isinstance(module, leaf)) or (not isinstance(leaf, type) and leaf(module)):
            return True
    cls = type(module)
    if cls.__module__.startswith("torch.nn.") and not isinstance(
        module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    ):
        return next(module.children(), None) is None
    return False


# --------------------------------------------------------------------------------------
# The tracer
# --------------------------------------------------------------------------------------
@dataclass
class Guard:
    """A Python decision taken on a tensor's value while tracing."""

    module: str
    location: str
    what: str


@dataclass
class _State:
    module_stack: list[str] = field(default_factory=lambda: [""])
    paused: int = 0


class _Recorder(TorchFunctionMode):
    def __init__(self, tracer: "Tracer"):
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tracer = self.tracer
        if tracer.state.paused:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in ("__bool__", "item", "tolist", "__int__", "__float__", "__index__", "numpy", "__array__",
                    "__contains__"):
            if tracer.fake:
                raise NeedsRealValues(f"a Python decision reads a tensor's value ({name}) in module "
                                      f"{relative_path(tracer.current_module)!r} at {_user_location()}")
            tracer.note_guard(args[0] if args else None, name)
            return func(*args, **kwargs)
        if name in _PASS_THROUGH:
            return func(*args, **kwargs)
        if name == "__get__":
            attr = getattr(getattr(func, "__self__", None), "__name__", "")
            if attr in ("ndim", "dtype", "device", "is_cuda", "requires_grad", "layout", "is_sparse", "grad_fn",
                        "is_leaf", "is_meta", "is_quantized", "names", "is_nested", "is_mps", "is_xpu"):
                return func(*args, **kwargs)
            if attr in ("data", "grad"):
                return func(*args, **kwargs)
        out = func(*args, **kwargs)
        return tracer.record(func, args, kwargs, out)


def tensor_attr(x: torch.Tensor, name: str) -> Any:
    """``getattr`` for tensor properties (``x.T``, ``x.mT``) in replayed graphs."""
    return getattr(x, name)


class Tracer:
    """Records one concrete run of a module into an fx Graph. Use :func:`trace`."""

    def __init__(self, root: nn.Module, fake: bool = False):
        self.root = root
        self.fake = fake  # running on the meta device: shapes only, no values
        self.rule_leaf_outputs = _RuleLeafOutputs() if fake else None
        self.meta_ops = _MetaOpCache() if fake else None
        self.device = next((t.device for t in root.parameters()), torch.device("cpu"))  # where the graph runs
        self.graph = fx.Graph()
        self.state = _State()
        self.recording = False
        self.env: dict[int, fx.Node] = {}  # id(tensor) -> node producing it
        self.watchers: dict[int, weakref.ref] = {}  # forget a tensor's node when it dies (ids get reused)
        self.param_names: dict[int, str] = {}
        for name, p in root.named_parameters(remove_duplicate=True):
            self.param_names.setdefault(id(p), name)
        for name, b in root.named_buffers(remove_duplicate=True):
            self.param_names.setdefault(id(b), name)
        self.module_names: dict[int, str] = {}
        for name, m in root.named_modules(remove_duplicate=False):
            self.module_names.setdefault(id(m), name)
        self.constants: dict[str, torch.Tensor] = {}
        self.guards: list[Guard] = []
        self.leaf_calls: dict[str, nn.Module] = {}
        self.module_outputs: dict[str, str] = {}
        self.iterated_lists: set[str] = set()  # layer lists the model loops over (not indexed by position)
        self.carries_extra_outputs: set[str] = set()  # modules returning (x, something read later, ...)
        self.extra_output_nodes: dict[str, list[fx.Node]] = {}
        self.size_comparisons: list[tuple[Any, Any, bool]] = []  # (source, source, equal) of == / != on sizes
        self.leaves: dict[int, bool] = {}  # id(module) -> is_leaf(module)

    # ----------------------------------------------------------------- helpers
    def is_leaf(self, module: nn.Module) -> bool:
        """:func:`is_leaf`, asked once per module (the rules probe parameters)."""
        known = self.leaves.get(id(module))
        if known is None:
            known = self.leaves[id(module)] = is_leaf(module)
        return known

    @property
    def current_module(self) -> str:
        return self.state.module_stack[-1]

    def _meta(self, node: fx.Node, value: Any) -> None:
        node.meta["module"] = self.current_module
        node.meta["stack"] = list(self.state.module_stack)
        if isinstance(value, torch.Tensor):
            node.meta["shape"] = tuple(value.shape)
            node.meta["dtype"] = value.dtype
        elif isinstance(value, (tuple, list)):
            node.meta["shapes"] = [tuple(v.shape) if isinstance(v, torch.Tensor) else None for v in value]

    def node_for_tensor(self, t: torch.Tensor) -> fx.Node:
        node = self.env.get(id(t))
        if node is not None:
            return node
        name = self.param_names.get(id(t))
        if name is not None:
            node = self.graph.get_attr(name)
            node.meta["param"] = name
        else:
            # A tensor born outside torch's API (numpy, a cached attribute): a constant.
            if t.is_meta and not self.fake:
                raise TraceError(f"module {relative_path(self.current_module)!r} uses a tensor on the meta device that "
                                 "no recorded op made (a cache filled on fake tensors?): trace with fake=False and "
                                 "report this model")
            if self.fake:
                raise NeedsRealValues(f"a tensor computed outside the recorded ops is used in module "
                                      f"{relative_path(self.current_module)!r}")
            name = f"_osf_const_{len(self.constants)}"
            self.constants[name] = t.detach()
            node = self.graph.get_attr(name)
            node.meta["constant"] = True
        self._meta(node, t)
        self._bind(t, node)
        return node

    def to_arg(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return self.node_for_tensor(obj)
        if isinstance(obj, TracedInt):
            return _arg_of(obj)
        if isinstance(obj, tuple):
            vals = tuple(self.to_arg(o) for o in obj)
            return type(obj)(*vals) if hasattr(obj, "_fields") else vals
        if isinstance(obj, list):
            return [self.to_arg(o) for o in obj]
        if isinstance(obj, dict):
            return {k: self.to_arg(v) for k, v in obj.items()}
        if isinstance(obj, slice):
            return slice(self.to_arg(obj.start), self.to_arg(obj.stop), self.to_arg(obj.step))
        if isinstance(obj, torch.Size):
            return tuple(int(s) for s in obj)
        return obj

    def _bind(self, t: torch.Tensor, node: fx.Node) -> None:
        key = id(t)
        self.env[key] = node
        if key not in self.watchers:
            env, watchers = self.env, self.watchers

            def forget(_ref, key=key):
                env.pop(key, None)
                watchers.pop(key, None)

            self.watchers[key] = weakref.ref(t, forget)

    def concrete(self, obj: Any) -> Any:
        """``obj`` with tracked ints as plain ints and tensors as their nodes."""
        if isinstance(obj, torch.Tensor):
            return self.node_for_tensor(obj)
        if isinstance(obj, TracedInt):
            return int(obj)
        if isinstance(obj, (tuple, list)):
            return type(obj)(self.concrete(o) for o in obj) if not hasattr(obj, "_fields") else tuple(
                self.concrete(o) for o in obj)
        if isinstance(obj, slice):
            return slice(self.concrete(obj.start), self.concrete(obj.stop), self.concrete(obj.step))
        return obj

    def bind_output(self, node: fx.Node, out: Any) -> Any:
        """Map the produced tensors (and sizes) to ``node``; returns what the caller sees."""
        if isinstance(out, torch.Tensor):
            self._bind(out, node)
            return out
        if isinstance(out, torch.Size):
            src = node.args[0]
            return TracedSize(
                TracedInt(s, self.graph.call_function(operator.getitem, (node, i)), ("size", src, i), self)
                for i, s in enumerate(out)
            )
        if isinstance(out, int) and not isinstance(out, bool) and node.meta.get("op") in ("size",):
            return TracedInt(out, node, ("size", node.args[0], node.args[1] if len(node.args) > 1 else None), self)
        if isinstance(out, (tuple, list)) and any(isinstance(o, torch.Tensor) for o in out):
            items = []
            for i, o in enumerate(out):
                if isinstance(o, torch.Tensor):
                    g = self.graph.call_function(operator.getitem, (node, i))
                    self._meta(g, o)
                    g.meta["op"] = "getitem"
                    items.append(self.bind_output(g, o))
                else:
                    items.append(o)
            return _same_kind(out, items)
        return out

    # --------------------------------------------------------------- recording
    def record(self, func: Callable, args: tuple, kwargs: dict, out: Any) -> Any:
        name = getattr(func, "__name__", repr(func))
        if name == "__get__":
            attr = func.__self__.__name__
            if attr == "shape":
                node = self.graph.call_method("size", (self.to_arg(args[0]),))
                name = "size"
            else:
                node = self.graph.call_function(tensor_attr, (self.to_arg(args[0]), attr))
                name = "getattr:" + attr
        elif name in _TENSOR_METHODS and getattr(torch.Tensor, name, None) is not None and _is_tensor_method(func):
            node = self.graph.call_method(name, self.to_arg(tuple(args)), self.to_arg(dict(kwargs)))
        else:
            node = self.graph.call_function(func, self.to_arg(tuple(args)), self.to_arg(dict(kwargs)))
        node.meta["op"] = name
        self._meta(node, out)
        node.meta["arg_shapes"] = _shapes(args)
        node.meta["int_sources"] = _int_sources(args, kwargs)
        node.meta["cargs"] = self.concrete(tuple(args))
        node.meta["ckwargs"] = {k: self.concrete(v) for k, v in kwargs.items()}
        if isinstance(out, torch.Size):
            node.meta["size_of"] = tuple(out)
        return self.bind_output(node, out)

    def record_module(self, module: nn.Module, path: str, args: tuple, kwargs: dict, out: Any) -> Any:
        node = self.graph.call_module(path, self.to_arg(tuple(args)), self.to_arg(dict(kwargs)))
        node.meta["op"] = "module"
        node.meta["module_type"] = type(module)
        self._meta(node, out)
        node.meta["module"] = path
        node.meta["arg_shapes"] = _shapes(args)
        node.meta["kwarg_shapes"] = {k: _shapes((v,))[0] for k, v in kwargs.items()}
        node.meta["cargs"] = self.concrete(tuple(args))
        node.meta["ckwargs"] = {k: self.concrete(v) for k, v in kwargs.items()}
        self.leaf_calls[path] = module
        return self.bind_output(node, out)

    def note_extra_outputs(self, path: str, extras: tuple) -> None:
        """What a module returns besides its output: tensors are followed to see whether the rest
        of the model reads them (T5's position bias) or not (attention weights); anything else
        but None is taken to be read."""
        nodes = []
        for o in extras:
            if isinstance(o, torch.Tensor) and id(o) in self.env:
                nodes.append(self.env[id(o)])
            elif o is not None and not isinstance(o, torch.Tensor):
                self.carries_extra_outputs.add(path)
        self.extra_output_nodes.setdefault(path, []).extend(nodes)

    def settle_extra_outputs(self) -> None:
        """Modules whose extra outputs are read outside them (see :meth:`note_extra_outputs`)."""
        for path, nodes in self.extra_output_nodes.items():
            for n in nodes:
                if n.op == "placeholder" or any(path not in u.meta.get("stack", ()) for u in n.users):
                    self.carries_extra_outputs.add(path)
                    break

    def note_guard(self, tensor: Any, what: str) -> None:
        if not isinstance(tensor, torch.Tensor):
            return
        node = self.env.get(id(tensor))
        if node is None or not _depends_on_input(node):
            return
        self.guards.append(Guard(self.current_module, _user_location(), what))

    # ------------------------------------------------------------- module calls
    @contextlib.contextmanager
    def patch_module_call(self):
        original = nn.Module.__call__
        tracer = self

        def call(module: nn.Module, *args, **kwargs):
            if not tracer.recording or tracer.state.paused:
                return original(module, *args, **kwargs)
            path = tracer.module_names.get(id(module))
            if path is None:  # a module created on the fly: trace through it
                return original(module, *args, **kwargs)
            tracer.state.paused += 1
            try:
                leaf = bool(path) and tracer.is_leaf(module)
                if leaf:
                    if tracer.rule_leaf_outputs is not None:
                        out = tracer.rule_leaf_outputs.call(module, original, args, kwargs)
                    else:
                        out = original(module, *args, **kwargs)
                    return tracer.record_module(module, path, args, kwargs, out)
            finally:
                tracer.state.paused -= 1
            tracer.state.module_stack.append(path)
            try:
                out = original(module, *args, **kwargs)
                tracer.module_outputs[path] = len(out) if isinstance(out, tuple) else 0
                if isinstance(out, tuple):
                    tracer.note_extra_outputs(path, out[1:])
                return out
            finally:
                tracer.state.module_stack.pop()

        iter_originals = {cls: cls.__iter__ for cls in (nn.ModuleList, nn.Sequential)}
        getitem_originals = {cls: cls.__getitem__ for cls in (nn.ModuleList, nn.Sequential)}
        views: dict[int, tuple[str, nn.Module]] = {}  # slices of a list (``self.layers[:n]``): its path

        def path_of(lst) -> str | None:
            return tracer.module_names.get(id(lst)) or (views[id(lst)][0] if id(lst) in views else None)

        def iterating(cls):
            def it(lst):
                path = path_of(lst) if tracer.recording else None
                if path is not None:
                    tracer.iterated_lists.add(path)
                return iter_originals[cls](lst)
            return it

        def slicing(cls):
            def getitem(lst, idx):
                out = getitem_originals[cls](lst, idx)
                path = path_of(lst) if tracer.recording and isinstance(idx, slice) else None
                if path is not None and isinstance(out, nn.Module):
                    views[id(out)] = (path, out)  # kept alive: ids are not reused while tracing
                return out
            return getitem

        nn.Module.__call__ = call
        for cls in iter_originals:
            cls.__iter__ = iterating(cls)
            cls.__getitem__ = slicing(cls)
        try:
            yield
        finally:
            nn.Module.__call__ = original
            for cls, fn in iter_originals.items():
                cls.__iter__ = fn
                cls.__getitem__ = getitem_originals[cls]

    @contextlib.contextmanager
    def track_int_attributes(self):
        """Temporarily replace int attributes of every module by :class:`TracedInt`."""
        saved: list[tuple[dict, str, int]] = []
        for path, module in self.root.named_modules():
            d = module.__dict__
            for k, v in list(d.items()):
                if type(v) is int and not k.startswith("_"):
                    saved.append((d, k, v))
                    d[k] = TracedInt(v, None, ("attr", path, k), self)
        try:
            yield
        finally:
            for d, k, v in saved:
                d[k] = v


def _same_kind(like: tuple | list, items: list) -> Any:
    """``items`` in the container type of ``like``: a list, a named tuple, a torch struct
    sequence (``x.max(dim=1).values``) or a plain tuple."""
    if isinstance(like, list):
        return type(like)(items)
    if hasattr(like, "_fields"):
        return type(like)(*items)
    if hasattr(type(like), "n_fields"):
        return type(like)(items)
    return tuple(items)


def _is_tensor_method(func: Callable) -> bool:
    return type(func).__name__ in ("method_descriptor", "wrapper_descriptor") or (
        getattr(func, "__qualname__", "").startswith(("Tensor.", "TensorBase."))
    )


def _shapes(args: Iterable) -> list:
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(tuple(a.shape))
        elif isinstance(a, (tuple, list)) and a and all(isinstance(x, torch.Tensor) for x in a):
            out.append([tuple(x.shape) for x in a])
        else:
            out.append(None)
    return out


def _int_sources(args: tuple, kwargs: dict) -> dict:
    """Provenance of TracedInt arguments: {(position path): source}."""
    found: dict = {}

    def visit(obj, path):
        if isinstance(obj, TracedInt):
            found[path] = obj.source
        elif isinstance(obj, (tuple, list)):
            for i, o in enumerate(obj):
                visit(o, path + (i,))

    for i, a in enumerate(args):
        visit(a, (i,))
    for k, v in kwargs.items():
        visit(v, (k,))
    return found


def _depends_on_input(node: fx.Node) -> bool:
    seen = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            return True
        stack.extend(n.all_input_nodes)
    return False


def _user_location() -> str:
    """The innermost stack frame outside torch and osf: 'file.py:LINE: code'."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    torch_dir = os.path.dirname(torch.__file__)
    for frame in reversed(traceback.extract_stack()):
        f = os.path.abspath(frame.filename)
        if f.startswith(here) or f.startswith(torch_dir):
            continue
        return f"{frame.filename}:{frame.lineno}: {(frame.line or linecache.getline(f, frame.lineno)).strip()}"
    return "<unknown>"


# --------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------
# per-layer diagnostics and the loss, when a model returns them as one tensor; fields that are no
# tensor (tuples of per-layer states, caches, nested outputs of sub-models) are never outputs
_SKIP_OUTPUT_FIELDS = {"hidden_states", "attentions", "cross_attentions", "past_key_values", "loss"}


def flatten_output(out: Any) -> dict[str, torch.Tensor]:
    """The task outputs of a model call as a flat ``{name: tensor}`` dict.

    For Hugging Face ``ModelOutput``s (any mapping) the top-level tensor fields are kept, except
    hidden states, attentions, caches and the loss (diagnostics, not what the model is for);
    fields holding anything else (tuples of per-layer states, caches, nested outputs) are left out.
    """
    if isinstance(out, torch.Tensor):
        return {"output": out}
    if isinstance(out, Mapping):  # ModelOutput is an OrderedDict
        items = {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and k not in _SKIP_OUTPUT_FIELDS}
        if not items:
            items = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
        return items
    if isinstance(out, (tuple, list)):
        flat: dict[str, torch.Tensor] = {}
        for i, o in enumerate(out):
            if isinstance(o, torch.Tensor):
                flat[f"output{i}"] = o
            elif isinstance(o, (tuple, list, Mapping)):
                for k, v in flatten_output(o).items():
                    flat[f"output{i}.{k}"] = v
        return flat
    raise TraceError(f"model output of type {type(out).__name__} has no tensors to trace")


def normalize_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """``example_inputs`` as (args, kwargs): a tensor, a tuple/list of args, or a dict of kwargs."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise TraceError(
        f"example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword inputs, "
        f"got {type(example_inputs).__name__}"
    )


class _Wrapper(nn.Module):
    """Calls the model with fixed non-tensor kwargs and returns its task outputs as a dict."""

    def __init__(self, model: nn.Module, static_kwargs: dict):
        super().__init__()
        self.model = model
        self.static_kwargs = static_kwargs

    def forward(self, *args, **kwargs):
        return flatten_output(self.model(*args, **kwargs, **self.static_kwargs))


# --------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------
def trace(model: nn.Module, example_inputs: Any = None, *, check: bool = True,
          fake: bool | None = None) -> fx.GraphModule:
    """Trace ``model`` into a ``torch.fx.GraphModule`` by running it on example inputs.

    Args:
        model: any ``nn.Module``; Hugging Face models get default inputs from their config.
        example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs.
        check: re-run model and graph on an input of another batch size (and length) and raise
            :class:`TraceError` if they disagree (on real inputs also on fresh values, naming the
            module and source line of any value-dependent Python decision).
        fake: run on fake tensors: the meta device, shapes and dtypes only (no compute, no
            activation memory). ``None`` (default): fake for models of :data:`FAKE_FROM_PARAMS`
            parameters and more where the model decides on shapes only, real otherwise
            (``gm.meta["osf"]["real_because"]`` says why, e.g. where a value was read); ``True``:
            fake or :class:`TraceError`; ``False``: real tensors.

    Returns:
        A GraphModule whose submodule ``model`` is ``model`` itself (no copies); calling it
        returns the model's task outputs as a dict of tensors. ``gm.meta["osf"]`` holds
        the tracing record (leaf calls, guards, input names).
    """
    from osf.ir.inputs import default_inputs, static_kwargs_for

    if example_inputs is None:
        example_inputs = default_inputs(model)
    args, kwargs = normalize_inputs(example_inputs)
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            raise TraceError(f"positional example input {i} is a {type(a).__name__}; pass tensors, or non-tensor "
                             "options as keyword inputs")
    tensor_kwargs = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    static = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
    static = {**static_kwargs_for(model), **static}
    n_params = sum(p.numel() for p in model.parameters())
    real_because = None if fake is not None or n_params >= FAKE_FROM_PARAMS else (
        f"a small model ({n_params:,} parameters < {FAKE_FROM_PARAMS:,}): computing is cheaper than faking")
    if fake or (fake is None and real_because is None):
        try:
            return _trace_fake(model, _Wrapper(model, static), args, tensor_kwargs, check)
        except NeedsRealValues as e:
            if fake:
                raise TraceError(f"the model cannot be traced on fake tensors: {e}. Pass fake=None to trace it on "
                                 "real tensors there") from e
            real_because = str(e)
    gm = _trace_real(model, _Wrapper(model, static), args, tensor_kwargs, check)
    gm.meta["osf"]["real_because"] = real_because
    return gm


def _record_run(tracer: Tracer, model: nn.Module, wrapper: nn.Module, args: tuple, kwargs: dict,
                modes: tuple = ()) -> dict:
    """One recorded run of ``wrapper`` on ``args``/``kwargs`` (placeholders made here); its outputs."""
    for i, a in enumerate(args):
        p = tracer.graph.placeholder(f"arg{i}")
        tracer._meta(p, a)
        tracer.env[id(a)] = p
    for k, v in kwargs.items():
        p = tracer.graph.placeholder(k)
        tracer._meta(p, v)
        tracer.env[id(v)] = p
    was_training = model.training
    try:
        with contextlib.ExitStack() as stack:
            for m in (torch.no_grad(), tracer.track_int_attributes(), tracer.patch_module_call(), *modes,
                      _Recorder(tracer)):
                stack.enter_context(m)
            tracer.recording = True
            try:
                return wrapper(*args, **kwargs)
            except (TraceError, NeedsRealValues):
                raise
            except Exception as e:
                if tracer.fake:  # an op fake tensors cannot run (a shape that depends on values): real ones can
                    raise NeedsRealValues(f"{type(e).__name__} in module {relative_path(tracer.current_module)!r} "
                                          f"at {_location_of(e)}: {_first_line(e)}") from e
                raise TraceError(  # name where it broke
                    f"tracing failed in module {tracer.current_module or '<root>'!r} at {_location_of(e)}: "
                    f"{type(e).__name__}: {e}. Pass example_inputs that the model accepts, or register the "
                    "module as a leaf (osf.ir.register_leaf) or give it an op rule (osf.ir.rules.register)."
                ) from e
            finally:
                tracer.recording = False
    finally:
        model.train(was_training)


def _graph_module(tracer: Tracer, model: nn.Module, wrapper: nn.Module, out: dict, args: tuple, kwargs: dict,
                  example_outputs: dict | None) -> fx.GraphModule:
    out_args = {k: tracer.to_arg(v) for k, v in out.items()}
    tracer.graph.output(out_args)
    tracer.settle_extra_outputs()
    for name, t in tracer.constants.items():
        wrapper.register_buffer(name, t, persistent=False)
    gm = fx.GraphModule(wrapper, tracer.graph, class_name="OSFTracedModel")
    gm.meta["osf"] = {
        "model": model,
        "guards": tracer.guards,
        "leaf_calls": dict(tracer.leaf_calls),
        "module_outputs": dict(tracer.module_outputs),
        "size_comparisons": list(tracer.size_comparisons),
        "carries_extra_outputs": sorted(tracer.carries_extra_outputs),
        "iterated_lists": sorted(tracer.iterated_lists),
        "inputs": [f"arg{i}" for i in range(len(args))] + list(kwargs),
        "example_args": args,
        "example_kwargs": kwargs,
        "outputs": list(out.keys()),
        # the original model's outputs on the example inputs, for the guards (None: not computed, a fake trace)
        "example_outputs": example_outputs,
        "fake": tracer.fake,
        "real_because": None,  # why a trace that could have run on fake tensors ran on real ones
    }
    return gm


def _trace_real(model: nn.Module, wrapper: nn.Module, args: tuple, kwargs: dict, check: bool) -> fx.GraphModule:
    tracer = Tracer(wrapper)
    out = _record_run(tracer, model, wrapper, args, kwargs)
    gm = _graph_module(tracer, model, wrapper, out, args, kwargs, {k: v.detach() for k, v in out.items()})
    if check:
        gm.meta["osf"]["shape_check"] = _check_replay(gm, wrapper, args, kwargs, tracer.guards)
    return gm


def meta_state(module: nn.Module, made: dict[int, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``module`` by name (tied names included) as a tensor on the
    meta device: shapes and dtypes, no storage; one meta tensor per real one (``made``, by the real
    one's id, may be shared between calls), so ties stay ties."""
    made = {} if made is None else made
    state = {}
    for name, t in [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]:
        if id(t) not in made:
            m = torch.empty_like(t, device="meta")
            made[id(t)] = nn.Parameter(m, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else m
        state[name] = made[id(t)]
    return state


def _to_meta(inputs: Iterable) -> list:
    return [t.to("meta") if isinstance(t, torch.Tensor) else t for t in inputs]


class _Unkeyable(Exception):
    pass


def _signature(x: Any) -> Any:
    """What decides the output shapes of a call on meta tensors: shapes, dtypes and plain values."""
    if isinstance(x, torch.Tensor):
        return ("tensor", tuple(x.shape), x.dtype)
    if x is None or isinstance(x, (bool, int, float, str, torch.dtype, torch.device)):
        return (type(x).__name__, int(x) if isinstance(x, TracedInt) else x)
    if isinstance(x, (tuple, list)):
        return (type(x).__name__, tuple(_signature(v) for v in x))
    if isinstance(x, dict):
        return ("dict", tuple((k, _signature(v)) for k, v in x.items()))
    raise _Unkeyable


class _MetaOpCache(TorchFunctionMode):
    """Outputs of torch calls on the meta device by their inputs' shapes, dtypes and plain
    arguments: on the meta device an op's output depends on nothing else, and each op costs
    ~0.1 ms there (Python decompositions), so twelve equal layers compute their shapes once.
    In-place ops are not cached (their output is their input, whose identity the tracer follows)."""

    def __init__(self):
        super().__init__()
        self.outputs: dict[Any, Any] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if (name.endswith("_") or name.startswith(("__i", "__set", "__get")) or "out" in kwargs
                or name in _PASS_THROUGH):
            return func(*args, **kwargs)
        try:
            key = (func, _signature(args), _signature(kwargs))
        except (_Unkeyable, TypeError):  # an argument it cannot key (an object, an unhashable value)
            return func(*args, **kwargs)
        try:
            hit = self.outputs.get(key)
        except TypeError:
            return func(*args, **kwargs)
        if hit is None:
            out = func(*args, **kwargs)
            leaves = pytree.tree_leaves(out)
            if leaves and all(isinstance(t, torch.Tensor) and t.is_meta for t in leaves):
                self.outputs[key] = out
            return out
        return pytree.tree_map_only(torch.Tensor, lambda t: torch.empty_strided(
            t.shape, t.stride(), dtype=t.dtype, device="meta"), hit)


class _RuleLeafOutputs:
    """Outputs, on the meta device, of the modules an op rule describes (a Mamba mixer), by the
    module's class and parameter shapes and the call's input shapes: a rule describes the module's
    output by its parameters and inputs, so 24 equal layers run their time loop once, not 24 times."""

    def __init__(self):
        self.outputs: dict[Any, Any] = {}
        self.described: dict[int, bool] = {}  # id(module) -> an op rule matches it

    def call(self, module: nn.Module, call: Callable, args: tuple, kwargs: dict) -> Any:
        described = self.described.get(id(module))
        if described is None:
            described = self.described[id(module)] = module_rules.match(module) is not None
        if not described:
            return call(module, *args, **kwargs)
        try:
            params = tuple((n, tuple(t.shape), t.dtype) for n, t in
                           (*module.named_parameters(), *module.named_buffers()))
            key = (type(module), params, _signature(args), _signature(kwargs))
        except _Unkeyable:
            return call(module, *args, **kwargs)
        if key not in self.outputs:
            out = call(module, *args, **kwargs)
            try:
                _signature(out)
            except _Unkeyable:  # an output holding objects (a cache): not shared between calls
                return out
            self.outputs[key] = out
        return pytree.tree_map_only(torch.Tensor, torch.empty_like, self.outputs[key])

    @contextlib.contextmanager
    def installed(self):
        """Calls of such modules outside the tracer (the replay check) go through :meth:`call` too."""
        original = nn.Module.__call__
        outputs = self

        def call(module: nn.Module, *args, **kwargs):
            return outputs.call(module, original, args, kwargs)

        nn.Module.__call__ = call
        try:
            yield
        finally:
            nn.Module.__call__ = original


def _trace_fake(model: nn.Module, wrapper: nn.Module, args: tuple, kwargs: dict, check: bool) -> fx.GraphModule:
    """The trace on fake tensors: parameters, buffers and inputs on the meta device (shapes and
    dtypes, no compute), so is everything the model computes. Raises :class:`NeedsRealValues`
    where values decide."""
    made: dict[int, torch.Tensor] = {}
    state = meta_state(wrapper, made)
    tracer = Tracer(wrapper, fake=True)
    tracer.device = next((t.device for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), tracer.device)
    tracer.param_names = {}
    for name, t in state.items():
        tracer.param_names.setdefault(id(t), name)
    meta_args, meta_kwargs = tuple(_to_meta(args)), dict(zip(kwargs, _to_meta(kwargs.values())))
    with _no_meta_attributes(model):
        out = _record_run(tracer, model, lambda *a, **k: functional_call(wrapper, state, a, k), meta_args,
                          meta_kwargs, modes=(torch.device("meta"), tracer.meta_ops))
        gm = _graph_module(tracer, model, wrapper, out, args, kwargs, None)
        if check:
            with tracer.rule_leaf_outputs.installed():
                gm.meta["osf"]["shape_check"] = _check_replay_fake(gm, wrapper, args, kwargs, state,
                                                                   meta_state(gm, made), tracer.meta_ops)
    _move_graph(gm, torch.device("meta"), tracer.device)
    return gm


def _move_graph(gm: fx.GraphModule, old: torch.device, new: torch.device) -> None:
    """Devices the trace read from tensors (``x.device``) as arguments of the graph's calls: ``old``
    becomes ``new`` (the meta device of a fake trace becomes the device the model runs on)."""
    def move(a: Any) -> Any:
        if isinstance(a, torch.device) and a == old:
            return new
        if isinstance(a, str) and a == str(old):
            return str(new)
        return a

    for node in gm.graph.nodes:
        node.args = fx.node.map_aggregate(node.args, move)
        node.kwargs = fx.node.map_aggregate(node.kwargs, move)
    gm.recompile()


def _lru_caches(model: nn.Module) -> list:
    """The ``functools.lru_cache`` wrappers the model's code may fill (as transformers' method
    caches of relative-position tables): those of the modules defining its classes, held in module
    globals, class attributes, or the closures of the functions there."""
    found: dict[int, Any] = {}
    seen: set[int] = set()

    def visit(obj: Any, depth: int = 0) -> None:
        if id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        if hasattr(obj, "cache_clear") and hasattr(obj, "cache_info"):
            found[id(obj)] = obj
        obj = getattr(obj, "__func__", obj)  # static and class methods
        for cell in getattr(obj, "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # an empty cell
                visit(cell.cell_contents, depth + 1)
        wrapped = getattr(obj, "__wrapped__", None)
        if wrapped is not None:
            visit(wrapped, depth + 1)

    classes = {c for m in model.modules() for c in type(m).__mro__ if c.__module__ not in ("builtins",)}
    for module_name in {c.__module__ for c in classes}:
        module = sys.modules.get(module_name)
        if module is not None and not module_name.startswith("torch"):
            for value in list(vars(module).values()):
                if callable(value) and not isinstance(value, type):
                    visit(value)
    for c in classes:
        if not c.__module__.startswith("torch"):
            for value in list(vars(c).values()):
                visit(value)
    return list(found.values())


@contextlib.contextmanager
def _no_meta_attributes(model: nn.Module):
    """Put back tensors a fake run left on the model (caches a forward fills) and refuse the fake
    trace there: the graph would read a tensor the trace never saw computed for real."""
    before = [(m, name, dict(getattr(m, name))) for m in model.modules()
              for name in ("__dict__", "_parameters", "_buffers")]
    caches = [(c, c.cache_info()) for c in _lru_caches(model)]

    def put_back() -> list[str]:
        for cache, info in caches:  # entries the fake run added hold meta tensors: start afresh
            if cache.cache_info() != info:
                cache.cache_clear()
        left = []
        for m, name, saved in before:
            now = getattr(m, name)
            for k, v in list(now.items()):
                values = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else (v,)
                if any(isinstance(x, torch.Tensor) and x.is_meta for x in values):
                    left.append(f"{type(m).__name__}.{k}")
                    if k in saved:
                        now[k] = saved[k]
                    else:
                        del now[k]
        return left

    try:
        yield
    except BaseException:
        put_back()
        raise
    left = put_back()
    if left:
        raise NeedsRealValues(f"the forward stores computed tensors on the model ({', '.join(left[:3])})")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _batch_of(args: tuple, kwargs: dict) -> int:
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.dim() > 0]
    return int(tensors[0].shape[0]) if tensors else 1


def _seq_of(args: tuple, kwargs: dict) -> int | None:
    ids = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.dim() == 2
           and not t.is_floating_point()]
    return int(ids[0].shape[1]) + 2 if ids else None


def _failing_node(gm: fx.GraphModule, args: tuple, kwargs: dict) -> str:
    """Which recorded op (and in which module) fails when the graph runs on ``args``/``kwargs``."""
    failed: list[fx.Node] = []

    class _Find(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            try:
                return super().run_node(n)
            except Exception:
                failed.append(n)
                raise

    try:
        with torch.no_grad():
            _Find(gm).run(*args, *kwargs.values())
    except Exception:
        pass
    if not failed:
        return "an op of the graph"
    n = failed[0]
    return f"op {n.meta.get('op', n.target)!r} in module {relative_path(n.meta.get('module', '')) or '<root>'!r}"


def _location_of(e: BaseException) -> str:
    """The innermost frame of the exception's traceback outside osf and torch: 'file:LINE (code)'."""
    tb = traceback.extract_tb(e.__traceback__)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    torch_dir = os.path.dirname(torch.__file__)
    for frame in reversed(tb):
        if not os.path.abspath(frame.filename).startswith((here, torch_dir)):
            return f"{frame.filename}:{frame.lineno} ({(frame.line or '').strip()})"
    return "<unknown>"


def _other_shape_error(e: BaseException, where: str) -> TraceError:
    return TraceError(
        f"the traced graph fails on an input of another shape where the model runs ({type(e).__name__} at {where}): "
        "a size was recorded as a constant. Pass example_inputs of the one shape the model is used with, or "
        "register the module computing that size as a leaf (osf.ir.register_leaf) or give it an op rule "
        "(osf.ir.rules.register)")


def _check_replay_fake(gm: fx.GraphModule, wrapper: nn.Module, args: tuple, kwargs: dict,
                       state: dict[str, torch.Tensor], graph_state: dict[str, torch.Tensor],
                       ops: _MetaOpCache) -> tuple | None:
    """Model and graph must give outputs of the same shapes and dtypes on fake inputs of another
    batch size (and length): a size recorded as a constant shows. Returns ``(args, kwargs, None)``,
    the real inputs of that shape for the supernet's build check (None if the model takes one shape)."""
    from osf.ir.inputs import resize_inputs

    other_args, other_kwargs = resize_inputs(args, kwargs, batch=_batch_of(args, kwargs) + 1,
                                             seq_len=_seq_of(args, kwargs), seed=1234)
    meta_args, meta_kwargs = tuple(_to_meta(other_args)), dict(zip(other_kwargs, _to_meta(other_kwargs.values())))
    with torch.no_grad(), torch.device("meta"), ops:
        try:
            expected = functional_call(wrapper, state, meta_args, meta_kwargs)
        except Exception:  # a model that takes one input shape only
            return None
        try:
            got = functional_call(gm, graph_state, meta_args, meta_kwargs)
        except Exception as e:  # the check on real tensors tells a size recorded as a constant from the rest
            raise NeedsRealValues(f"the graph's replay on the meta device fails ({type(e).__name__}: "
                                  f"{_first_line(e)})") from e
    for k, v in expected.items():
        g = got.get(k)
        if g is None or g.shape != v.shape or g.dtype != v.dtype:
            got_shape = "nothing" if g is None else f"{tuple(g.shape)} {g.dtype}"
            raise TraceError(f"the traced graph gives output {k!r} as {got_shape} where the model gives "
                             f"{tuple(v.shape)} {v.dtype} on an input of another shape: a size was recorded as a "
                             "constant. Register the module computing that size as a leaf (osf.ir.register_leaf) "
                             "or give it an op rule (osf.ir.rules.register)")
    return other_args, other_kwargs, None


def _check_replay(gm, wrapper, args, kwargs, guards, draws: int = 4) -> tuple | None:
    """Model and graph must agree on fresh random inputs (several draws when guards were taken),
    the first with one more sample and two more tokens where the model takes that shape.

    Returns ``(args, kwargs, outputs)`` of the model on that other shape (None if it takes one
    shape only): the supernet's build check reuses them."""
    from osf.ir.inputs import random_like_inputs, resize_inputs

    n_draws = draws if guards else 1
    other_args, other_kwargs = resize_inputs(args, kwargs, batch=_batch_of(args, kwargs) + 1,
                                             seq_len=_seq_of(args, kwargs), seed=1234)
    try:
        with torch.no_grad():
            outputs = wrapper(*other_args, **other_kwargs)
        other_shape = (other_args, other_kwargs, {k: v.detach() for k, v in outputs.items()})
        checks = [other_shape]
    except Exception:  # a model that takes one input shape only
        other_shape, checks = None, []
    for seed in range(1234 + len(checks), 1234 + n_draws):
        checks.append((*random_like_inputs(args, kwargs, seed=seed), None))
    for new_args, new_kwargs, expected in checks:
        with torch.no_grad():
            expected = expected if expected is not None else wrapper(*new_args, **new_kwargs)
            try:
                got = gm(*new_args, **new_kwargs)
            except Exception as e:
                raise _other_shape_error(e, _failing_node(gm, new_args, new_kwargs)) from e
        for k, v in expected.items():
            g = got[k]
            if g.shape != v.shape or not torch.allclose(g.float(), v.float(), rtol=1e-4, atol=1e-5):
                where = "; ".join(f"{g.module or '<root>'} at {g.location} ({g.what})" for g in guards[:3])
                hint = f" Value-dependent Python decisions were taken in: {where}." if guards else ""
                raise TraceError(
                    f"the traced graph does not reproduce output {k!r} of the model on new inputs.{hint} "
                    "Register the module that decides on tensor values as a leaf (osf.ir.register_leaf) "
                    "or give it an op rule (osf.ir.rules.register)."
                )
    return other_shape