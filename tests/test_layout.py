"""The layout's rules (shared/design/architecture.md), checked on the imports of every module: nerf/,
mesh/ and guidance/ never import threed/ or each other; the product core in threed/ imports neither the ShapeWorld
world nor the tools; and every list of estimators is the registry's."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORLD_AND_TOOLS = ("threed.shapeworld", "threed.tools")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside functions ("from a.b import c" -> "a.b" and "a.b.c")."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return modules


def package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def core_files() -> list[Path]:
    return [p for p in package_files("threed") if not {"shapeworld", "tools"} & set(p.relative_to(ROOT).parts)]


def imports_package(modules: set[str], package: str) -> bool:
    return any(module == package or module.startswith(package + ".") for module in modules)


@pytest.mark.parametrize("package, forbidden", [("nerf", ("threed", "guidance", "mesh")),
                                                ("guidance", ("threed", "nerf", "mesh")),
                                                ("mesh", ("threed", "guidance", "nerf"))])
def test_the_libraries_import_neither_the_application_nor_each_other(package, forbidden):
    offenders = [(str(p.relative_to(ROOT)), f) for p in package_files(package) for f in forbidden
                 if imports_package(imported_modules(p), f)]
    assert offenders == []


def test_the_product_core_imports_neither_the_world_nor_the_tools():
    files = core_files()
    assert ROOT / "threed" / "trainer.py" in files and ROOT / "threed" / "run.py" in files
    offenders = [(str(p.relative_to(ROOT)), w) for p in files for w in WORLD_AND_TOOLS
                 if imports_package(imported_modules(p), w)]
    assert offenders == []


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from threed.shapeworld.canon import SHAPES\n")
    assert imports_package(imported_modules(module), "threed.shapeworld")


def test_every_list_of_estimators_is_the_registry(capsys):
    from guidance import verify
    from guidance.distillation import GuidanceSpec
    from guidance.registry import ESTIMATORS
    from threed.cells import parse_methods

    assert GuidanceSpec.__dataclass_fields__["estimator"].metadata["choices"] == tuple(ESTIMATORS)
    labels = ",".join(f"{name}:fkl" if entry.uses_divergence else name for name, entry in ESTIMATORS.items())
    assert [method.estimator for method in parse_methods(labels)] == list(ESTIMATORS)
    for name in ESTIMATORS:  # each one's loss and reference, through the command line
        verify.main(["--estimator", name, "--divergence", "fkl", "--samples", "1000"])
        assert '"estimate"' in capsys.readouterr().out
