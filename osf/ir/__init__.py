"""Graph IR: tracing, coupling analysis, op rules."""
from osf.ir.analyze import analyze
from osf.ir.ir import IR, AttrBinding, Block, Dim, Member
from osf.ir.rules import ModuleRule, register as register_rule
from osf.ir.trace import TraceError, register_leaf, trace

__all__ = ["trace", "analyze", "IR", "Dim", "Member", "Block", "AttrBinding", "TraceError", "register_leaf",
           "register_rule", "ModuleRule"]
