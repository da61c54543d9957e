"""Repository-wide pytest configuration: the doctest namespace."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["torch"] = torch


def pytest_collection_modifyitems(config, items):
    """Examples that need an optional extra are skipped, with the reason, when it is missing."""
    try:
        import sklearn  # noqa: F401  (the "fewshot" extra)
    except ImportError:
        skip = pytest.mark.skip(reason='needs scikit-learn: pip install "metaops[fewshot]"')
        for item in items:
            if item.name.endswith("metaops.tasks._images.load_digits"):
                item.add_marker(skip)
