"""The test suite: folders mirror the package; tests/helpers holds what several modules share."""

import pytest

# The helpers assert too: have pytest explain their failures as it does a test's.
pytest.register_assert_rewrite("tests.helpers")
