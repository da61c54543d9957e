"""Every public name has a docstring with a runnable example; one public path per object."""

import importlib
import inspect

import pytest

import metaops

PUBLIC_MODULES = [name for name in metaops.__all__ if inspect.ismodule(getattr(metaops, name))]


def _public_objects():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(f"metaops.{module_name}")
        for name in module.__all__:
            yield f"metaops.{module_name}.{name}", getattr(module, name)
    for name in metaops.__all__:
        obj = getattr(metaops, name)
        if not inspect.ismodule(obj):
            yield f"metaops.{name}", obj


OBJECTS = sorted(_public_objects(), key=lambda item: item[0])


def test_every_namespace_declares_all():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(f"metaops.{module_name}")
        assert module.__all__, module_name
        for name in module.__all__:
            assert hasattr(module, name), f"metaops.{module_name}.__all__ lists missing {name}"


@pytest.mark.parametrize("path, obj", OBJECTS, ids=[p for p, _ in OBJECTS])
def test_public_docstring_has_an_example(path, obj):
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        return  # type aliases
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{path} has no docstring"
    if inspect.isclass(obj) and issubclass(obj, Exception):
        return  # exceptions document when they are raised; their raisers carry the examples
    assert "Examples:" in doc, f"{path}'s docstring has no Examples: section"
    assert ">>>" in doc, f"{path}'s Examples: has no doctest"


def test_only_metaops_tree_imports_the_private_pytree_module():
    from pathlib import Path

    root = Path(metaops.__file__).parent
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "_pytree" in path.read_text() and path.name != "tree.py"
    ]
    assert offenders == []
