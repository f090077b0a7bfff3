"""The ``lamina`` command line: look inside artifacts and IR files.

    lamina info model.lamina        manifest: backend, variants, signatures, state sizes
    lamina ir model.lamina          the optimized IR of each variant
    lamina verify graph.lir         parse + verify an IR file, print it back in canonical form
"""

from __future__ import annotations

import argparse
import sys


def _info(args) -> int:
    import lamina as lm

    f = lm.load(args.path)
    m = f.manifest
    print(f"{args.path}: {m['name']} [{m['backend']}], lamina {m['lamina_version']}, "
          f"numpy {m['numpy_version']}, python {m['python']} on {m['machine']}")
    for i, e in enumerate(f.variants):
        g = e.graph
        print(f"  variant {i}: ({', '.join(f'{n}: {t}' for n, t in e.signature)}) -> "
              f"{len(g.outputs)} output(s), {len(g.nodes)} nodes, {len(g.updates)} state updates")
    total = 0
    for name, arr in f.state_dict().items():
        total += arr.nbytes
        print(f"  state {name}: {arr.dtype}{list(arr.shape)}")
    print(f"  state total: {total} bytes")
    return 0


def _ir(args) -> int:
    import lamina as lm

    f = lm.load(args.path)
    for i in range(len(f.variants)):
        print(f.ir(variant=i))
    return 0


def _verify(args) -> int:
    from lamina.ir import parse, print_graph, verify

    with open(args.path) as fh:
        text = fh.read()
    print(print_graph(verify(parse(text))), end="")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="lamina", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, fn, what in [("info", _info, "an artifact (.lamina)"),
                           ("ir", _ir, "an artifact (.lamina)"),
                           ("verify", _verify, "an IR text file (.lir)")]:
        p = sub.add_parser(name, help=fn.__doc__ or what)
        p.add_argument("path", help=what)
        p.set_defaults(fn=fn)
    args = ap.parse_args(argv)
    from lamina.ir.errors import LaminaError

    try:
        return args.fn(args)
    except (LaminaError, OSError) as e:
        print(f"lamina {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
