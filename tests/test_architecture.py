"""The package's structure, checked from its source: stages in data order, no import reaching back
to an earlier stage, no import cycle (lazy imports inside functions count too), small modules.

    corpus -> counts -> style pack -> compiled modes -> kernels -> steering core -> engine glue
    -> vLLM adapters -> commands / evaluation / benchmarks
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = "vllm_ngram_style"

# module (or package prefix) -> stage; a module may import only from its own stage or earlier ones.
STAGES = [
    ("foundations", ["errors", "settings", "numba_compat", "quoting", "contract", "adaptive", "loop_guard", "tokenizer", "models"]),
    ("corpus", ["corpus", "corpus_reader", "corpus_split"]),
    ("counts", ["count_kernels", "spill", "counting", "table_stream", "safetensors_stream", "token_stream"]),
    ("pack", ["backoff", "pack", "kneser_ney", "arpa", "pack_writer", "shards", "train", "merging"]),
    ("modes", ["modes"]),
    ("kernels", ["kernels"]),
    ("steering core", ["steering_core"]),
    ("engine glue", ["request_args", "config", "validation", "styles", "engine", "live"]),
    ("vLLM adapters", ["adapters", "processor", "vllm_v1", "vllm_v2", "naive_processor", "middleware"]),
    ("apps", ["launch", "evaluation", "bench", "testing", "commands", "cli"]),
]
MAX_LINES = 400


def _modules() -> dict:
    """{dotted module name: file path} of every installed module (kernels/ installs as PKG.kernels)."""
    out = {}
    for top, prefix in ((os.path.join(ROOT, PKG), PKG), (os.path.join(ROOT, "kernels"), PKG + ".kernels")):
        for folder, _, files in os.walk(top):
            for f in files:
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(folder, f), top)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join([prefix] + rel)] = os.path.join(folder, f)
    return out


def _imports(name: str, path: str, modules: dict) -> set:
    """The package modules ``name`` imports (anywhere in the file)."""
    is_pkg = path.endswith("__init__.py")
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in modules:  # `from .x import Name` names a module or something inside one
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith(PKG) and not name.startswith(t + "."):
                found.add(t)  # (a module's own parent packages are imported before it anyway)
    return found


def _stage(name: str) -> int:
    parts = name.split(".")[1:] or ["__init__"]
    for i, (_, members) in enumerate(STAGES):
        if parts[0] in members:
            return i
    raise AssertionError(f"{name} is in no stage: add it to STAGES in {__file__}")


def test_no_import_reaches_back_to_an_earlier_stage():
    modules = _modules()
    bad = []
    for name, path in modules.items():
        if name == PKG:
            continue  # the package's face: a lazy attribute for the processor class
        for target in _imports(name, path, modules):
            if target != PKG and _stage(target) > _stage(name):
                bad.append(f"{name} ({STAGES[_stage(name)][0]}) imports {target} ({STAGES[_stage(target)][0]})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    modules = _modules()
    graph = {n: _imports(n, p, modules) - {PKG} for n, p in modules.items()}
    state, cycles = {}, []

    def visit(n, stack):
        state[n] = 1
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, "\n".join(cycles)


def test_modules_stay_small():
    big = {n: sum(1 for _ in open(p, encoding="utf-8")) for n, p in _modules().items()}
    big = {n: k for n, k in big.items() if k > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (one job each?): {big}"


def test_the_checker_sees_violations(tmp_path):
    """The import parser itself: relative and absolute forms, lazy imports, names inside modules."""
    src = tmp_path / "m.py"
    src.write_text("from ..modes import compile_style\nimport vllm_ngram_style.pack\n"
                   "def f():\n    from ..kernels.reference import ReferenceSteering\n    from .. import engine\n")
    got = _imports(f"{PKG}.evaluation.m", str(src), _modules())
    assert got == {f"{PKG}.modes", f"{PKG}.pack", f"{PKG}.kernels.reference", f"{PKG}.engine"}
    assert _stage(f"{PKG}.kernels.reference") < _stage(f"{PKG}.steering_core") < _stage(f"{PKG}.engine")
