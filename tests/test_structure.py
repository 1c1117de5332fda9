"""The package's shape: no import cycle among bbam's modules (imports inside functions
included), no module over 600 lines, and the data layer below the application."""
from __future__ import annotations

import ast
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bbam"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    """Every module under bbam/ by dotted name (a package by its ``__init__.py``), the
    compiled extension included (it imports nothing of bbam)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*")):
        suffix = next((s for s in [".py", *EXTENSION_SUFFIXES] if path.name.endswith(s)), None)
        if suffix is None:
            continue
        parts = list(path.relative_to(PACKAGE.parent).parts)
        parts[-1] = path.name[: -len(suffix)]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The bbam modules ``name`` imports, at module level or inside functions.

    ``from package import x`` counts as importing the submodule ``package.x`` when there is
    one, else ``package`` itself (``x`` is then one of its attributes).
    """
    if path.suffix != ".py":
        return set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # bbam.ops.as_targets -> bbam.ops
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_checks_see_imports_inside_functions():
    graph = _graph()
    assert "bbam.app.engine" in graph["bbam.app.build"]  # imported inside build_engine
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_over_600_lines():
    long = {str(path.relative_to(PACKAGE.parent)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_data_layer_does_not_reach_the_application():
    graph = _graph()
    for name in (n for n in graph if n == "bbam.data" or n.startswith("bbam.data.")):
        seen, todo = set(), [name]
        while todo:  # everything it imports, directly or not
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        above = sorted(m for m in seen if m in ("bbam.train", "bbam.app") or m.startswith("bbam.app."))
        assert not above, f"{name} imports the application layer: {above}"
        models = sorted(m for m in seen if m == "bbam.vision" or m.startswith("bbam.vision."))
        assert not models, f"{name} runs a model (readers only read; encoders live in bbam.vision): {models}"


def test_methods_see_a_context_not_the_engine():
    """The method plugins import neither the engine nor the run's diagnostics, and read
    nothing of an engine: they get a MethodContext (bbam.app.methods.base)."""
    graph = _graph()
    methods = [n for n in graph if n == "bbam.app.methods" or n.startswith("bbam.app.methods.")]
    assert methods
    for name in methods:
        seen, todo = set(), [name]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        assert not seen & {"bbam.app.engine", "bbam.app.diagnostics", "bbam.train"}, name
    for path in (PACKAGE / "app" / "methods").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        names |= {node.arg for node in ast.walk(tree) if isinstance(node, ast.arg)}
        assert "engine" not in names, f"{path.name} reads an engine"


def test_the_command_line_module_is_only_the_command_line():
    """bbam/train.py parses, reports and exits; the run's steps live in bbam.app.run (which
    the estimator and bench/ call too)."""
    text = (PACKAGE / "train.py").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "def train(" not in text and "def load_run_data(" not in text and "def build_engine(" not in text
    graph = _graph()
    assert "bbam.app.run" in graph["bbam.estimator"] and "bbam.train" not in graph["bbam.app.run"]


def _app_modules():
    return sorted((PACKAGE / "app").rglob("*.py"))


def test_the_engine_stays_a_loop():
    assert len((PACKAGE / "app" / "engine.py").read_text(encoding="utf-8").splitlines()) <= 350


def _writes_into_a_config(tree: ast.AST) -> list[str]:
    """Places that write into a config: ``open_dict``, ``set_readonly(..., False)``, or an
    assignment to an attribute / item of a name ``cfg`` (e.g. ``cfg.train.scaling = ...``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "open_dict":
            found.append(f"open_dict, line {node.lineno}")
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            base = target
            while isinstance(base, (ast.Attribute, ast.Subscript)):
                base = base.value
            if base is not target and isinstance(base, ast.Name) and base.id == "cfg":
                found.append(f"assignment into cfg, line {target.lineno}")
    return found


def test_nothing_writes_into_the_config_after_prepare():
    """A run's settings are resolved once, by bbam.app.plan.prepare, into its RunPlan: no
    module of the run writes into a config (the composition of a resumed or estimator run,
    before prepare, is the exception: bbam.app.resume, bbam.estimator)."""
    allowed = {PACKAGE / "app" / "resume.py", PACKAGE / "estimator.py", PACKAGE / "app" / "config.py",
               PACKAGE / "migrate.py"}
    for path in [*_app_modules(), PACKAGE / "train.py", PACKAGE / "estimator.py"]:
        if path in allowed:
            continue
        found = _writes_into_a_config(ast.parse(path.read_text(encoding="utf-8")))
        assert not found, f"{path.relative_to(PACKAGE.parent)} writes into a config: {found}"
    # the check itself sees such writes
    assert _writes_into_a_config(ast.parse("cfg.train.scaling = 'x'\nwith open_dict(cfg): pass"))


def test_a_run_config_is_read_only_after_prepare(tmp_path):
    import pytest
    from omegaconf import OmegaConf
    from omegaconf.errors import ReadonlyConfigError

    from bbam.app.config import compose_config
    from bbam.app.plan import prepare

    cfg = compose_config(["data.num_samples=60", "train.progress=false"])
    plan = prepare(cfg)
    assert not OmegaConf.is_readonly(cfg)  # the caller's config is untouched
    with pytest.raises(ReadonlyConfigError):
        plan.cfg.train.scaling = "l2"


INPUT_KIND_QUESTIONS = ('getattr(data, "images"', 'getattr(data, "vocab"', "is_image_rows", "num_features == 0",
                        'hasattr(x, "subset")', "load_text_jsonl\")", "isinstance(x, Tensor)",
                        "isinstance(x, torch.Tensor)", "ImageRows)", "inputs.kind")


def test_only_the_inputs_module_asks_what_kind_of_input_it_is():
    """Whether rows are features, tokens or images is decided in bbam.app.inputs alone."""
    exempt = {PACKAGE / "app" / "inputs.py"}
    paths = [p for p in [*_app_modules(), *(PACKAGE / n for n in ("train.py", "estimator.py", "predict.py"))]
             if p not in exempt]
    for path in paths:
        text = path.read_text(encoding="utf-8")
        asked = [q for q in INPUT_KIND_QUESTIONS if q in text]
        assert not asked, f"{path.relative_to(PACKAGE.parent)} asks the input's kind: {asked}"
