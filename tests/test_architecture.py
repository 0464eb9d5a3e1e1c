"""The house rules of docs/architecture.md, checked on the code: where imports may point, and how big a module is."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = {"layout", "errors"}  # what every package of pretrain/ may import
PROJECT = {"model", "data_pipeline", "launch", "pretrain"}


def allowed_imports() -> dict[str, set[str]]:
    """The table under `<!-- imports: ... -->` in docs/architecture.md: package -> the packages it may import."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("<!-- imports: the test reads this table -->", 1)[1].strip().split("\n\n", 1)[0]
    allowed = {}
    for row in table.splitlines()[2:]:
        package, may = (cell.strip() for cell in row.strip("|").split("|"))
        name = package.strip("`").removeprefix("pretrain.")
        if "every package" in may:
            allowed[name] = {path.name for path in (ROOT / "pretrain").iterdir() if path.is_dir()} | BASE
        else:
            allowed[name] = set(re.findall(r"`(\w+)`", may.split("(")[0])) | BASE
    return allowed


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            if node.module == "pretrain":  # `from pretrain import layout`
                modules |= {f"pretrain.{alias.name}" for alias in node.names}
    return modules


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_every_package_of_pretrain_imports_only_what_the_architecture_allows():
    allowed = allowed_imports()
    packages = {path.name for path in (ROOT / "pretrain").iterdir() if (path / "__init__.py").is_file()}
    assert packages == set(allowed), "docs/architecture.md's table must list every package of pretrain/"
    wrong = []
    for path in python_files("pretrain"):
        parts = path.relative_to(ROOT / "pretrain").parts
        own = parts[0].removesuffix(".py")
        for module in imported_modules(path):
            names = module.split(".")
            if names[0] == "pretrain" and len(names) > 1 and names[1] != own and own in allowed:
                if names[1] not in allowed[own]:
                    wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, "imports the table in docs/architecture.md does not allow:\n" + "\n".join(wrong)


def test_model_data_pipeline_and_launch_point_down_only():
    rules = {
        "model": set(),  # the network alone
        "data_pipeline": set(),
        "launch": {"data_pipeline.layout"},  # the atomic writer, and nothing else of the project
    }
    wrong = []
    for package, may in rules.items():
        for path in python_files(package):
            for module in imported_modules(path):
                top = module.split(".")[0]
                if top in PROJECT - {package} and module not in may:
                    wrong.append(f"{path.relative_to(ROOT)} imports {module}")
                if package == "model" and top in ("deepspeed", "ray", "mlflow"):
                    wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_mlflow_is_reached_only_through_pretrain_tracking():
    outside = [
        f"{path.relative_to(ROOT)} imports {module}"
        for package in ("pretrain", "data_pipeline", "launch", "model")
        for path in python_files(package)
        if "tracking" not in path.relative_to(ROOT).parts
        for module in imported_modules(path)
        if module.split(".")[0] == "mlflow"
    ]
    assert not outside, "\n".join(outside)


def test_pretrain_has_few_top_level_modules_and_no_module_is_over_400_lines():
    top_level = sorted(path.name for path in (ROOT / "pretrain").glob("*.py"))
    assert len(top_level) <= 10, top_level
    long = [
        f"{path.relative_to(ROOT)}: {count} lines"
        for package in ("pretrain", "data_pipeline", "launch", "model")
        for path in python_files(package)
        if (count := len(path.read_text().splitlines())) > 400
    ]
    assert not long, "\n".join(long)


def test_each_package_of_pretrain_says_what_it_owns_and_may_import():
    for init in sorted((ROOT / "pretrain").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "Owns" in doc and "mport" in doc, f"{init.relative_to(ROOT)}: say what it owns and may import"
