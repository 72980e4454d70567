import os

from hypothesis import settings

pytest_plugins = ["testbed.fixtures", "testbed.arm_fixtures"]

# CI runs the same examples every time (a failure there is reproducible, not luck);
# locally every run explores new ones.
# No deadlines: the suite shares two cores with engines and agents, and a slow example is not a bug.
settings.register_profile("local", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "local")
