import os

from hypothesis import settings

pytest_plugins = ["testbed.fixtures", "testbed.arm_fixtures"]

# CI runs the same examples every time (a failure there is reproducible, not luck);
# locally every run explores new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
