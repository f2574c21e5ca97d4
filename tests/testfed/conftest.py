from tests.testfed_fixtures import (  # noqa: F401 - fixtures
    make_testfed,
    testfed,
    testfed_files,
    testfed_session,
    testfed_tree,
)
