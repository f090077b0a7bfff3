"""Structural checks of ELF object code before a loader sees it.

Object code reaches lamina from artifacts and from the on-disk compile cache, both untrusted
input. The loaders behind it trust their input: LLVM's RuntimeDyld (MCJIT) reads section and
symbol tables without bounds checks and calls ``abort()`` on what it does not understand, and
the CUDA driver is no better. So every object is parsed here first, by a small ELF64 reader of
our own (the format is the System V gABI's), and refused with an ``ArtifactError`` naming it when:

- the header is not ELF64 of this machine's byte order, of the expected type (``ET_REL`` for
  CPU objects, ``ET_EXEC`` for cubins) and machine (x86-64, AArch64, NVIDIA CUDA, ...);
- a table (section headers, program headers) or a section's bytes lie outside the file; a
  section alignment is not a power of two or absurd; sections to allocate are absurdly large;
- a string table is not NUL-terminated or a name lies outside it;
- a symbol names a section that does not exist or, in a relocatable object, lies outside it;
- a relocation section names no symbol table or target section, names a symbol that does not
  exist, patches bytes outside its target, or (x86-64) has a type RuntimeDyld cannot apply;
- ``.eh_frame`` records (registered with the unwinder on load) do not tile their section;
- the functions the caller needs are not defined, global, of function type, in code.

These checks catch damage and mistakes (a truncated download, a file swapped for another), not
malice: well-formed object code can do anything when it runs. Loading code means trusting it.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from lamina.ir.errors import ArtifactError

ET_REL, ET_EXEC = 1, 2
EM_X86_64, EM_AARCH64, EM_CUDA = 62, 183, 190
_MACHINES = {"x86_64": EM_X86_64, "amd64": EM_X86_64, "aarch64": EM_AARCH64,
             "arm64": EM_AARCH64}
_MACHINE_NAMES = {EM_X86_64: "x86-64", EM_AARCH64: "AArch64", EM_CUDA: "NVIDIA CUDA"}
_TYPE_NAMES = {ET_REL: "relocatable object", ET_EXEC: "executable"}

SHT_NULL, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_REL = 0, 2, 3, 4, 8, 9
SHT_GROUP, SHT_SYMTAB_SHNDX = 17, 18
SHF_ALLOC, SHF_EXECINSTR, SHF_GROUP = 0x2, 0x4, 0x200
# Section flags RuntimeDyld handles: write, alloc, exec, merge, strings, info link, link order,
# group, x86-64 large, exclude (not TLS, compressed or OS-specific ones).
_REL_FLAGS = 0x1 | 0x2 | 0x4 | 0x10 | 0x20 | 0x40 | 0x80 | 0x200 | 0x10000000 | 0x80000000
SHN_UNDEF, SHN_LORESERVE, SHN_ABS, SHN_COMMON = 0, 0xFF00, 0xFFF1, 0xFFF2
STT_FUNC, STT_SECTION, STT_FILE, STT_COMMON = 2, 3, 4, 5
STB_LOCAL = 0

# Bound the memory a loader would allocate for a damaged size or alignment field: lamina's
# objects hold code and constants (kilobytes), never gigabytes, and align to at most a page.
MAX_ALLOC_BYTES = 1 << 30
MAX_ALIGN = 1 << 16

# x86-64 relocation types allowed, with the bytes each patches: those of the large code model
# that JIT code is compiled for (R_X86_64_64, PC64, GOTOFF64, GOT64, GOTPC64). RuntimeDyld
# aborts the process on types it does not implement, and on a 32-bit field whose value does
# not fit, which JIT memory placed anywhere in the address space makes likely.
_X86_64_RELOCS = {0: 0, 1: 8, 24: 8, 25: 8, 27: 8, 29: 8}
# AArch64: data relocations patch 8 or 2 bytes (ABS64/PREL64, ABS16/PREL16); the rest, 4.
_AARCH64_WIDTH = {257: 8, 260: 8, 259: 2, 262: 2}


def host_machine() -> int | None:
    """The ``e_machine`` of this process's CPU objects (None where lamina does not know it)."""
    import platform

    return _MACHINES.get(platform.machine().lower())


@dataclass(frozen=True)
class Section:
    index: int
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    align: int
    entsize: int


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int
    size: int
    type: int
    bind: int
    shndx: int

    @property
    def defined(self) -> bool:
        return self.shndx != SHN_UNDEF


@dataclass
class ElfObject:
    """What the checks read from an object: its header fields, sections and symbols."""

    type: int
    machine: int
    flags: int
    abi_version: int
    sections: list[Section]
    symbols: list[Symbol]

    def defined(self, name: str) -> Symbol | None:
        """The global definition of ``name``, or None."""
        for s in self.symbols:
            if s.name == name and s.defined and s.bind != STB_LOCAL:
                return s
        return None

    def undefined(self) -> list[str]:
        """The names of the symbols the object needs from elsewhere."""
        return sorted({s.name for s in self.symbols[1:] if not s.defined and s.name})


def check_object(data: bytes, what: str, *, etype: int = ET_REL, machine: int | None = None,
                 functions: Iterable[str] = ()) -> ElfObject:
    """Parse and check ``data`` (named ``what`` in errors); ``functions`` must be defined.

    ``machine=None`` accepts any machine (relocation offsets then need only one byte in
    bounds). Raises ArtifactError("<what>: <problem>").
    """
    try:
        obj = _Reader(bytes(data), what, etype, machine).read()
    except struct.error as e:  # NOTE: every read is bounds-checked first; this is a backstop
        raise ArtifactError(f"{what}: truncated or malformed ELF ({e})") from None
    for name in functions:
        _check_function(obj, name, what)
    return obj


def _check_function(obj: ElfObject, name: str, what: str) -> None:
    sym = obj.defined(name)
    if sym is None:
        others = sorted({s.name for s in obj.symbols if s.defined and s.bind != STB_LOCAL
                         and s.type == STT_FUNC and s.name})
        has = f"defines {', '.join(others[:6])}" if others else "defines no global function"
        raise ArtifactError(f"{what}: {has}, not {name}")
    if sym.type != STT_FUNC:
        raise ArtifactError(f"{what}: {name} is not a function (symbol type {sym.type})")
    code = SHF_ALLOC | SHF_EXECINSTR
    if sym.shndx >= len(obj.sections) or obj.sections[sym.shndx].flags & code != code:
        raise ArtifactError(f"{what}: {name} is not in a code section")
    if sym.size == 0:
        raise ArtifactError(f"{what}: {name} has no code (size 0)")


class _Reader:
    def __init__(self, data: bytes, what: str, etype: int, machine: int | None):
        self.data, self.what, self.etype, self.machine = data, what, etype, machine

    def fail(self, problem: str) -> ArtifactError:
        return ArtifactError(f"{self.what}: {problem}")

    def span(self, offset: int, size: int, what: str) -> None:
        """Raise unless bytes [offset, offset + size) lie in the file."""
        if offset < 0 or size < 0 or offset + size > len(self.data):
            raise self.fail(f"{what} (bytes {offset}..{offset + size}) lies outside the file "
                            f"({len(self.data)} bytes): truncated or damaged")

    def read(self) -> ElfObject:
        d, kind = self.data, _TYPE_NAMES.get(self.etype, "object")
        if len(d) < 16 or d[:4] != b"\x7fELF":
            raise self.fail(f"not an ELF {kind} (bad magic)")
        if d[4] != 2:
            raise self.fail(f"not an ELF64 {kind} (class {d[4]})")
        if d[5] != (1 if sys.byteorder == "little" else 2):
            raise self.fail(f"an ELF {kind} of the other byte order (data encoding {d[5]})")
        if d[6] != 1:
            raise self.fail(f"unknown ELF version {d[6]}")
        self.e = "<" if d[5] == 1 else ">"
        self.span(0, 64, "the ELF header")
        (_, e_type, e_machine, e_version, _, phoff, shoff, flags, ehsize, phentsize, phnum,
         shentsize, shnum, shstrndx) = struct.unpack_from(self.e + "16sHHIQQQIHHHHHH", d, 0)
        if e_type != self.etype:
            raise self.fail(f"not an ELF {kind} (type {_TYPE_NAMES.get(e_type, e_type)})")
        if self.machine is not None and e_machine != self.machine:
            got, want = (_MACHINE_NAMES.get(m, f"machine {m}") for m in (e_machine, self.machine))
            raise self.fail(f"object code for {got}, not {want}")
        # NOTE: cubins of the older ABI put a toolkit version in e_version
        if ehsize != 64 or (e_version != 1 and e_machine != EM_CUDA):
            raise self.fail(f"malformed ELF header (version {e_version}, size {ehsize})")
        if phnum and (phentsize != 56 or self.etype == ET_REL):
            raise self.fail(f"malformed program header table ({phnum} x {phentsize} bytes)")
        self.span(phoff, phnum * 56, "the program header table")
        for k in range(phnum):
            p = struct.unpack_from(self.e + "IIQQQQQQ", d, phoff + 56 * k)
            if p[0] == 1:  # PT_LOAD: the loader copies p_filesz bytes from p_offset
                self.span(p[2], p[5], f"segment {k}")
                if p[6] > MAX_ALLOC_BYTES or p[5] > p[6]:
                    raise self.fail(f"segment {k}: impossible sizes ({p[5]} in file, {p[6]} "
                                    "in memory)")
        if shentsize != 64 or shoff == 0:
            raise self.fail(f"no valid section header table (entry size {shentsize}, offset "
                            f"{shoff})")
        self.span(shoff, 64, "the section header table")
        if shnum == 0:  # more than 0xff00 sections: the count is in section 0's size
            shnum = struct.unpack_from(self.e + "Q", d, shoff + 32)[0]
        if shstrndx == 0xFFFF:  # SHN_XINDEX: the index is in section 0's link
            shstrndx = struct.unpack_from(self.e + "I", d, shoff + 40)[0]
        if shnum == 0:
            raise self.fail("no sections")
        self.span(shoff, shnum * 64, f"the section header table ({shnum} entries)")
        raw = [struct.unpack_from(self.e + "IIQQQQIIQQ", d, shoff + 64 * k) for k in range(shnum)]
        if raw[0][1] != SHT_NULL:
            raise self.fail("section 0 is not the null section")
        if not 0 < shstrndx < shnum or raw[shstrndx][1] != SHT_STRTAB:
            raise self.fail(f"section name table index {shstrndx} is not a string table")
        self.raw = raw
        names = self.strtab(shstrndx, "the section name table")
        sections = []
        alloc = 0
        for k, (name, typ, fl, _, off, size, link, info, align, entsize) in enumerate(raw):
            sec = Section(k, self.string(names, name, f"section {k}'s name"), typ, fl, off, size,
                          link, info, align, entsize)
            label = f"section {k} ({sec.name})"
            if typ != SHT_NOBITS and typ != SHT_NULL:
                self.span(off, size, label)
            if align & (align - 1) or align > MAX_ALIGN:
                raise self.fail(f"{label}: alignment {align} is not a power of two up to "
                                f"{MAX_ALIGN}")
            if self.etype == ET_REL and fl & ~_REL_FLAGS:
                raise self.fail(f"{label}: unsupported flags {fl & ~_REL_FLAGS:#x}")
            if fl & SHF_ALLOC:
                alloc += size
                if alloc > MAX_ALLOC_BYTES:
                    raise self.fail(f"{label}: sections to load exceed {MAX_ALLOC_BYTES} bytes")
            sections.append(sec)
        self.sections = sections
        symtabs = [s for s in sections if s.type == SHT_SYMTAB]
        if len(symtabs) > 1:
            raise self.fail(f"{len(symtabs)} symbol tables (ELF allows one)")
        if any(s.type == SHT_SYMTAB_SHNDX for s in sections):
            raise self.fail("extended section indices (SHT_SYMTAB_SHNDX) are not supported")
        symbols = self.symbols(symtabs[0]) if symtabs else []
        grouped: set[int] = set()
        for s in sections:
            if s.type in (SHT_RELA, SHT_REL):
                self.relocations(s, symtabs, symbols, e_machine)
            elif s.type == SHT_GROUP:
                grouped.update(self.group(s))
            elif s.name == ".eh_frame" and s.type != SHT_NOBITS:
                self.eh_frame(s)
        for s in sections:
            if self.etype == ET_REL and s.flags & SHF_GROUP and s.index not in grouped:
                raise self.fail(f"section {s.index} ({s.name}): marked as a group member, but "
                                "no group lists it")
        return ElfObject(e_type, e_machine, flags, d[8], sections, symbols)

    def strtab(self, index: int, what: str) -> bytes:
        s = self.raw[index]
        if s[1] != SHT_STRTAB:
            raise self.fail(f"{what} (section {index}) is not a string table")
        table = self.data[s[4]:s[4] + s[5]]
        if not table or table[-1] != 0:
            raise self.fail(f"{what} (section {index}) is not NUL-terminated")
        return table

    def string(self, table: bytes, offset: int, what: str) -> str:
        if offset >= len(table):
            raise self.fail(f"{what} lies outside its string table (offset {offset} of "
                            f"{len(table)})")
        return table[offset:table.index(b"\0", offset)].decode("utf-8", "replace")

    def symbols(self, sec: Section) -> list[Symbol]:
        label = f"symbol table (section {sec.index})"
        if sec.entsize != 24 or sec.size % 24:
            raise self.fail(f"{label}: entry size {sec.entsize} and size {sec.size} do not fit "
                            "24-byte symbols")
        if not 0 < sec.link < len(self.sections):
            raise self.fail(f"{label}: links to section {sec.link}, which does not exist")
        names = self.strtab(sec.link, f"the string table of the {label}")
        count = sec.size // 24
        if sec.info > count:
            raise self.fail(f"{label}: says {sec.info} local symbols of {count}")
        out = []
        for k, (name, info, _, shndx, value, size) in enumerate(
                struct.iter_unpack(self.e + "IBBHQQ", self.data[sec.offset:sec.offset + sec.size])):
            sym = Symbol(self.string(names, name, f"symbol {k}'s name"), value, size, info & 0xF,
                         info >> 4, shndx)
            label = f"symbol {k} ({sym.name or 'unnamed'})"
            # RuntimeDyld knows no thread-local or indirect symbols and aligns a common block
            # to its value (zero trips an assertion)
            if self.etype == ET_REL and sym.type > STT_COMMON:
                raise self.fail(f"{label}: symbol type {sym.type} is not supported")
            if self.etype == ET_REL and (shndx == SHN_COMMON or sym.type == STT_COMMON) and (
                    shndx != SHN_COMMON or not 0 < value <= MAX_ALIGN or value & (value - 1)):
                raise self.fail(f"{label}: a common block needs a power-of-two alignment")
            if shndx >= SHN_LORESERVE:
                if shndx not in (SHN_ABS, SHN_COMMON):
                    raise self.fail(f"{label}: reserved section index {shndx:#x}")
                if shndx == SHN_COMMON and size > MAX_ALLOC_BYTES:
                    raise self.fail(f"{label}: common block of {size} bytes")
            elif shndx >= len(self.sections):
                raise self.fail(f"{label}: in section {shndx}, which does not exist")
            elif shndx != SHN_UNDEF and self.etype == ET_REL and sym.type not in (STT_SECTION,
                                                                                  STT_FILE):
                target = self.sections[shndx]
                if value + size > target.size:  # in a relocatable object, values are offsets
                    raise self.fail(f"{label}: bytes {value}..{value + size} lie outside its "
                                    f"section {target.name} ({target.size} bytes)")
            out.append(sym)
        return out

    def relocations(self, sec: Section, symtabs: list[Section], symbols: list[Symbol],
                    machine: int) -> None:
        label = f"relocation section {sec.index} ({sec.name})"
        entry = 24 if sec.type == SHT_RELA else 16
        if sec.entsize != entry or sec.size % entry:
            raise self.fail(f"{label}: entry size {sec.entsize} and size {sec.size} do not fit "
                            f"{entry}-byte entries")
        if sec.size == 0:
            return
        if not symtabs or sec.link != symtabs[0].index:
            raise self.fail(f"{label}: links to section {sec.link}, not the symbol table")
        if not 0 < sec.info < len(self.sections):
            raise self.fail(f"{label}: applies to section {sec.info}, which does not exist")
        target = self.sections[sec.info]
        if target.type == SHT_NOBITS:
            raise self.fail(f"{label}: applies to {target.name}, which has no bytes")
        # RuntimeDyld gives sections it need not load no memory, then patches them anyway
        if self.etype == ET_REL and not target.flags & SHF_ALLOC:
            raise self.fail(f"{label}: applies to {target.name}, which is not loaded")
        fmt = self.e + ("QQq" if entry == 24 else "QQ")
        for k, r in enumerate(struct.iter_unpack(fmt, self.data[sec.offset:sec.offset +
                                                                sec.size])):
            offset, sym, rtype = r[0], r[1] >> 32, r[1] & 0xFFFFFFFF
            if sym >= len(symbols):
                raise self.fail(f"{label}: entry {k} names symbol {sym} of {len(symbols)}")
            s = symbols[sym]
            # RuntimeDyld resolves a section symbol through its section (none: abort) and
            # cannot relocate against a file name at all
            if s.type == STT_FILE or (s.type == STT_SECTION and
                                      not 0 < s.shndx < len(self.sections)):
                raise self.fail(f"{label}: entry {k} refers to {s.name or 'a symbol'} "
                                f"(type {s.type}), which has no address")
            if self.etype == ET_REL and 0 < s.shndx < len(self.sections) and \
                    not self.sections[s.shndx].flags & SHF_ALLOC:
                raise self.fail(f"{label}: entry {k} refers to {s.name or 'a symbol'} in "
                                f"{self.sections[s.shndx].name}, which is not loaded")
            if machine == EM_X86_64:
                width = _X86_64_RELOCS.get(rtype)
                if width is None:
                    raise self.fail(f"{label}: entry {k} has relocation type {rtype}, which "
                                    "the loader does not apply")
            elif machine == EM_AARCH64:
                width = _AARCH64_WIDTH.get(rtype, 4)
            else:
                width = 1
            if offset + width > target.size:
                raise self.fail(f"{label}: entry {k} patches bytes {offset}..{offset + width} "
                                f"outside {target.name} ({target.size} bytes)")

    def group(self, sec: Section) -> tuple[int, ...]:
        """The sections a group lists (each must exist)."""
        if sec.size % 4 or sec.size == 0:
            raise self.fail(f"group section {sec.index}: size {sec.size}")
        words = struct.unpack_from(self.e + f"{sec.size // 4}I", self.data, sec.offset)
        for member in words[1:]:  # the first word holds flags
            if not 0 < member < len(self.sections):
                raise self.fail(f"group section {sec.index}: names section {member}, which "
                                "does not exist")
        return words[1:]

    def eh_frame(self, sec: Section) -> None:
        """Walk the CIE/FDE records: each one's length must end inside the section and each
        FDE must point back at a CIE (the unwinder follows both when the code is loaded)."""
        label = f"unwind table {sec.name} (section {sec.index})"
        d, pos, end, cies = self.data, sec.offset, sec.offset + sec.size, set()
        while pos < end:
            if pos + 4 > end:
                raise self.fail(f"{label}: a record header at byte {pos - sec.offset} is cut off")
            length = struct.unpack_from(self.e + "I", d, pos)[0]
            if length == 0:  # the terminator
                break
            if length == 0xFFFFFFFF or length < 4 or pos + 4 + length > end:
                raise self.fail(f"{label}: the record at byte {pos - sec.offset} (length "
                                f"{length}) does not fit the section ({sec.size} bytes)")
            cie_ptr = struct.unpack_from(self.e + "I", d, pos + 4)[0]
            if cie_ptr == 0:
                cies.add(pos)
            elif pos + 4 - cie_ptr not in cies:
                raise self.fail(f"{label}: the record at byte {pos - sec.offset} points at no "
                                "CIE")
            pos += 4 + length
