"""The IR: types, the op registry, Graph, text printer and parser, verifier, interpreter.

It imports nothing else from lamina and never imports llvmlite or triton.
"""

from lamina.ir import config, dtypes, ops
from lamina.ir.builder import Builder, Var
from lamina.ir.dtypes import DType
from lamina.ir.errors import (
                              ArtifactError,
                              DTypeError,
                              GradError,
                              LaminaError,
                              ParseError,
                              ShapeError,
                              SignatureError,
                              SourceLoc,
                              TraceError,
                              VerifyError,
)
from lamina.ir.graph import Graph, Node, Param, Value
from lamina.ir.interpret import interpret
from lamina.ir.parser import parse
from lamina.ir.printer import print_graph
from lamina.ir.types import TensorType
from lamina.ir.variable import Variable
from lamina.ir.verify import verify

__all__ = [
    "ArtifactError", "Builder", "DType", "DTypeError", "GradError", "Graph", "LaminaError",
    "Node", "Param", "ParseError", "ShapeError", "SignatureError", "SourceLoc", "TensorType",
    "TraceError", "Value", "Var", "Variable", "VerifyError", "config", "dtypes", "interpret",
    "ops", "parse", "print_graph", "verify",
]
