"""One-call rewriting of Hugging Face transformers models onto fastxf's ops:
optimize(model), revert(model), explain(model). See rewrite.py."""

from .rewrite import explain, format_report, optimize, revert

__all__ = ["explain", "format_report", "optimize", "revert"]
