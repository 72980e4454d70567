pytest_plugins = ["testbed.fixtures", "testbed.arm_fixtures"]
