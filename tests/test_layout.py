"""The house: the lab's scripts run as the README writes them, and in the form a
student also tries; no module imports in a cycle; the root's modules reach into
lab/ only in the branch of a flag that asks for it."""

import ast
import glob
import os
import runpy
import sys

import pytest
from conftest import PROJECT, job, job_result, run_command

LAB_SCRIPTS = ["benchmark", "crowd", "draw", "pages", "pictures", "predict", "zipcodes"]


def project_modules():
    """{module name: path} of every module of the project but the tests."""
    paths = glob.glob(os.path.join(PROJECT, "*.py")) + glob.glob(os.path.join(PROJECT, "lab",
                                                                              "*.py"))
    modules = {}
    for path in paths:
        name = os.path.relpath(path, PROJECT)[:-3].replace(os.sep, ".")
        if not os.path.basename(path).startswith("test_"):
            modules[name.removesuffix(".__init__")] = path
    return modules


def imports_of(path, modules):
    """The project's modules that the file `path` imports: [(module, at the top
    level or not)]."""
    tree = ast.parse(open(path).read())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(name, id(node) in top_level) for name in names if name in modules]
    return found


# runpy warns when the module was imported before (draw.py imports predict.py):
# harmless here, where the module runs again only to print its help.
@pytest.mark.filterwarnings("ignore:'lab.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("name", LAB_SCRIPTS)
def test_each_lab_script_answers_help_as_the_readme_writes_it(name, monkeypatch, capsys):
    """`python -m lab.NAME --help`, run as -m runs it (runpy), in this process."""
    monkeypatch.setattr(sys, "argv", [f"lab.{name}", "--help"])
    with pytest.raises(SystemExit) as exit:
        runpy.run_module(f"lab.{name}", run_name="__main__", alter_sys=True)
    out, err = capsys.readouterr()
    assert exit.value.code == 0 and err == ""
    assert out.startswith(f"usage: python -m lab.{name} "), out


@job("test_python_m_lab_runs_from_the_project_s_folder")
def predict_help(folder):
    return run_command("-m", "lab.predict", "--help")


def test_python_m_lab_runs_from_the_project_s_folder(fresh_interpreters, request):
    result = job_result(fresh_interpreters, request)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m lab.predict ")


@pytest.mark.parametrize("name", ["predict", "draw"])
def test_a_lab_script_started_by_its_path_says_how_to_run_it(name):
    result = run_command(os.path.join("lab", f"{name}.py"), "model.pt", "photo.jpg")
    assert result.returncode == 1
    assert result.stderr == (f"run it from the project's folder as a module: "
                             f"python -m lab.{name} model.pt photo.jpg\n")


def test_no_module_imports_in_a_cycle():
    modules = project_modules()
    graph = {name: {imported for imported, _ in imports_of(path, modules)}
             for name, path in modules.items()}
    graph["lab"] = set()  # `from lab import predict` imports lab.predict, not a cycle in lab/

    def cycle_from(name, path):
        for imported in graph[name]:
            if imported in path:
                return [*path[path.index(imported):], imported]
            found = cycle_from(imported, [*path, imported])
            if found:
                return found
        return None

    for name in graph:
        cycle = cycle_from(name, [name])
        assert cycle is None, " -> ".join(cycle)


def test_the_root_imports_the_lab_only_where_a_flag_asks_for_it():
    modules = project_modules()
    for name, path in modules.items():
        if "." in name or name == "lab":
            continue
        for imported, at_top in imports_of(path, modules):
            assert not (imported.startswith("lab") and at_top), f"{name} imports {imported}"
