"""The numpy backend: a Graph planned into a flat list of steps over numbered slots.

Same semantics as ``ir.interpret`` (it shares ``eval_node``), with the per-call lookups done
once at compile time.
"""

from __future__ import annotations

from lamina.ir.graph import Graph
from lamina.ir.interpret import eval_node


class NumpyProgram:
    def __init__(self, graph: Graph):
        self.graph = graph
        slot = {p: i for i, p in enumerate(graph.params)}
        self.steps = []
        for n in graph.nodes:
            slot[n] = len(slot)
            self.steps.append((n, [slot[v] for v in n.inputs]))
        self.n_inputs = len(graph.inputs)
        self.state_names = [p.name for p in graph.state]
        self.outputs = [slot[v] for v in graph.outputs]
        self.updates = {k: slot[v] for k, v in graph.updates.items()}
        self.n_slots = len(slot)

    def __call__(self, inputs, state):
        env: list = [None] * self.n_slots
        env[:self.n_inputs] = inputs
        for i, name in enumerate(self.state_names):
            env[self.n_inputs + i] = state[name]
        for k, (node, args) in enumerate(self.steps):
            env[self.n_inputs + len(self.state_names) + k] = eval_node(
                node, [env[a] for a in args])
        return [env[i] for i in self.outputs], {k: env[i] for k, i in self.updates.items()}


class NumpyBackend:
    name = "numpy"
    passes = ()  # the reference runs the unfused graph

    def compile(self, graph: Graph, dump_dir: str | None = None,
                first_index: int = 0) -> NumpyProgram:
        return NumpyProgram(graph)

    def save_program(self, program: NumpyProgram) -> dict[str, bytes]:
        return {}  # the IR text is the whole program

    def load_program(self, graph: Graph, files: dict[str, bytes]) -> NumpyProgram:
        return NumpyProgram(graph)


backend = NumpyBackend()

