"""Artifacts: a compiled function saved to one file, loadable without its Python source.

The file is a zip archive:

    manifest.json     format and versions, backend, each variant's signature and output
                      structure, which state each variant binds, a sha256 of every member
    variant0.lir      the optimized IR of each compiled variant (text, parsed on load)
    variant0.<file>   backend files (object code, cubins) where the backend has them
    state.npz         parameters and optimizer state, by name (numpy, loaded without pickle)

It is written atomically (a temporary file, then a rename). Loading checks the format, the
checksums and the IR (parse + verify), and runs nothing but the backend's compiled program.

The file is untrusted input: whatever is wrong with it is an ArtifactError naming the member,
never a crash. Beyond the checksums (which whoever damaged a member may have recomputed), the
members must agree with each other: the manifest's signature and output structure with the IR,
every stored state array with the type the IR declares for it, and the backend's code with the
IR it was compiled from (backends record ``graph_digest`` of the IR with their code and check
it on load; they also check the structure of object code and cubins before MCJIT or the CUDA
driver sees them, ``lamina.backends.objcheck``). This catches damage and mistakes, not malice:
an artifact holds native code, and loading one runs it, like importing a Python module.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import zipfile

import numpy as np

from lamina.backends import get_backend
from lamina.ir.errors import ArtifactError, LaminaError, SignatureError
from lamina.ir.parser import parse
from lamina.ir.printer import print_graph
from lamina.ir.types import type_of
from lamina.ir.variable import Variable
from lamina.ir.verify import verify
from lamina.passes.manager import write_atomic
from lamina.runtime.executable import Executable, signature_key

FORMAT = "lamina-artifact"
FORMAT_VERSION = 1


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def graph_digest(graph) -> str:
    """The hash that binds a backend's code to the IR it was compiled from: sha256 of the
    printed IR without source locations (as the compile cache key; moving the source keeps
    it). Backends record it with their code at save time and compare on load."""
    return _sha256(print_graph(graph, locations=False).encode())


def save(path: str, name: str, backend: str, variants: list[Executable], version: str) -> None:
    """Write ``variants`` (compiled for ``backend``) and their state to ``path``."""
    if not variants:
        raise ArtifactError(f"{name}: nothing to save yet; call the function once (or use "
                            ".lower(*example_args)) so it compiles for a signature")
    be = get_backend(backend)
    members: dict[str, bytes] = {}
    storage: dict[int, str] = {}  # id(Variable) -> key in state.npz
    arrays: dict[str, np.ndarray] = {}
    entries = []
    for i, exe in enumerate(variants):
        ir_name = f"variant{i}.lir"
        members[ir_name] = print_graph(exe.graph).encode()
        files = {}
        for fname, data in be.save_program(exe.program).items():
            members[f"variant{i}.{fname}"] = data
            files[fname] = f"variant{i}.{fname}"
        bindings = {}
        for state_name, var in exe.variables.items():
            key = storage.get(id(var))
            if key is None:
                key = state_name
                while key in arrays:
                    key += "_"
                storage[id(var)] = key
                arrays[key] = var.numpy()
            bindings[state_name] = key
        entries.append({"ir": ir_name, "files": files, "state": bindings,
                        "signature": [[n, str(t)] for n, t in exe.signature],
                        "out_tree": exe.out_tree})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    members["state.npz"] = buf.getvalue()
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "backend": backend,
        "lamina_version": version, "numpy_version": np.__version__,
        "python": platform.python_version(), "machine": platform.machine(),
        "variants": entries,
        "checksums": {m: _sha256(d) for m, d in members.items()},
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=1))
        for m, d in members.items():
            zf.writestr(m, d)
    write_atomic(os.fspath(path), out.getvalue())


class LoadedFunction:
    """A function loaded from an artifact: call it like the original compiled function.

    It owns its state (loaded from the artifact); a loaded training step keeps training it.
    """

    def __init__(self, name: str, backend: str, variants: list[Executable], manifest: dict):
        self.__name__ = name
        self.backend = backend
        self.variants = variants
        self.manifest = manifest
        self._by_sig = {signature_key([t for _, t in e.signature]): e for e in variants}

    def __call__(self, *args):
        key = signature_key([type_of(a, f"argument {i}") for i, a in enumerate(args)])
        exe = self._by_sig.get(key)
        if exe is None:
            if len(self.variants) == 1:
                return self.variants[0](*args)  # its check names the mismatching argument
            have = "; ".join(_format_sig(e) for e in self.variants)
            raise SignatureError(f"{self.__name__}: no compiled variant for these arguments; "
                                 f"the artifact has: {have} (it cannot recompile without the "
                                 "source)")
        return exe(*args)

    @property
    def signatures(self) -> list[str]:
        return [_format_sig(e) for e in self.variants]

    def ir(self, stage: str | None = None, variant: int = -1) -> str:
        if stage not in (None, "final"):
            raise LaminaError(f"an artifact keeps only the final IR; stage {stage!r} is not "
                              "available (stages: ['final'])")
        return print_graph(self.variants[variant].graph)

    def stages(self) -> list[str]:
        return ["final"]

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {}
        for e in self.variants:
            out.update(e.state_dict())
        return out

    def save(self, path: str) -> None:
        save(path, self.__name__, self.backend, self.variants, self.manifest["lamina_version"])

    def __repr__(self) -> str:
        return f"<lamina loaded function {self.__name__} [{self.backend}]: " \
               f"{', '.join(self.signatures)}>"


def _format_sig(e: Executable) -> str:
    return "(" + ", ".join(f"{n}: {t}" for n, t in e.signature) + ")"


def load(path: str, version: str) -> LoadedFunction:
    """Read an artifact written by :func:`save`; ArtifactError says what is wrong with it.

    The file is untrusted input: every failure to read or make sense of it is an ArtifactError.
    """
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - zipfile raises many kinds on a damaged file
        raise ArtifactError(f"{path}: not a lamina artifact (not a readable zip archive: "
                            f"{e})") from None
    with zf:
        names = set(zf.namelist())

        def read(member: str) -> bytes:
            if member not in names:
                raise ArtifactError(f"{path}: member {member!r} is missing")
            try:
                return zf.read(member)
            except Exception as e:  # noqa: BLE001 - CRC, compression, "encrypted", EOF, ...
                raise ArtifactError(f"{path}: member {member!r} is corrupt "
                                    f"({type(e).__name__}: {e})") from None

        try:
            manifest = json.loads(read("manifest.json"))
        except (ValueError, RecursionError) as e:  # JSON and UTF-8 errors are ValueErrors
            raise ArtifactError(f"{path}: manifest.json is not valid JSON ({e})") from None
        _check_manifest(path, manifest, version)
        data = {}
        for member, digest in manifest["checksums"].items():
            data[member] = read(member)
            if _sha256(data[member]) != digest:
                raise ArtifactError(f"{path}: member {member!r} fails its checksum (the file "
                                    "was modified or damaged)")
    arrays = _load_state(path, data.get("state.npz"))
    # One Variable per stored array, shared by the variants that bind it.
    state = {}
    for k, a in arrays.items():
        try:
            state[k] = Variable(a, k)
        except LaminaError as e:
            raise ArtifactError(f"{path}: state.npz: array {k!r}: {e.message}") from None
    try:
        backend = get_backend(manifest["backend"])
    except LaminaError as e:
        raise ArtifactError(f"{path}: {e.message}") from None
    variants = [_load_variant(path, i, entry, data, state, backend, manifest["backend"])
                for i, entry in enumerate(manifest["variants"])]
    return LoadedFunction(manifest["name"], manifest["backend"], variants, manifest)


def _check_manifest(path: str, m, version: str) -> None:
    def bad(what):
        return ArtifactError(f"{path}: malformed manifest: {what}")

    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a lamina artifact (no lamina manifest)")
    if m.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format version {m.get('format_version')} is not "
                            f"supported (this lamina {version} reads version {FORMAT_VERSION})")
    for key, kind in (("name", str), ("backend", str), ("lamina_version", str),
                      ("variants", list), ("checksums", dict)):
        if not isinstance(m.get(key), kind):
            raise bad(f"{key!r} is missing or not a {kind.__name__}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in m["checksums"].items()):
        raise bad("'checksums' must map member names to sha256 strings")
    if not m["variants"]:
        raise bad("no compiled variants")
    for i, e in enumerate(m["variants"]):
        if not isinstance(e, dict):
            raise bad(f"variant {i} is not an object")
        for key, kind in (("ir", str), ("files", dict), ("state", dict), ("signature", list),
                          ("out_tree", list)):
            if not isinstance(e.get(key), kind):
                raise bad(f"variant {i}: {key!r} is missing or not a {kind.__name__}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in e["files"].items()):
            raise bad(f"variant {i}: 'files' must map file names to member names")
        members = [e["ir"]] + list(e["files"].values())
        for member in members:
            if member not in m["checksums"]:
                raise bad(f"variant {i} names {member!r}, which has no checksum")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in e["state"].items()):
            raise bad(f"variant {i}: 'state' must map state names to stored names")


def _load_state(path: str, blob: bytes | None) -> dict[str, np.ndarray]:
    if blob is None:
        raise ArtifactError(f"{path}: state.npz is missing")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as e:  # noqa: BLE001 - a damaged npz fails in many ways
        raise ArtifactError(f"{path}: state.npz is unreadable ({type(e).__name__}: {e})") \
            from None


def _load_variant(path, i, entry, data, state, backend, backend_name) -> Executable:
    ir_member = entry["ir"]
    try:
        graph = verify(parse(data[ir_member].decode("utf-8")), allow_grad=False)
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path}: its IR ({ir_member}) is not UTF-8 text ({e})") from None
    except LaminaError as e:
        raise ArtifactError(f"{path}: its IR does not load: {ir_member}: {e.message}") from None
    except RecursionError:
        raise ArtifactError(f"{path}: its IR does not load: {ir_member}: nested too deeply") \
            from None
    _check_signature(path, i, entry, graph)
    variables = _bind_state(path, i, entry, graph, state)
    files = {f: data[m] for f, m in entry["files"].items()}
    try:
        program = backend.load_program(graph, files)
        return Executable(graph, program, variables, entry["out_tree"], backend_name)
    except LaminaError as e:
        raise ArtifactError(f"{path}: {_in_member_names(e.message, entry)}") from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        # NOTE: backends check their files before using them; this only keeps a check they
        # lack from escaping as something other than "this artifact is bad"
        raise ArtifactError(f"{path}: variant {i}: its backend files ({', '.join(files)}) are "
                            f"malformed ({type(e).__name__}: {e})") from None


def _in_member_names(message: str, entry: dict) -> str:
    """A backend's message in the artifact's terms: backends name their files by their own
    names ("kernels.o") and the IR as "the IR"; the artifact stores them as members
    ("variant0.kernels.o", "variant0.lir")."""
    for fname, member in entry["files"].items():
        message = re.sub(rf"(?<![\w.]){re.escape(fname)}(?![\w])", lambda _, m=member: m,
                         message)
    return re.sub(r"\bthe IR\b", lambda _: f"the IR ({entry['ir']})", message)


def _check_signature(path: str, i: int, entry: dict, graph) -> None:
    """The manifest's signature and output structure must be those of the IR."""
    have = [[p.name, str(p.type)] for p in graph.inputs]
    if entry["signature"] != have:
        said = ", ".join(": ".join(map(str, x)) if isinstance(x, list) else repr(x)
                         for x in entry["signature"])
        raise ArtifactError(f"{path}: manifest.json gives variant {i} the signature ({said}), "
                            f"but its IR ({entry['ir']}) takes "
                            f"({', '.join(': '.join(x) for x in have)})")
    leaves = _tree_leaves(entry["out_tree"])
    if leaves is None:
        raise ArtifactError(f"{path}: manifest.json: variant {i}'s output structure "
                            "('out_tree') is malformed")
    if leaves != len(graph.outputs):
        raise ArtifactError(f"{path}: manifest.json: variant {i}'s output structure has "
                            f"{leaves} leaves, but its IR ({entry['ir']}) returns "
                            f"{len(graph.outputs)} values")


def _tree_leaves(tree, depth: int = 0) -> int | None:
    """The leaves of an output structure (``lamina.ir.tree``), or None when malformed."""
    if depth > 64 or not isinstance(tree, list) or not tree or not isinstance(tree[0], str):
        return None
    kind = tree[0]
    if kind in ("leaf", "none"):
        return (kind == "leaf") if len(tree) == 1 else None
    if kind not in ("tuple", "list", "dict") or len(tree) != 2 or not isinstance(tree[1], list):
        return None
    total = 0
    for child in tree[1]:
        if kind == "dict":
            if not (isinstance(child, list) and len(child) == 2 and isinstance(child[0], str)):
                return None
            child = child[1]
        n = _tree_leaves(child, depth + 1)
        if n is None:
            return None
        total += n
    return total


def _bind_state(path: str, i: int, entry: dict, graph, state: dict[str, Variable]) -> dict:
    """The stored Variable of each state the IR declares, of exactly the declared type (native
    code reads the bytes as that type: another shape or dtype would read out of bounds)."""
    variables = {}
    for p in graph.state:
        key = entry["state"].get(p.name)
        if key is None:
            raise ArtifactError(f"{path}: manifest.json: variant {i} binds no stored array to "
                                f"state %{p.name} of its IR ({entry['ir']})")
        var = state.get(key)
        if var is None:
            raise ArtifactError(f"{path}: state {key!r} is missing from state.npz (state "
                                f"%{p.name} of {entry['ir']})")
        if var.type != p.type:
            raise ArtifactError(f"{path}: state.npz: array {key!r} is {var.type}, but "
                                f"{entry['ir']} declares state %{p.name}: {p.type}")
        variables[p.name] = var
    return variables
